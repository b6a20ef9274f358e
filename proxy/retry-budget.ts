export interface RetryBudgetInit {
  /** Retries allowed as a share of requests (Linkerd: 0.2). */
  ratio?: number
  /** Retries always allowed per second, so a quiet proxy can still retry (Linkerd: 10). */
  minPerSecond?: number
  /** The window the ratio is measured over. */
  windowMs?: number
  now?: () => number
}

/**
 * A retry budget: retries stay within ~20% of requests plus a few per second over a sliding
 * window, so a sick mesh is not flooded with retries of retries.
 */
export class RetryBudget {
  private readonly ratio: number
  private readonly minPerSecond: number
  private readonly bucketMs: number
  private readonly deposits: number[]
  private readonly withdrawals: number[]
  private bucketStart = 0
  private index = 0
  private readonly now: () => number

  constructor (init: RetryBudgetInit = {}) {
    this.ratio = init.ratio ?? 0.2
    this.minPerSecond = init.minPerSecond ?? 10
    const windowMs = init.windowMs ?? 10_000
    const buckets = 10
    this.bucketMs = windowMs / buckets
    this.deposits = new Array<number>(buckets).fill(0)
    this.withdrawals = new Array<number>(buckets).fill(0)
    this.now = init.now ?? Date.now
    this.bucketStart = this.now()
  }

  /** Counts a request. */
  deposit (): void {
    this.advance()
    this.deposits[this.index]++
  }

  /** Takes one retry from the budget; false when it is spent. */
  tryWithdraw (): boolean {
    this.advance()
    const windowSeconds = (this.bucketMs * this.deposits.length) / 1000
    const allowed = this.minPerSecond * windowSeconds + this.ratio * sum(this.deposits)
    if (sum(this.withdrawals) + 1 > allowed) return false
    this.withdrawals[this.index]++
    return true
  }

  private advance (): void {
    const now = this.now()
    let steps = Math.floor((now - this.bucketStart) / this.bucketMs)
    if (steps <= 0) return
    this.bucketStart += steps * this.bucketMs
    steps = Math.min(steps, this.deposits.length)
    for (let i = 0; i < steps; i++) {
      this.index = (this.index + 1) % this.deposits.length
      this.deposits[this.index] = 0
      this.withdrawals[this.index] = 0
    }
  }
}

function sum (values: number[]): number {
  let total = 0
  for (const v of values) total += v
  return total
}
