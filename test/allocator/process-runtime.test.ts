import { execFileSync } from 'node:child_process'
import { existsSync, readFileSync, statSync } from 'node:fs'
import { chmod, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { AllocationError } from '../../shared/protocols/alloc-errors.js'
import { groupAlive } from '../../allocator/proc.js'
import { ProcessRuntime } from '../../allocator/process-runtime.js'
import { freeLocalPort, type InstanceSpec, type RuntimeInstance } from '../../allocator/runtime.js'
import { parseRecord, type ServiceRecordInput } from '../../shared/registry/record.js'
import { HELLO_SCRIPT } from '../helpers/mesh.js'
import { waitFor } from '../helpers/wait-for.js'
import { appScratchDir, groupMembers, httpCall, running, statusOf, testLogger } from './util.js'

const asRoot = process.getuid?.() === 0

/** Who the apps should run as, from the password database itself: nobody under root, else us. */
function expectedAppUser (): { name: string, uid: number, gid: number, home: string } {
  const [name, , uid, gid, , home] = execFileSync('getent', ['passwd', asRoot ? 'nobody' : String(process.getuid?.())], { encoding: 'utf8' }).trim().split(':')
  return { name, uid: Number(uid), gid: Number(gid), home }
}

/** The real uid of a running process, from /proc. */
function uidOf (pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  return Number(/^Uid:\s+(\d+)/m.exec(status)?.[1])
}

// Unique per run: removeOrphans() kills whatever carries the mark, in this file or any other test file running alongside.
const ALLOCATOR_ID = `test-allocator-${Math.random().toString(16).slice(2, 10)}`

async function specFor (command: string, extra: Partial<ServiceRecordInput> = {}): Promise<InstanceSpec> {
  return {
    instanceId: `t-${Math.random().toString(16).slice(2, 10)}`,
    record: parseRecord({ name: 'hello', command, health: '/healthz', ...extra }),
    hostPort: await freeLocalPort(),
    allocatorPeerId: ALLOCATOR_ID
  }
}

describe('process runtime', () => {
  let workRoot: string
  let dataRoot: string
  let runtime: ProcessRuntime
  const started: RuntimeInstance[] = []
  let dir: string

  const start = async (spec: InstanceSpec): Promise<RuntimeInstance> => {
    const instance = await runtime.start(spec)
    started.push(instance)
    return instance
  }

  beforeAll(async () => {
    // The apps write in it as the user they run as.
    dir = await appScratchDir('hyphae-proc-')
    // Made by root, 0700: the runtime must open it up (0711) for the apps to reach their directories.
    workRoot = await mkdtemp(join(tmpdir(), 'hyphae-work-'))
    // As an allocator's --data-dir is (0711): apps pass through it to their service's data.
    const dataDir = await mkdtemp(join(tmpdir(), 'hyphae-data-'))
    await chmod(dataDir, 0o711)
    dataRoot = join(dataDir, 'services')
    runtime = new ProcessRuntime({ log: testLogger(), env: { ...process.env, P2P_PSK: 'do-not-leak' }, workRoot, dataRoot })
  })
  afterEach(async () => { await Promise.all(started.splice(0).map(async i => { await runtime.stop(i, { graceMs: 500 }) })) })
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true })
    await rm(workRoot, { recursive: true, force: true })
    await rm(join(dataRoot, '..'), { recursive: true, force: true })
  })

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
    // The example app runs unprivileged: nobody can read the repository and run node.
    expect(uidOf(pid)).toBe(expectedAppUser().uid)
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

  it('tells the app its service, its door into the mesh and a data dir of its service that the next instance finds; the record env moves none', async () => {
    const overridden = { HYPHAE_PROXY: 'http://evil:1', HYPHAE_DATA_DIR: '/etc', HYPHAE_SERVICE: 'other', PROXY_PORT: '1' }
    const script = 'echo "service=$HYPHAE_SERVICE proxy=$HYPHAE_PROXY ip=$PROXY_IP port=$PROXY_PORT data=$HYPHAE_DATA_DIR found=$(cat $HYPHAE_DATA_DIR/note 2>/dev/null)"; echo kept > $HYPHAE_DATA_DIR/note; exec sleep 1000'
    const first = await specFor(script, { env: overridden })
    first.proxy = { host: '127.0.0.1', port: 4321, admit: () => {} }
    const instance = await start(first)
    const line = await waitFor(() => instance.recentOutput().find(l => l.startsWith('service=')), 'the env line')
    const dataDir = join(dataRoot, 'hello')
    expect(line).toBe(`service=hello proxy=http://127.0.0.1:4321 ip=127.0.0.1 port=4321 data=${dataDir} found=`)
    const info = await stat(dataDir)
    expect(info.mode & 0o777).toBe(0o700)
    expect(info.uid).toBe(expectedAppUser().uid)
    expect((await stat(dataRoot)).mode & 0o777).toBe(0o711)
    await waitFor(async () => await stat(join(dataDir, 'note')).catch(() => undefined), 'the note the app writes')
    await runtime.stop(instance, { graceMs: 500 })

    // The next instance of the service (a relaunch, or a later allocation) finds what it wrote.
    const next = await start(await specFor(script))
    const again = await waitFor(() => next.recentOutput().find(l => l.startsWith('service=')), 'the next env line')
    expect(again).toBe(`service=hello proxy= ip= port= data=${dataDir} found=kept`)
  })

  it('finds and kills the process groups an earlier run of the same allocator left', async () => {
    const spec = await specFor('sleep 1000 & exec sleep 1000')
    const instance = await start(spec)
    const pgid = Number(instance.id)
    await waitFor(async () => (await groupMembers(pgid)).length >= 2, 'the app and its child')
    const workDir = join(workRoot, spec.instanceId)
    expect(existsSync(workDir)).toBe(true)
    // A new run (the old one was SIGKILLed) knows nothing of it; another allocator's mark is left alone.
    const nextRun = new ProcessRuntime({ log: testLogger(), workRoot })
    expect(await nextRun.removeOrphans('another-allocator')).toBe(0)
    expect(groupAlive(pgid)).toBe(true)
    expect(await nextRun.removeOrphans(spec.allocatorPeerId)).toBe(1)
    await waitFor(() => !groupAlive(pgid), 'the orphaned group gone')
    // Its working directory went with it.
    expect(existsSync(workDir)).toBe(false)
    // The run that started it does not count its own instances as orphans.
    const own = await start(await specFor('exec sleep 1000'))
    expect(await runtime.removeOrphans(ALLOCATOR_ID)).toBe(0)
    expect(groupAlive(Number(own.id))).toBe(true)
  })

  it('runs the app as an unprivileged user (nobody under root), in a working directory of its own that stop() removes', async () => {
    const user = expectedAppUser()
    expect(user.uid).not.toBe(0)
    // What the app leaves must go, even what it locked itself out of, and nothing it points to.
    const outside = join(dir, 'outside')
    await writeFile(outside, 'keep')
    const spec = await specFor(`mkdir -p locked/inner; touch locked/inner/f .hidden; chmod 000 locked; ln -s ${outside} link; ` +
      'echo "uid=$(id -u) gid=$(id -g) groups=$(id -G) cwd=$(pwd) home=$HOME user=$USER logname=$LOGNAME"; echo note > note; exec sleep 1000')
    const instance = await start(spec)
    const workDir = join(workRoot, spec.instanceId)
    const line = await waitFor(() => instance.recentOutput().find(l => l.startsWith('uid=')), 'the identity line')
    const home = existsSync(user.home) && statSync(user.home).isDirectory() ? user.home : workDir
    // Under root, no supplementary group survives the switch; otherwise the app keeps ours.
    const groups = asRoot ? String(user.gid) : execFileSync('id', ['-G'], { encoding: 'utf8' }).trim()
    expect(line).toBe(`uid=${user.uid} gid=${user.gid} groups=${groups} cwd=${workDir} home=${home} user=${user.name} logname=${user.name}`)
    expect(uidOf(Number(instance.id))).toBe(user.uid)

    const dirInfo = await stat(workDir)
    expect(dirInfo.mode & 0o777).toBe(0o700)
    expect(dirInfo.uid).toBe(user.uid)
    expect((await stat(workRoot)).mode & 0o777).toBe(0o711)
    const note = await waitFor(async () => await stat(join(workDir, 'note')).catch(() => undefined), 'the file the app writes')
    expect(note.uid).toBe(user.uid)

    await runtime.stop(instance, { graceMs: 500 })
    await expect(stat(workDir)).rejects.toMatchObject({ code: 'ENOENT' })
    expect(await readFile(outside, 'utf8')).toBe('keep')
    // The root of the working directories stays, for the next instance.
    expect((await stat(workRoot)).isDirectory()).toBe(true)
  })

  it('runs apps as the user runAs names, and refuses root, unknown users and (unless root) other users', async () => {
    const log = testLogger()
    for (const root of ['root', '0']) {
      const refusing = new ProcessRuntime({ log, runAs: root, workRoot })
      await expect(refusing.appUser()).rejects.toThrow(/refusing to run apps as root/)
      const spec = await specFor('exec sleep 1000')
      const err = await refusing.start(spec).catch((e: unknown) => e)
      expect(err).toBeInstanceOf(AllocationError)
      expect((err as AllocationError).code).toBe('start_failed')
      expect((err as Error).message).toMatch(/refusing to run apps as root/)
      expect(existsSync(join(workRoot, spec.instanceId))).toBe(false)
    }
    await expect(new ProcessRuntime({ log, runAs: 'no-such-user-hyphae', workRoot }).appUser()).rejects.toThrow(/no user 'no-such-user-hyphae'/)
    await expect(new ProcessRuntime({ log, runAs: '--help', workRoot }).appUser()).rejects.toThrow(/not a user name/)

    // A uid the password database does not know: root may still run apps as it.
    const other = new ProcessRuntime({ log, runAs: '4242', workRoot })
    if (!asRoot) {
      await expect(other.appUser()).rejects.toThrow(/only an allocator running as root/)
      return
    }
    const spec = await specFor('echo "uid=$(id -u) gid=$(id -g)"; exec sleep 1000')
    const instance = await other.start(spec)
    try {
      expect(await waitFor(() => instance.recentOutput().find(l => l.startsWith('uid=')), 'the identity line')).toBe('uid=4242 gid=4242')
    } finally {
      await other.stop(instance, { graceMs: 500 })
    }
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
