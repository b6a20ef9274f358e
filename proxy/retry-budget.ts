import { RateWindow } from '../shared/rate-window.js'

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
  private readonly windowSeconds: number
  private readonly requests: RateWindow
  private readonly retries: RateWindow

  constructor (init: RetryBudgetInit = {}) {
    this.ratio = init.ratio ?? 0.2
    this.minPerSecond = init.minPerSecond ?? 10
    const windowMs = init.windowMs ?? 10_000
    this.windowSeconds = windowMs / 1000
    this.requests = new RateWindow({ windowMs, buckets: 10, now: init.now })
    this.retries = new RateWindow({ windowMs, buckets: 10, now: init.now })
  }

  /** Counts a request. */
  deposit (): void {
    this.requests.add()
  }

  /** Takes one retry from the budget; false when it is spent. */
  tryWithdraw (): boolean {
    const allowed = this.minPerSecond * this.windowSeconds + this.ratio * this.requests.count()
    if (this.retries.count() + 1 > allowed) return false
    this.retries.add()
    return true
  }
}
