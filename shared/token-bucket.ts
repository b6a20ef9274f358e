/** A token bucket: `burst` at once, then `perSecond`. The clock is injected for tests. */
export class TokenBucket {
  private tokens: number
  private at: number

  constructor (private readonly burst: number, private readonly perSecond: number, private readonly now: () => number = Date.now) {
    this.tokens = burst
    this.at = now()
  }

  /** Takes one token; false when there is none. */
  tryTake (): boolean {
    const now = this.now()
    this.tokens = Math.min(this.burst, this.tokens + Math.max(0, now - this.at) / 1000 * this.perSecond)
    this.at = now
    if (this.tokens < 1) return false
    this.tokens -= 1
    return true
  }
}
