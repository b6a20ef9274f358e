import { describe, expect, it } from 'vitest'
import { AllocationError } from '../../shared/protocols/alloc-errors.js'
import type { InstanceExit, RuntimeInstance } from '../../allocator/runtime.js'
import { SidecarKeeper, type StartSidecar } from '../../allocator/sidecar-keeper.js'
import { FakeSidecar } from './fake-sidecar.js'
import { testLogger } from './util.js'

const APP = { host: '127.0.0.1', port: 4100 }

/** An app that only exits when told to. */
function fakeApp (): { app: RuntimeInstance, exit: (exit: InstanceExit) => void } {
  let exit!: (exit: InstanceExit) => void
  const exited = new Promise<InstanceExit>(resolve => { exit = resolve })
  return { app: { id: 'app-1', app: APP, exited, recentOutput: () => [] }, exit }
}

interface Setup {
  keeper: SidecarKeeper
  lifetime: AbortController
  clock: { t: number }
  sidecars: FakeSidecar[]
  /** The addresses starts were asked for, in order. */
  asked: Array<{ host: string, port: number }>
  /** How the next starts go; by default a fake sidecar, ready at once. */
  start?: StartSidecar
}

function setup (start?: StartSidecar): Setup {
  const lifetime = new AbortController()
  const clock = { t: 1_000_000 }
  const s: Setup = { lifetime, clock, sidecars: [], asked: [], start, keeper: undefined as unknown as SidecarKeeper }
  s.keeper = new SidecarKeeper({
    startSidecar: async (app, options) => {
      s.asked.push(app)
      if (s.start != null) return await s.start(app, options)
      const sidecar = new FakeSidecar(true, s.sidecars.length + 1)
      s.sidecars.push(sidecar)
      return sidecar
    },
    log: testLogger(),
    signal: lifetime.signal,
    backoff: { initialMs: 500, maxMs: 30_000 },
    service: 'hello',
    startTimeoutMs: 10_000,
    now: () => clock.t
  })
  return s
}

/** Lets the keeper's promise callbacks run. */
async function settle (): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise(resolve => setImmediate(resolve))
}

describe('sidecar keeper', () => {
  it('starts a sidecar beside the app and keeps it as the current one', async () => {
    const s = setup()
    const sidecar = await s.keeper.start(fakeApp().app, s.clock.t + 10_000)
    expect(sidecar).toBe(s.sidecars[0])
    expect(s.keeper.current).toBe(s.sidecars[0])
    expect(s.asked).toEqual([APP])
  })

  it('resolves undefined when the app exits first, and stops the sidecar that comes later', async () => {
    let release!: () => void
    const late = new FakeSidecar(true, 9)
    const s = setup(async () => { await new Promise<void>(resolve => { release = resolve }); return late })
    const { app, exit } = fakeApp()
    const starting = s.keeper.start(app, s.clock.t + 10_000)
    await settle()
    exit({ code: 3, reason: 'exited with code 3' })
    await settle()
    release()
    expect(await starting).toBeUndefined()
    expect(late.stopped).toBe(true)
    expect(s.keeper.current).toBeUndefined()
  })

  it('resolves undefined when the supervisor ends meanwhile, and cancels the start', async () => {
    let cancelled = false
    const s = setup(async (_app, { signal }) => await new Promise((_resolve, reject) => {
      signal.addEventListener('abort', () => { cancelled = true; reject(new Error('aborted')) })
    }))
    const starting = s.keeper.start(fakeApp().app, s.clock.t + 10_000)
    await settle()
    s.lifetime.abort()
    expect(await starting).toBeUndefined()
    expect(cancelled).toBe(true)
  })

  it('fails as sidecar_failed when the sidecar does not start, and as timeout past the deadline', async () => {
    const failing = setup(async () => { throw new Error('the proxy exited with code 1') })
    const err = await failing.keeper.start(fakeApp().app, failing.clock.t + 10_000).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(AllocationError)
    expect(err).toMatchObject({ code: 'sidecar_failed', message: "the server proxy of 'hello' did not start: the proxy exited with code 1" })
    expect((err as Error).cause).toBeInstanceOf(Error)

    const slow = setup(async (_app, { signal }) => await new Promise((_resolve, reject) => {
      signal.addEventListener('abort', () => { reject(new Error('aborted')) })
    }))
    // The deadline already passed by the injected clock: no real wait.
    await expect(slow.keeper.start(fakeApp().app, slow.clock.t)).rejects.toMatchObject({
      code: 'timeout',
      message: "the server proxy of 'hello' was not ready within the start timeout (10000 ms)"
    })
  })

  it('restarts a sidecar that exited on its own, for the app address it is given', async () => {
    const s = setup()
    await s.keeper.start(fakeApp().app, s.clock.t + 10_000)
    // Nothing to do while it runs.
    s.keeper.restartIfDown(APP)
    await settle()
    expect(s.asked.length).toBe(1)

    await s.sidecars[0].crash()
    await settle()
    expect(s.keeper.current).toBeUndefined()
    // No address yet (no app launched): it waits.
    s.keeper.restartIfDown(undefined)
    await settle()
    expect(s.asked.length).toBe(1)

    const moved = { host: '127.0.0.1', port: 4200 }
    s.keeper.restartIfDown(moved)
    s.keeper.restartIfDown(moved) // one restart at a time
    await settle()
    expect(s.keeper.current).toBe(s.sidecars[1])
    expect(s.asked).toEqual([APP, moved])
    expect(s.sidecars[0].stopped).toBe(false)
  })

  it('backs off restarts that fail, by the injected clock, and starts over once one succeeds', async () => {
    const s = setup()
    await s.keeper.start(fakeApp().app, s.clock.t + 10_000)
    let failures = 2
    s.start = async () => {
      if (failures-- > 0) throw new Error('no port')
      const sidecar = new FakeSidecar(true, 7)
      s.sidecars.push(sidecar)
      return sidecar
    }
    await s.sidecars[0].crash()
    await settle()

    s.keeper.restartIfDown(APP)
    await settle()
    expect(s.asked.length).toBe(2)
    s.clock.t += 499
    s.keeper.restartIfDown(APP)
    await settle()
    expect(s.asked.length).toBe(2)
    s.clock.t += 1
    s.keeper.restartIfDown(APP)
    await settle()
    expect(s.asked.length).toBe(3)
    // The second failure in a row doubles the wait.
    s.clock.t += 999
    s.keeper.restartIfDown(APP)
    await settle()
    expect(s.asked.length).toBe(3)
    s.clock.t += 1
    s.keeper.restartIfDown(APP)
    await settle()
    expect(s.asked.length).toBe(4)
    expect(s.keeper.current).toBe(s.sidecars[1])

    // Restarted: the next failure waits initialMs again.
    failures = 1
    await s.sidecars[1].crash()
    await settle()
    s.keeper.restartIfDown(APP)
    await settle()
    expect(s.asked.length).toBe(5)
    s.clock.t += 500
    s.keeper.restartIfDown(APP)
    await settle()
    expect(s.asked.length).toBe(6)
    expect(s.keeper.current).toBe(s.sidecars[2])
  })

  it('does not restart once the supervisor ended, and stop() stops the current sidecar', async () => {
    const s = setup()
    await s.keeper.start(fakeApp().app, s.clock.t + 10_000)
    s.lifetime.abort()
    await s.keeper.stop()
    expect(s.sidecars[0].stopped).toBe(true)
    expect(s.keeper.current).toBeUndefined()
    s.keeper.restartIfDown(APP)
    await settle()
    expect(s.asked.length).toBe(1)
  })

  it('stop() waits for a restart in progress and stops what it started', async () => {
    let release!: () => void
    const s = setup()
    await s.keeper.start(fakeApp().app, s.clock.t + 10_000)
    const slow = new FakeSidecar(true, 2)
    s.start = async () => {
      await new Promise<void>(resolve => { release = resolve })
      return slow
    }
    await s.sidecars[0].crash()
    await settle()
    s.keeper.restartIfDown(APP)
    s.lifetime.abort()
    const stopping = s.keeper.stop()
    await settle()
    release()
    await stopping
    expect(slow.stopped).toBe(true)
    expect(s.keeper.current).toBeUndefined()
  })
})
