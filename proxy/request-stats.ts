import type { InstanceStats } from '../shared/protocols/status.js'
import { RateWindow } from '../shared/rate-window.js'

/** What the rate, the mean and the p99 are taken over: short enough for a live view. */
export const STATS_WINDOW_MS = 10_000
/** Response times kept for the percentiles; a busier instance's are sampled from the latest. */
const SAMPLES = 1024

/**
 * What one instance has served, as the status protocol and the allocator's metrics show it:
 * counts since it started, and the rate and response times of the last STATS_WINDOW_MS. O(1)
 * per request and no allocation; a snapshot sorts at most SAMPLES numbers.
 */
export class RequestStats {
  private ok = 0
  private failed = 0
  private total = 0
  private inFlight = 0
  private lastFinishedAt: number
  private readonly rate: RateWindow
  private readonly durations = new Float64Array(SAMPLES)
  private readonly finishedAt = new Float64Array(SAMPLES).fill(-Infinity)
  private next = 0
  private readonly now: () => number

  constructor (init: { now?: () => number } = {}) {
    this.now = init.now ?? Date.now
    this.lastFinishedAt = this.now()
    this.rate = new RateWindow({ windowMs: STATS_WINDOW_MS, buckets: 10, now: this.now })
  }

  started (): void {
    this.inFlight++
  }

  /**
   * STATUS 499 is a client that went away: neither a success nor the instance's failure. A
   * 5xx (the app's, or the proxy's 502 for an app that did not answer) is a failure.
   */
  finished (status: number, durationMs: number): void {
    const at = this.now()
    this.inFlight--
    this.total++
    if (status >= 500) this.failed++
    else if (status !== 499) this.ok++
    this.lastFinishedAt = at
    this.rate.add()
    this.durations[this.next] = durationMs
    this.finishedAt[this.next] = at
    this.next = (this.next + 1) % SAMPLES
  }

  /** Time since the instance last finished serving a request, ms; 0 while one is in flight. */
  get idleMs (): number {
    return this.inFlight > 0 ? 0 : this.now() - this.lastFinishedAt
  }

  snapshot (): InstanceStats {
    const since = this.now() - STATS_WINDOW_MS
    const recent: number[] = []
    for (let i = 0; i < SAMPLES; i++) {
      if (this.finishedAt[i] >= since) recent.push(this.durations[i])
    }
    recent.sort((a, b) => a - b)
    const sum = recent.reduce((a, b) => a + b, 0)
    return {
      ok: this.ok,
      failed: this.failed,
      total: this.total,
      inFlight: this.inFlight,
      rps: round(this.rate.count() / (STATS_WINDOW_MS / 1000)),
      avgMs: recent.length > 0 ? round(sum / recent.length) : null,
      p99Ms: recent.length > 0 ? round(recent[Math.min(recent.length - 1, Math.ceil(recent.length * 0.99) - 1)]) : null,
      idleS: round(this.idleMs / 1000)
    }
  }
}

function round (n: number): number {
  return Math.round(n * 1000) / 1000
}
