import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { AllocationError } from '../../allocator/errors.js'
import { groupAlive, ProcessRuntime } from '../../allocator/process-runtime.js'
import { freeLocalPort, type InstanceSpec, type RuntimeInstance } from '../../allocator/runtime.js'
import { parseRecord, type ServiceRecordInput } from '../../shared/registry/record.js'
import { HELLO_SCRIPT } from '../helpers/mesh.js'
import { groupMembers, httpCall, running, statusOf, testLogger, waitFor } from './util.js'

async function specFor (command: string, extra: Partial<ServiceRecordInput> = {}): Promise<InstanceSpec> {
  return {
    instanceId: `t-${Math.random().toString(16).slice(2, 10)}`,
    record: parseRecord({ name: 'hello', command, health: '/healthz', ...extra }),
    hostPort: await freeLocalPort(),
    allocatorPeerId: 'test-allocator'
  }
}

describe('process runtime', () => {
  const runtime = new ProcessRuntime({ log: testLogger(), env: { ...process.env, P2P_PSK: 'do-not-leak' } })
  const started: RuntimeInstance[] = []
  let dir: string

  const start = async (spec: InstanceSpec): Promise<RuntimeInstance> => {
    const instance = await runtime.start(spec)
    started.push(instance)
    return instance
  }

  beforeAll(async () => { dir = await mkdtemp(join(tmpdir(), 'hyphae-proc-')) })
  afterEach(async () => { await Promise.all(started.splice(0).map(async i => { await runtime.stop(i, { graceMs: 500 }) })) })
  afterAll(async () => { await rm(dir, { recursive: true, force: true }) })

  it('runs the example app on the host port it was given, and stop() ends it', async () => {
    const spec = await specFor(`node ${HELLO_SCRIPT}`, { env: { INSTANCE: 'proc-1' } })
    const t0 = performance.now()
    const instance = await start(spec)
    await waitFor(async () => await statusOf(spec.hostPort, '/healthz') === 200, 'the app to answer /healthz')
    console.info(`process runtime: start() to healthy in ${Math.round(performance.now() - t0)} ms`)

    expect(runtime.kind).toBe('process')
    expect(await runtime.available()).toBe(true)
    expect(instance.app).toEqual({ host: '127.0.0.1', port: spec.hostPort })
    expect((await httpCall(spec.hostPort, '/')).body).toBe('hello from proc-1\n')
    expect(instance.recentOutput()).toContain(`listening ${spec.hostPort}`)

    const pid = Number(instance.id)
    expect(running(pid)).toBe(true)
    await runtime.stop(instance)
    expect(running(pid)).toBe(false)
    expect(groupAlive(pid)).toBe(false)
    const exit = await instance.exited
    expect(exit.reason).toMatch(/exited with code 0|was killed by SIGTERM/)
    await runtime.stop(instance) // idempotent
  })

  it('kills the whole process group, grandchildren included', async () => {
    const spec = await specFor(`sleep 1000 & exec node ${HELLO_SCRIPT}`)
    const instance = await start(spec)
    await waitFor(async () => await statusOf(spec.hostPort, '/healthz') === 200, 'the app to answer /healthz')
    const pid = Number(instance.id)
    const members = await groupMembers(pid)
    // The shell exec'd node (the leader) and its background sleep.
    expect(members.length).toBe(2)
    expect(members).toContain(pid)

    await runtime.stop(instance)
    for (const member of members) expect(running(member), `pid ${member}`).toBe(false)
    expect(await groupMembers(pid)).toEqual([])
  })

  it('SIGKILLs a group member that ignores SIGTERM once the grace period is over', async () => {
    const spec = await specFor(`sh -c 'trap "" TERM; while :; do sleep 1; done' & exec node ${HELLO_SCRIPT}`)
    const instance = await start(spec)
    await waitFor(async () => await statusOf(spec.hostPort, '/healthz') === 200, 'the app to answer /healthz')
    const members = await groupMembers(Number(instance.id))
    expect(members.length).toBeGreaterThanOrEqual(2)

    const t0 = performance.now()
    await runtime.stop(instance, { graceMs: 400 })
    const took = performance.now() - t0
    expect(took).toBeGreaterThanOrEqual(350)
    expect(took).toBeLessThan(4000)
    for (const member of members) expect(running(member), `pid ${member}`).toBe(false)
  })

  it('reports an app that exits on its own, and takes its children with it', async () => {
    const pidFile = join(dir, 'bg.pid')
    const spec = await specFor(`sleep 1000 & echo $! > ${pidFile}; echo about to fail >&2; exit 3`)
    const instance = await start(spec)
    const exit = await instance.exited
    expect(exit).toEqual({ code: 3, reason: 'exited with code 3' })
    const bg = Number((await readFile(pidFile, 'utf8')).trim())
    await waitFor(() => !running(bg), 'the orphaned sleep to be killed', 3000)
    await waitFor(() => instance.recentOutput().includes('about to fail'), 'the output to be read', 3000)
  })

  it('passes PORT and the record env, and not the allocator environment', async () => {
    const spec = await specFor('echo "port=$PORT greeting=$GREETING psk=${P2P_PSK:-none}"; exec sleep 1000', { env: { GREETING: 'hi', PORT: '1' } })
    const instance = await start(spec)
    const line = await waitFor(() => instance.recentOutput().find(l => l.startsWith('port=')), 'the env line')
    expect(line).toBe(`port=${spec.hostPort} greeting=hi psk=none`)
  })

  it('finds and kills the process groups an earlier run of the same allocator left', async () => {
    const spec = await specFor('sleep 1000 & exec sleep 1000')
    const instance = await start(spec)
    const pgid = Number(instance.id)
    await waitFor(async () => (await groupMembers(pgid)).length >= 2 ? true : undefined, 'the app and its child')
    // A new run (the old one was SIGKILLed) knows nothing of it; another allocator's mark is left alone.
    const nextRun = new ProcessRuntime({ log: testLogger() })
    expect(await nextRun.removeOrphans('another-allocator')).toBe(0)
    expect(groupAlive(pgid)).toBe(true)
    expect(await nextRun.removeOrphans(spec.allocatorPeerId)).toBe(1)
    await waitFor(() => groupAlive(pgid) ? undefined : true, 'the orphaned group gone')
    // The run that started it does not count its own instances as orphans.
    const own = await start(await specFor('exec sleep 1000'))
    expect(await runtime.removeOrphans('test-allocator')).toBe(0)
    expect(groupAlive(Number(own.id))).toBe(true)
  })

  it('refuses a record without a command, and a cancelled start', async () => {
    const imageSpec: InstanceSpec = { ...(await specFor('true')), record: parseRecord({ name: 'img', image: 'x:1' }) }
    await expect(runtime.start(imageSpec)).rejects.toMatchObject({ code: 'start_failed' })
    const aborted = AbortSignal.abort()
    const err = await runtime.start(await specFor('sleep 1000'), { signal: aborted }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(AllocationError)
    expect((err as AllocationError).code).toBe('aborted')
  })
})
