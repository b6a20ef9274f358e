import { createServer } from 'node:http'
import { readFile, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { AllocationError } from '../../shared/protocols/alloc-errors.js'
import { groupAlive, ProcessRuntime } from '../../allocator/process-runtime.js'
import { freeLocalPort, type InstanceSpec, type Runtime, type RuntimeInstance } from '../../allocator/runtime.js'
import { backoffDelay, InstanceSupervisor, type SupervisorEvent, type SupervisorInit } from '../../allocator/supervisor.js'
import { parseRecord, type ServiceRecordInput } from '../../shared/registry/record.js'
import { HELLO_SCRIPT } from '../helpers/mesh.js'
import { waitFor } from '../helpers/wait-for.js'
import { FakeSidecar } from './fake-sidecar.js'
import { appScratchDir, httpCall, running, statusOf, testLogger } from './util.js'

/** The process runtime, remembering what it started so tests can check the processes. */
class RecordingRuntime implements Runtime {
  readonly kind = 'process' as const
  readonly started: RuntimeInstance[] = []
  constructor (private readonly inner: ProcessRuntime) {}
  async start (spec: InstanceSpec, options?: { signal?: AbortSignal }): Promise<RuntimeInstance> {
    const instance = await this.inner.start(spec, options)
    this.started.push(instance)
    return instance
  }

  async stop (instance: RuntimeInstance, options?: { graceMs?: number }): Promise<void> { await this.inner.stop(instance, options) }
  async removeOrphans (allocatorPeerId: string): Promise<number> { return await this.inner.removeOrphans(allocatorPeerId) }
  async available (): Promise<boolean> { return await this.inner.available() }
  async proxyHost (): Promise<string> { return await this.inner.proxyHost() }
  get pids (): number[] { return this.started.map(i => Number(i.id)) }
}

interface Harness {
  supervisor: InstanceSupervisor
  runtime: RecordingRuntime
  sidecars: FakeSidecar[]
  events: Array<{ event: SupervisorEvent, at: number }>
  spec: InstanceSpec
  sidecarStarts: number
}

describe('instance supervisor (process runtime, fake sidecar)', () => {
  const log = testLogger()
  const live: InstanceSupervisor[] = []
  let dir: string

  // The apps write and test files in it, as the user they run as.
  beforeAll(async () => { dir = await appScratchDir('hyphae-sup-') })
  afterEach(async () => { await Promise.all(live.splice(0).map(async s => { await s.stop() })) })
  afterAll(async () => { await rm(dir, { recursive: true, force: true }) })

  async function harness (command: string, record: Partial<ServiceRecordInput> = {}, opts: Partial<SupervisorInit> & { sidecarFails?: boolean } = {}): Promise<Harness> {
    const runtime = new RecordingRuntime(new ProcessRuntime({ log, defaultGraceMs: 1000 }))
    const spec: InstanceSpec = {
      instanceId: `t-${Math.random().toString(16).slice(2, 10)}`,
      record: parseRecord({ name: 'hello', command, health: '/healthz', ...record }),
      hostPort: await freeLocalPort(),
      allocatorPeerId: 'test-allocator'
    }
    const h: Harness = { runtime, spec, sidecars: [], events: [], sidecarStarts: 0, supervisor: undefined as unknown as InstanceSupervisor }
    h.supervisor = new InstanceSupervisor({
      runtime,
      spec,
      log,
      healthIntervalMs: 100,
      unhealthyAfter: 3,
      healthyAfter: 2,
      idleTimeoutS: 60,
      startTimeoutMs: 10_000,
      stopGraceMs: 1000,
      healthTimeoutMs: 500,
      backoff: { initialMs: 50, maxMs: 400 },
      startSidecar: async app => {
        h.sidecarStarts++
        if (opts.sidecarFails === true) throw new Error('the proxy exited with code 1')
        const healthy = await statusOf(app.port, '/healthz') === 200
        const sidecar = new FakeSidecar(healthy, h.sidecarStarts)
        h.sidecars.push(sidecar)
        return sidecar
      },
      onEvent: event => { h.events.push({ event, at: performance.now() }) },
      ...opts
    })
    live.push(h.supervisor)
    return h
  }

  const eventNames = (h: Harness): SupervisorEvent[] => h.events.map(e => e.event)
  const relaunchGaps = (h: Harness): number[] => {
    const times = h.events.filter(e => e.event === 'relaunched').map(e => e.at)
    return times.slice(1).map((t, i) => t - times[i])
  }

  it('resolves start() only once the app is healthy and the sidecar is ready', async () => {
    // The app takes a while to listen: start() must wait for it rather than for the spawn.
    const h = await harness(`sleep 0.4; exec node ${HELLO_SCRIPT}`)
    const t0 = performance.now()
    const instance = await h.supervisor.start()
    const took = performance.now() - t0
    console.info(`supervisor (process runtime): start() to healthy and sidecar ready in ${Math.round(took)} ms`)
    expect(took).toBeGreaterThanOrEqual(350)
    expect(instance).toEqual({ peerId: h.sidecars[0].peerId, multiaddrs: h.sidecars[0].multiaddrs })
    expect(h.sidecars[0].appHealthyAtStart).toBe(true)
    expect(await statusOf(h.spec.hostPort, '/healthz')).toBe(200)
    expect(h.supervisor.state).toBe('healthy')
    expect(h.supervisor.service).toBe('hello')
    expect(h.supervisor.relaunches).toBe(0)
    expect(eventNames(h)).toEqual(['started'])

    await h.supervisor.stop()
    expect(h.supervisor.state).toBe('stopped')
    expect(eventNames(h)).toEqual(['started', 'stopped'])
    expect(h.sidecars[0].stopped).toBe(true)
    expect(running(h.runtime.pids[0])).toBe(false)
    expect(await h.supervisor.done).toBe('stopped')
  })

  it('relaunches a crashed app on the same port and counts it healthy again after M passes', async () => {
    const h = await harness(`node ${HELLO_SCRIPT}`)
    await h.supervisor.start()
    const firstPid = h.runtime.pids[0]
    expect((await httpCall(h.spec.hostPort, '/api/v1/_crash', 'POST')).status).toBe(200)
    expect(await statusOf(h.spec.hostPort, '/healthz')).toBe(500)

    await waitFor(() => h.supervisor.relaunches === 1 && h.supervisor.state === 'healthy', 'relaunch and recovery', 10_000)
    expect(eventNames(h)).toEqual(['started', 'unhealthy', 'relaunched', 'healthy'])
    const at = (name: SupervisorEvent): number => h.events.find(e => e.event === name)?.at ?? NaN
    // M = 2 passes at 100 ms after the relaunch: not the first answer.
    expect(at('healthy') - at('relaunched')).toBeGreaterThanOrEqual(150)
    expect(h.runtime.pids.length).toBe(2)
    expect(running(firstPid)).toBe(false)
    expect(h.runtime.started[1].app.port).toBe(h.spec.hostPort)
    expect(await statusOf(h.spec.hostPort, '/healthz')).toBe(200)
    // The sidecar stayed up across the relaunch.
    expect(h.sidecarStarts).toBe(1)
    expect(h.sidecars[0].stopped).toBe(false)
  })

  it('relaunches an app that exits, backing off while its relaunches keep failing', async () => {
    const flag = join(dir, `broken-${Math.random().toString(16).slice(2)}`)
    const h = await harness(`if [ -e ${flag} ]; then exit 4; fi; exec node ${HELLO_SCRIPT}`)
    await h.supervisor.start()
    await writeFile(flag, '')
    // Kill the healthy app: every relaunch now exits at once.
    process.kill(h.runtime.pids[0], 'SIGKILL')
    await waitFor(() => h.supervisor.relaunches >= 6, 'six relaunches', 10_000)
    expect(h.supervisor.state === 'relaunching' || h.supervisor.state === 'unhealthy').toBe(true)
    const gaps = relaunchGaps(h)
    // 0 (first relaunch after being healthy), then 50, 100, 200, 400, 400 ms, plus spawn time.
    // Lower bounds only hold under any load; the cap is checked with room for a busy machine.
    expect(gaps[1]).toBeGreaterThanOrEqual(50)
    expect(gaps[2]).toBeGreaterThanOrEqual(100)
    expect(gaps[3]).toBeGreaterThanOrEqual(200)
    expect(gaps[4]).toBeGreaterThanOrEqual(400)
    expect(Math.max(...gaps)).toBeLessThan(400 + 1500)
    expect(h.runtime.pids.slice(0, -1).some(pid => running(pid))).toBe(false)

    await rm(flag)
    await waitFor(() => h.supervisor.state === 'healthy', 'recovery once the app works again', 10_000)
    expect(eventNames(h).at(-1)).toBe('healthy')
    expect(await statusOf(h.spec.hostPort, '/healthz')).toBe(200)
  })

  it('fails start() with a coded error after backing off an app that exits at once, leaving nothing behind', async () => {
    const pidFile = join(dir, `pids-${Math.random().toString(16).slice(2)}`)
    const h = await harness(`echo $$ >> ${pidFile}; echo "cannot open config" >&2; exit 3`, {}, { startTimeoutMs: 1500, startAttempts: 10 })
    const t0 = performance.now()
    const err = await h.supervisor.start().catch((e: unknown) => e)
    const took = performance.now() - t0
    expect(err).toBeInstanceOf(AllocationError)
    expect((err as AllocationError).code).toBe('start_failed')
    expect((err as Error).message).toMatch(/exited with code 3 before it became healthy \(\d+ attempts\)/)
    expect((err as Error).message).toMatch(/cannot open config/)
    expect(took).toBeLessThan(2500)

    const gaps = relaunchGaps(h)
    expect(gaps.length).toBeGreaterThanOrEqual(3)
    for (let i = 1; i < Math.min(gaps.length, 3); i++) expect(gaps[i]).toBeGreaterThanOrEqual(50 * 2 ** (i - 1))
    expect(h.supervisor.state).toBe('failed')
    expect(eventNames(h).at(-1)).toBe('failed')
    expect(await h.supervisor.done).toBe('failed')
    expect(h.sidecarStarts).toBe(0)
    const pids = (await readFile(pidFile, 'utf8')).trim().split('\n').map(Number)
    expect(pids.length).toBe(h.runtime.pids.length)
    for (const pid of pids) expect(groupAlive(pid), `group ${pid}`).toBe(false)
    // The port is free again.
    const probe = createServer()
    await new Promise<void>((resolve, reject) => { probe.once('error', reject); probe.listen(h.spec.hostPort, '127.0.0.1', resolve) })
    await new Promise<void>(resolve => probe.close(() => { resolve() }))
  })

  it('fails start() as unhealthy when the health path never passes, and as sidecar_failed when the proxy fails', async () => {
    // Long enough for node to start on a loaded machine (else it is a 'timeout': never answered).
    const unhealthy = await harness(`node ${HELLO_SCRIPT}`, { health: '/no-such-path' }, { startTimeoutMs: 3000 })
    await expect(unhealthy.supervisor.start()).rejects.toMatchObject({ code: 'unhealthy', message: /HTTP 404/ })
    expect(running(unhealthy.runtime.pids[0])).toBe(false)

    const noSidecar = await harness(`node ${HELLO_SCRIPT}`, {}, { sidecarFails: true })
    await expect(noSidecar.supervisor.start()).rejects.toMatchObject({ code: 'sidecar_failed', message: /exited with code 1/ })
    expect(running(noSidecar.runtime.pids[0])).toBe(false)
    expect(noSidecar.supervisor.state).toBe('failed')
  })

  it('culls an instance idle for longer than the timeout, unless it is not cullable', async () => {
    let cullable = false
    const h = await harness(`node ${HELLO_SCRIPT}`, {}, { idleTimeoutS: 1, cullable: () => cullable })
    await h.supervisor.start()
    const sidecar = h.sidecars[0]
    sidecar.idleSeconds = 5
    // Kept warm: several health ticks pass without a cull (and without asking the sidecar).
    await new Promise(resolve => setTimeout(resolve, 450))
    expect(h.supervisor.state).toBe('healthy')
    expect(sidecar.idleQueries).toBe(0)

    cullable = true
    await waitFor(() => h.supervisor.state === 'culled', 'the cull', 5000)
    expect(eventNames(h)).toEqual(['started', 'culled'])
    expect(await h.supervisor.done).toBe('culled')
    expect(sidecar.stopped).toBe(true)
    expect(running(h.runtime.pids[0])).toBe(false)
    expect(await statusOf(h.spec.hostPort, '/healthz')).toBeUndefined()
  })

  it('is stopping, never healthy, while its sidecar and app are torn down', async () => {
    const h = await harness(`node ${HELLO_SCRIPT}`)
    await h.supervisor.start()
    const release = Promise.withResolvers<void>()
    h.sidecars[0].stopHeldUntil = release.promise
    const stopped = h.supervisor.stop()
    await waitFor(() => h.sidecars[0].stopped, 'the sidecar asked to stop')
    // The allocator hands out healthy instances: one on its way out must not be one.
    expect(h.supervisor.state).toBe('stopping')
    release.resolve()
    await stopped
    expect(h.supervisor.state).toBe('stopped')
  })

  it('keeps an instance that is busy, and restarts a sidecar that died', async () => {
    const h = await harness(`node ${HELLO_SCRIPT}`, {}, { idleTimeoutS: 1 })
    await h.supervisor.start()
    h.sidecars[0].idleSeconds = 1 // not more than the timeout
    await waitFor(() => h.sidecars[0].idleQueries >= 3, 'three idle checks')
    expect(h.supervisor.state).toBe('healthy')

    await h.sidecars[0].crash()
    await waitFor(() => h.sidecars.length === 2, 'a new sidecar', 5000)
    expect(h.supervisor.peerId).toBe(h.sidecars[1].peerId)
    expect(h.supervisor.state).toBe('healthy')
    expect(h.supervisor.relaunches).toBe(0)
  })

  it('cancels a start in progress when stopped', async () => {
    const h = await harness(`sleep 1000 & exec sleep 1000`, {}, { startTimeoutMs: 10_000 })
    const starting = h.supervisor.start().catch((e: unknown) => e)
    await waitFor(() => h.runtime.pids.length === 1, 'the app to be spawned')
    await h.supervisor.stop()
    const err = await starting
    expect(err).toBeInstanceOf(AllocationError)
    expect((err as AllocationError).code).toBe('aborted')
    expect(h.supervisor.state).toBe('stopped')
    expect(groupAlive(h.runtime.pids[0])).toBe(false)
  })

  it('computes an exponential, capped backoff', () => {
    const cfg = { initialMs: 500, maxMs: 30_000 }
    expect([0, 1, 2, 3, 4].map(n => backoffDelay(n, cfg))).toEqual([0, 500, 1000, 2000, 4000])
    expect(backoffDelay(7, cfg)).toBe(30_000)
    expect(backoffDelay(500, cfg)).toBe(30_000)
  })
})
