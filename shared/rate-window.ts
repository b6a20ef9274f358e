/**
 * Counts events over a sliding window in fixed buckets, O(1) per event and no allocation:
 * each slot remembers which bucket (time ÷ bucket length) it holds, so a slot left over from
 * an earlier lap of the ring never counts.
 */
export class RateWindow {
  readonly bucketMs: number
  readonly buckets: number
  private readonly counts: Float64Array
  private readonly slots: Float64Array
  private readonly now: () => number

  constructor (init: { windowMs: number, buckets: number, now?: () => number }) {
    this.bucketMs = Math.ceil(init.windowMs / init.buckets)
    this.buckets = Math.ceil(init.windowMs / this.bucketMs)
    this.counts = new Float64Array(this.buckets)
    this.slots = new Float64Array(this.buckets).fill(-1)
    this.now = init.now ?? Date.now
  }

  /** The bucket holding the instant `ms`. */
  bucketOf (ms: number): number {
    return Math.floor(ms / this.bucketMs)
  }

  add (n = 1): void {
    const bucket = this.bucketOf(this.now())
    const slot = bucket % this.buckets
    if (this.slots[slot] !== bucket) {
      this.slots[slot] = bucket
      this.counts[slot] = 0
    }
    this.counts[slot] += n
  }

  /** Events in the window, counting from bucket `first` on when that is later than the window's start. */
  count (first = -Infinity): number {
    const current = this.bucketOf(this.now())
    const from = Math.max(current - this.buckets + 1, first)
    let total = 0
    for (let i = 0; i < this.buckets; i++) {
      const bucket = this.slots[i]
      if (bucket >= from && bucket <= current) total += this.counts[i]
    }
    return total
  }
}
