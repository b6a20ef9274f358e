import type { PeerId } from '@libp2p/interface'
import { pino } from 'pino'
import { Registry } from 'prom-client'
import { describe, expect, it } from 'vitest'
import type { AllocResponse } from '../../shared/protocols/alloc.js'
import type { RequestInstance } from '../../proxy/allocations.js'
import { Autoscaler, type AutoscalerInit } from '../../proxy/autoscaler.js'
import type { Candidate } from '../../shared/peer-finder.js'
import type { MeshNode } from '../../shared/node.js'
import { parseRecord, type ServiceRecord } from '../../shared/registry/record.js'

const log = pino({ level: 'silent' })

function peer (name: string): PeerId {
  return { toString: () => name } as unknown as PeerId
}

const ALLOCATED: AllocResponse = { ok: true, instance: { peerId: 'new-instance', multiaddrs: ['/ip4/127.0.0.1/tcp/1'] } }

interface Harness {
  scaler: Autoscaler
  /** The injected clock, in ms. */
  clock: { t: number }
  /** Every allocation request, in order: which allocator. */
  asked: string[]
  counted: number
  /** The live instances the DHT shows besides this one; tests change it as instances come. */
  providers: string[]
  /** Serves `rps` requests a second for `seconds`, advancing the clock. */
  load: (rps: number, seconds: number) => void
  advance: (ms: number) => void
  tick?: () => void
}

function harness (opts: {
  record?: Partial<ServiceRecord>
  allocators?: string[]
  answers?: Record<string, AllocResponse | Error>
  providers?: string[]
  requestInstance?: RequestInstance
  init?: Partial<AutoscalerInit>
} = {}): Harness {
  const clock = { t: 1_000_000 }
  const asked: string[] = []
  const record = parseRecord({ name: 'svc', command: 'serve', ...opts.record })
  const allocators: Candidate[] = (opts.allocators ?? ['near']).map((name, i) => ({ id: peer(name), rttMs: i }))
  const h: Harness = {
    clock,
    asked,
    counted: 0,
    providers: opts.providers ?? [],
    scaler: undefined as unknown as Autoscaler,
    load: (rps, seconds) => {
      const step = 1000 / rps
      for (let i = 0; i < rps * seconds; i++) {
        clock.t += step
        h.scaler.recordRequest()
      }
    },
    advance: ms => { clock.t += ms }
  }
  h.scaler = new Autoscaler({
    node: { peerId: peer('self') } as unknown as MeshNode,
    record,
    finder: { discover: async () => allocators },
    instances: {
      providers: async () => {
        h.counted++
        return new Set(h.providers)
      }
    },
    log,
    targetRps: 10,
    hardRttMs: 1000,
    now: () => clock.t,
    requestInstance: opts.requestInstance ?? (async (allocator) => {
      asked.push(allocator.toString())
      const answer = opts.answers?.[allocator.toString()] ?? ALLOCATED
      if (answer instanceof Error) throw answer
      return answer
    }),
    ...opts.init
  })
  return h
}

describe('Autoscaler', () => {
  it('measures the rate over the sliding window', () => {
    const h = harness()
    // Young: the rate is over the time observed, not the whole (120 s) window.
    h.load(4, 30)
    expect(h.scaler.ratePerSecond()).toBeCloseTo(4, 1)
    h.load(8, 90)
    // 120 + 720 requests over the 120 s window.
    expect(h.scaler.ratePerSecond()).toBeCloseTo((120 + 720) / 120, 1)
    // Sliding: 60 s later the first 60 s of load have left the window.
    h.advance(60_000)
    expect(h.scaler.ratePerSecond()).toBeCloseTo(8 * 60 / 120, 0)
    h.advance(120_000)
    expect(h.scaler.ratePerSecond()).toBe(0)
  })

  it('does not decide on less than a quarter of the window', async () => {
    const h = harness()
    h.load(50, 20)
    expect(await h.scaler.check()).toBe('warming_up')
    expect(h.asked).toEqual([])
    h.load(50, 11)
    expect(await h.scaler.check()).toBe('allocated')
  })

  it('does not scale up under the target', async () => {
    const h = harness()
    h.load(9, 120)
    expect(h.scaler.ratePerSecond()).toBeCloseTo(9, 1)
    expect(await h.scaler.check()).toBe('under_target')
    h.load(5, 60)
    expect(await h.scaler.check()).toBe('under_target')
    expect(h.asked).toEqual([])
    expect(h.scaler.stats.requested).toBe(0)
  })

  it('asks the nearest allocator for one instance when over the target', async () => {
    const h = harness({ allocators: ['near', 'far'] })
    h.load(25, 60)
    expect(await h.scaler.check()).toBe('allocated')
    expect(h.asked).toEqual(['near'])
    expect(h.scaler.stats).toEqual({ requested: 1, allocated: 1, refused: 0, atMax: 0 })
  })

  it('keeps one scale-up in flight at a time', async () => {
    const pending = Promise.withResolvers<AllocResponse>()
    let calls = 0
    const h = harness({ requestInstance: async () => { calls++; return await pending.promise } })
    h.load(25, 60)
    const first = h.scaler.check()
    // Let the first check reach the allocator.
    await new Promise(resolve => setImmediate(resolve))
    expect(calls).toBe(1)
    expect(await h.scaler.check()).toBe('in_flight')
    pending.resolve(ALLOCATED)
    expect(await first).toBe('allocated')
    expect(calls).toBe(1)
  })

  it('respects the cooldown, and measures the load afresh after a scale-up', async () => {
    const h = harness({ init: { cooldownMs: 60_000 } })
    h.load(25, 60)
    expect(await h.scaler.check()).toBe('allocated')
    // Right after, too little has been observed since the scale-up to decide anything.
    h.load(25, 10)
    expect(await h.scaler.check()).toBe('warming_up')
    // Enough observed (30 s), still over the target, but within the cooldown.
    h.load(25, 30)
    expect(await h.scaler.check()).toBe('cooldown')
    h.load(25, 21)
    expect(await h.scaler.check()).toBe('allocated')
    expect(h.asked).toEqual(['near', 'near'])
  })

  it('does not count the load from before a scale-up against the instances after it', async () => {
    const h = harness()
    h.load(25, 60)
    expect(await h.scaler.check()).toBe('allocated')
    // The new instance took a share: 8 a second here since.
    h.load(8, 40)
    // The reported rate is the window's (60 s at 25, 40 s at 8) ...
    expect(h.scaler.ratePerSecond()).toBeCloseTo((60 * 25 + 40 * 8) / 100, 0)
    // ... but the decision judges the load since the scale-up.
    expect(await h.scaler.check()).toBe('under_target')
    expect(h.asked).toEqual(['near'])
  })

  it('never exceeds maxInstances, counting itself', async () => {
    const h = harness({ record: { maxInstances: 2 }, providers: ['other'] })
    h.load(25, 60)
    expect(await h.scaler.check()).toBe('at_max')
    expect(h.asked).toEqual([])
    expect(h.scaler.stats.atMax).toBe(1)
    // At the cap it looks again only after the cooldown (counting walks the DHT).
    h.advance(1000)
    h.load(25, 1)
    expect(await h.scaler.check()).toBe('cooldown')
    expect(h.counted).toBe(1)
  })

  it('scales up under maxInstances', async () => {
    const h = harness({ record: { maxInstances: 3 }, providers: ['self', 'other'] })
    h.load(25, 60)
    expect(await h.scaler.check()).toBe('allocated')
    expect(h.counted).toBe(1)
  })

  it('tries the next allocator when one refuses or is unreachable', async () => {
    const h = harness({
      allocators: ['near', 'middle', 'far'],
      answers: {
        near: { ok: false, error: { code: 'capacity', message: 'full' } },
        middle: new Error('connection refused')
      }
    })
    h.load(25, 60)
    expect(await h.scaler.check()).toBe('allocated')
    expect(h.asked).toEqual(['near', 'middle', 'far'])
  })

  it('counts a scale-up every allocator refused, and waits a cooldown before the next', async () => {
    const refuse: AllocResponse = { ok: false, error: { code: 'capacity', message: 'full' } }
    const h = harness({ allocators: ['a', 'b'], answers: { a: refuse, b: refuse } })
    h.load(25, 60)
    expect(await h.scaler.check()).toBe('refused')
    expect(h.scaler.stats).toEqual({ requested: 1, allocated: 0, refused: 1, atMax: 0 })
    h.load(25, 1)
    expect(await h.scaler.check()).toBe('cooldown')
    expect(h.asked).toEqual(['a', 'b'])
  })

  it('refuses when no allocator is within the hard RTT', async () => {
    const h = harness({ allocators: [] })
    h.load(25, 60)
    expect(await h.scaler.check()).toBe('refused')
  })

  it('exports its rate and outcomes as Prometheus metrics', async () => {
    const metrics = new Registry()
    const h = harness({ init: { metrics } })
    h.load(25, 60)
    await h.scaler.check()
    const text = await metrics.metrics()
    expect(text).toMatch(/hyphae_autoscaler_scale_ups_total\{service="svc",reason="rate",outcome="allocated"\} 1/)
    expect(text).toMatch(/hyphae_autoscaler_requests_per_second\{service="svc"\} 25/)
    expect(text).toMatch(/hyphae_autoscaler_target_rps\{service="svc"\} 10/)
  })

  it('checks on its timer between start() and stop()', async () => {
    const intervals: Array<{ fn: () => void, ms: number, cleared: boolean }> = []
    const h = harness({
      init: {
        windowMs: 4000,
        timers: {
          setInterval: (fn, ms) => { const t = { fn, ms, cleared: false }; intervals.push(t); return t },
          clearInterval: handle => { (handle as { cleared: boolean }).cleared = true }
        }
      }
    })
    h.scaler.start()
    expect(intervals).toHaveLength(1)
    // An eighth of a short window.
    expect(intervals[0].ms).toBe(500)
    h.load(25, 2)
    intervals[0].fn()
    await new Promise(resolve => setImmediate(resolve))
    expect(h.asked).toEqual(['near'])
    await h.scaler.stop()
    expect(intervals[0].cleared).toBe(true)
    expect(await h.scaler.check()).toBe('stopped')
  })

  describe('minInstances', () => {
    function floorHarness (providers: string[], record: Partial<ServiceRecord> = {}): Harness {
      return harness({ record: { minInstances: 3, ...record }, providers, init: { targetRps: undefined } })
    }

    it('asks for another instance while the DHT shows fewer, from the lowest peer ID only', async () => {
      // 'other' sorts before 'self': it acts, this one leaves it.
      const h = floorHarness(['other'])
      expect(await h.scaler.check()).toBe('floor_left_to_peer')
      expect(h.asked).toEqual([])
      // Now this one is the lowest (counted again after floorCheckMs).
      h.providers = ['x1']
      expect(await h.scaler.check()).toBe('under_target')
      h.advance(5000)
      expect(await h.scaler.check()).toBe('allocated')
      expect(h.asked).toEqual(['near'])
      // Counted again at once (no wait for the check interval): still short, one more.
      h.providers = ['x1', 'x2']
      expect(await h.scaler.check()).toBe('floor_met')
      expect(h.asked).toEqual(['near'])
      // Without a rate rule, load alone never scales.
      h.load(100, 120)
      expect(await h.scaler.check()).toBe('floor_met')
      expect(await h.scaler.check()).toBe('under_target')
      expect(h.asked).toEqual(['near'])
    })

    it('counts again only every floorCheckMs while the floor is met, and waits a cooldown after a refusal', async () => {
      const h = harness({ record: { minInstances: 2 }, providers: ['x1'], answers: { near: { ok: false, error: { code: 'capacity', message: 'full' } } }, init: { targetRps: undefined, cooldownMs: 30_000 } })
      expect(await h.scaler.check()).toBe('floor_met')
      expect(h.counted).toBe(1)
      h.advance(1000)
      await h.scaler.check()
      expect(h.counted).toBe(1)
      h.advance(4000)
      h.providers = []
      expect(await h.scaler.check()).toBe('refused')
      // A shortfall is confirmed by a second walk before anything is asked for.
      expect(h.counted).toBe(3)
      h.advance(10_000)
      await h.scaler.check()
      expect(h.counted).toBe(3)
      h.advance(20_000)
      await h.scaler.check()
      expect(h.asked).toEqual(['near', 'near'])
    })

    it('does not act on a shortfall that a second walk does not confirm', async () => {
      const answers = [[], ['x1']]
      const h = harness({
        record: { minInstances: 2 },
        init: { targetRps: undefined, instances: { providers: async () => new Set(answers.shift() ?? ['x1']) } }
      })
      expect(await h.scaler.check()).toBe('floor_met')
      expect(answers).toEqual([])
      expect(h.asked).toEqual([])
    })
  })
})
