import type { CID } from 'multiformats/cid'
import { Counter, Gauge, type Registry } from 'prom-client'
import { requestAllocation } from '../shared/protocols/alloc.js'
import { allocatorCid } from '../shared/cids.js'
import type { InstanceCounter } from '../shared/instance-count.js'
import type { Logger } from '../shared/log.js'
import type { MeshNode } from '../shared/node.js'
import type { ServiceRecord } from '../shared/registry/record.js'
import type { Candidate } from '../shared/peer-finder.js'
import { RateWindow } from '../shared/rate-window.js'
import { requestFirst, type RequestInstance } from './allocations.js'
import { FloorKeeper } from './floor-keeper.js'

export interface AutoscalerTimers {
  setInterval: (fn: () => void, ms: number) => unknown
  clearInterval: (handle: unknown) => void
}

export interface AutoscalerInit {
  node: MeshNode
  /** The service this instance serves. */
  record: ServiceRecord
  /** Finds allocators and pings them (a PeerFinder). */
  finder: { discover: (cid: CID, hardRttMs: number, signal?: AbortSignal) => Promise<Candidate[]> }
  /** Mesh-wide live instances, for `minInstances` and `maxInstances`. */
  instances: Pick<InstanceCounter, 'providers'>
  log: Logger
  /** Requests per second per instance above which another instance is asked for; none: no rate rule. */
  targetRps?: number
  /** Allocators farther than this are not asked: their instance would be of no use to the clients. */
  hardRttMs: number
  /** The sliding window the rate is measured over. Default 120 s. */
  windowMs?: number
  /** How often the rate is checked. Default: an eighth of the window, between 100 ms and 1 s. */
  checkIntervalMs?: number
  /** Pause after a scale-up (or a refused one) before the next. Default max(window / 4, 10 s). */
  cooldownMs?: number
  /** How often the record's `minInstances` is checked against the DHT. Default 5 s. */
  floorCheckMs?: number
  /** How long one scale-up (discovery plus allocation) may take. Default 60 s. */
  allocationTimeoutMs?: number
  requestInstance?: RequestInstance
  metrics?: Registry
  now?: () => number
  timers?: AutoscalerTimers
}

/** What one check decided, for tests and debug logs. */
export type ScaleDecision = 'warming_up' | 'under_target' | 'cooldown' | 'in_flight' | 'at_max' | 'allocated' | 'refused' | 'stopped' | 'floor_met' | 'floor_left_to_peer'

/** Why a scale-up was asked for: the request rate, or fewer instances than the record's minInstances. */
export type ScaleReason = 'rate' | 'min_instances'

/** The sliding window the request rate is measured over. */
export const DEFAULT_SCALE_WINDOW_MS = 120_000

/** Buckets per window: the rate's resolution is a 120th of the window (1 s for the default). */
const BUCKETS = 120

/**
 * Scales a service out from one of its instances: counts the requests this instance serves
 * over a sliding window and, while the rate is above the record's target, asks the nearest
 * allocator for another instance. Scaling in is the allocator's idle culling.
 *
 * It also keeps the record's `minInstances` warm (FloorKeeper), asking for instances the same
 * way, one decision at a time.
 *
 * The rate is requests ÷ the time observed, where the time observed is the window, or the
 * time since this instance started if that is shorter: dividing by the whole window would
 * under-count a fresh instance (a cold-started one under load would wait a full window before
 * asking for help). Decisions use the same rate but observed only since the last successful
 * scale-up, so they judge the load as it is now shared with the new instance, not as it was
 * before. No decision is made on less than a quarter of the window, so a burst at birth does
 * not scale.
 */
export class Autoscaler {
  private readonly windowMs: number
  private readonly requests: RateWindow
  private readonly checkIntervalMs: number
  private readonly cooldownMs: number
  private readonly minObservedMs: number
  private readonly now: () => number
  private readonly timers: AutoscalerTimers
  private readonly requestInstance: RequestInstance
  /** Where the time observed begins (an instant and its bucket): for the reported rate, and for decisions. */
  private startedFrom = { ms: 0, bucket: 0 }
  private decidingFrom = { ms: 0, bucket: 0 }
  private nextAttemptAt = 0
  private readonly floor: FloorKeeper
  private inflight?: Promise<ScaleDecision>
  private timer?: unknown
  private lifetime = new AbortController()
  private allocatorCid?: Promise<CID>
  /** Whether "at maxInstances" was logged since the rate last fell under the target. */
  private capped = false
  private readonly totals = { requested: 0, allocated: 0, refused: 0, atMax: 0 }
  private readonly outcomes?: Counter<'service' | 'reason' | 'outcome'>

  constructor (private readonly init: AutoscalerInit) {
    if (init.targetRps != null && !(init.targetRps > 0)) throw new Error('targetRps must be positive')
    this.windowMs = init.windowMs ?? DEFAULT_SCALE_WINDOW_MS
    if (!(this.windowMs >= 100)) throw new Error('the scaling window must be at least 100 ms')
    this.checkIntervalMs = init.checkIntervalMs ?? Math.min(1000, Math.max(100, this.windowMs / 8))
    this.cooldownMs = init.cooldownMs ?? Math.max(this.windowMs / 4, 10_000)
    this.minObservedMs = this.windowMs / 4
    this.now = init.now ?? Date.now
    this.requests = new RateWindow({ windowMs: this.windowMs, buckets: BUCKETS, now: this.now })
    this.floor = new FloorKeeper({ record: init.record, self: init.node.peerId.toString(), instances: init.instances, log: init.log, checkMs: init.floorCheckMs ?? 5_000, now: this.now })
    this.timers = init.timers ?? {
      setInterval: (fn, ms) => setInterval(fn, ms),
      clearInterval: handle => { clearInterval(handle as NodeJS.Timeout) }
    }
    this.requestInstance = init.requestInstance ?? (async (allocator, service, signal) => await requestAllocation(init.node, allocator, service, signal))
    this.startedFrom = this.decidingFrom = origin(this.now(), this.requests.bucketMs, false)

    if (init.metrics != null) {
      const registers = [init.metrics]
      const service = init.record.name
      this.outcomes = new Counter({ name: 'hyphae_autoscaler_scale_ups_total', help: 'Scale-up attempts by reason (rate, min_instances) and outcome: allocated, refused (no allocator would), at_max (maxInstances reached)', labelNames: ['service', 'reason', 'outcome'], registers })
      const rate = (): number => this.ratePerSecond()
      new Gauge({ name: 'hyphae_autoscaler_requests_per_second', help: 'Requests per second this instance served over the scaling window', labelNames: ['service'], registers, collect () { this.set({ service }, rate()) } })
      if (init.targetRps != null) new Gauge({ name: 'hyphae_autoscaler_target_rps', help: 'Requests per second per instance above which the service scales out', labelNames: ['service'], registers }).set({ service }, init.targetRps)
    }
  }

  /** Scale-ups asked for, and how they ended; `atMax` counts checks held back by maxInstances. */
  get stats (): Readonly<{ requested: number, allocated: number, refused: number, atMax: number }> {
    return { ...this.totals }
  }

  start (): void {
    if (this.timer != null) return
    if (this.lifetime.signal.aborted) this.lifetime = new AbortController()
    this.startedFrom = this.decidingFrom = origin(this.now(), this.requests.bucketMs, false)
    this.timer = this.timers.setInterval(() => {
      this.check().catch(err => { this.init.log.warn({ service: this.init.record.name, err }, 'autoscaler check failed') })
    }, this.checkIntervalMs)
  }

  /** Stops checking and abandons a scale-up in flight (the allocator may still finish it). */
  async stop (): Promise<void> {
    if (this.timer != null) this.timers.clearInterval(this.timer)
    this.timer = undefined
    this.lifetime.abort()
    await this.inflight?.catch(() => {})
  }

  /** Counts one request served. On every request's path: O(1), no allocation. */
  recordRequest (): void {
    this.requests.add()
  }

  /** Requests per second over the window (or the shorter time observed; see the class). */
  ratePerSecond (): number {
    const { requests, spanMs } = this.observed(this.startedFrom)
    return spanMs > 0 ? requests * 1000 / spanMs : 0
  }

  /**
   * One check: scales out if the rate calls for it and nothing holds it back. Resolves when
   * that decision, and any scale-up it started, is done.
   */
  async check (): Promise<ScaleDecision> {
    if (this.lifetime.signal.aborted) return 'stopped'
    if (this.inflight != null) return 'in_flight'
    let floor: ScaleDecision | undefined
    if (this.floor.due) {
      floor = await this.exclusive(async () => {
        const verdict = await this.floor.check(this.lifetime.signal)
        if (verdict.kind !== 'short') return verdict.kind
        const decision = await this.scaleUp('min_instances', { instances: verdict.instances, minInstances: verdict.minInstances })
        this.floor.asked(decision === 'allocated', this.cooldownMs)
        return decision
      })
      if (floor !== 'floor_met' && floor !== 'floor_left_to_peer') return floor
    }
    const { targetRps } = this.init
    if (targetRps == null) return floor ?? 'under_target'
    const { requests, spanMs } = this.observed(this.decidingFrom)
    if (spanMs < this.minObservedMs) return 'warming_up'
    const rate = requests * 1000 / spanMs
    if (rate <= targetRps) {
      this.capped = false
      return 'under_target'
    }
    if (this.now() < this.nextAttemptAt) return 'cooldown'
    return await this.exclusive(async () => await this.scaleUp('rate', { rps: round(rate), targetRps }))
  }

  /** One decision that may scale at a time: concurrent checks answer 'in_flight'. */
  private async exclusive (decide: () => Promise<ScaleDecision>): Promise<ScaleDecision> {
    const attempt = decide().finally(() => { this.inflight = undefined })
    this.inflight = attempt
    return await attempt
  }

  private async scaleUp (reason: ScaleReason, details: Record<string, number>): Promise<ScaleDecision> {
    const { record, log } = this.init
    const service = record.name
    const signal = AbortSignal.any([AbortSignal.timeout(this.init.allocationTimeoutMs ?? 60_000), this.lifetime.signal])
    const started = this.now()
    const context = { service, reason, ...details }
    try {
      let instances: number | undefined
      if (record.maxInstances != null) {
        const peers = new Set(await this.init.instances.providers(record, signal))
        peers.add(this.init.node.peerId.toString())
        instances = peers.size
        if (instances >= record.maxInstances) {
          this.totals.atMax++
          this.outcomes?.inc({ service, reason, outcome: 'at_max' })
          // Counting walks the DHT: while at the cap, look again only after a cooldown.
          this.nextAttemptAt = this.now() + this.cooldownMs
          if (!this.capped) log.info({ ...context, instances, maxInstances: record.maxInstances }, 'scale-up held back: the service runs its maxInstances')
          this.capped = true
          return 'at_max'
        }
      }
      this.totals.requested++
      log.info({ ...context, ...(instances != null ? { instances } : {}) }, 'scale-up requested')
      this.allocatorCid ??= allocatorCid()
      const allocators = await this.init.finder.discover(await this.allocatorCid, this.init.hardRttMs, signal)
      const { accepted, refusals } = await requestFirst(allocators, service, { request: this.requestInstance, signal })
      if (accepted != null) {
        this.totals.allocated++
        this.outcomes?.inc({ service, reason, outcome: 'allocated' })
        this.nextAttemptAt = this.now() + this.cooldownMs
        this.capped = false
        // From now on the load is shared with the new instance: measure it afresh.
        this.decidingFrom = origin(this.now(), this.requests.bucketMs, true)
        log.info({ ...context, allocator: accepted.allocator.id.toString(), instance: accepted.value.peerId, ms: this.now() - started }, 'scale-up: instance allocated')
        return 'allocated'
      }
      this.totals.refused++
      this.outcomes?.inc({ service, reason, outcome: 'refused' })
      this.nextAttemptAt = this.now() + this.cooldownMs
      const why = allocators.length === 0 ? [`no allocator within the hard RTT of ${this.init.hardRttMs} ms`] : refusals
      log.info({ ...context, refusals: why, retryInMs: this.cooldownMs }, 'scale-up refused')
      return 'refused'
    } catch (err) {
      if (this.lifetime.signal.aborted) return 'stopped'
      this.totals.refused++
      this.outcomes?.inc({ service, reason, outcome: 'refused' })
      this.nextAttemptAt = this.now() + this.cooldownMs
      log.info({ ...context, err, retryInMs: this.cooldownMs }, 'scale-up failed')
      return 'refused'
    }
  }

  /** Requests in the window since `from`, and the time that covers. */
  private observed (from: { ms: number, bucket: number }): { requests: number, spanMs: number } {
    const now = this.now()
    const { bucketMs, buckets } = this.requests
    const first = Math.max(this.requests.bucketOf(now) - buckets + 1, from.bucket)
    const spanMs = now - (first === from.bucket ? from.ms : first * bucketMs)
    return { requests: this.requests.count(first), spanMs }
  }
}

/**
 * Where observation begins. `exclusive`: requests in the bucket holding `ms` came before it
 * (a scale-up), so it begins at the next bucket; at start there are none before, so at `ms`.
 */
function origin (ms: number, bucketMs: number, exclusive: boolean): { ms: number, bucket: number } {
  const bucket = Math.floor(ms / bucketMs) + (exclusive ? 1 : 0)
  return { ms: exclusive ? bucket * bucketMs : ms, bucket }
}

function round (n: number): number {
  return Math.round(n * 100) / 100
}

