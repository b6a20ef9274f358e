import type { ProbeResult } from '../shared/health.js'

export interface BackoffConfig {
  initialMs: number
  maxMs: number
}

export const DEFAULT_BACKOFF: Readonly<BackoffConfig> = Object.freeze({ initialMs: 500, maxMs: 30_000 })

/** How long to wait before the attempt-th retry (1-based): doubling from initialMs, capped at maxMs. */
export function backoffDelay (attempt: number, backoff: BackoffConfig): number {
  if (attempt <= 0) return 0
  // Clamped so that a long run of failures cannot overflow to Infinity before the cap applies.
  return Math.min(backoff.maxMs, backoff.initialMs * 2 ** Math.min(attempt - 1, 30))
}

/** Where a started instance stands; the supervisor adds its own start and end states. */
export type HealthPhase = 'healthy' | 'unhealthy' | 'relaunching'

export type Verdict =
  /** Passed; the phase stays (healthy already, or not yet healthyAfter passes since a relaunch). */
  | { kind: 'pass' }
  /** The healthyAfter-th pass in a row since a relaunch: healthy again. */
  | { kind: 'healthy', passes: number }
  /** Failed, `fails` times in a row, fewer than unhealthyAfter. */
  | { kind: 'fail', fails: number, why: string }
  /** Failed, but the relaunched app has not passed yet and is still within its start timeout. */
  | { kind: 'booting', why: string }
  /** The app must be relaunched; `fails`: as for 'fail', 0 when a relaunched app's start timeout ran out. */
  | { kind: 'relaunch', reason: string, fails: number, why: string }

/** failedRelaunches: relaunches in a row so far that did not become healthy. */
export type RelaunchPlan = { failedRelaunches: number } & (
  | { kind: 'give-up' }
  /** backoffMs: how long to wait before launching; 0 for the first relaunch after a healthy spell. */
  | { kind: 'relaunch', backoffMs: number }
)

export interface HealthVerdictInit {
  /** Consecutive failed checks that make an instance due for a relaunch. */
  unhealthyAfter: number
  /** Consecutive passed checks before a relaunched instance counts as healthy again. */
  healthyAfter: number
  /** How long a relaunched app may take to first pass. */
  startTimeoutMs: number
  backoff: BackoffConfig
  /** Relaunches in a row that did not become healthy before giving up. */
  maxFailedRelaunches: number
  /** Only for the reasons given. */
  healthPath: string
  now: () => number
}

/**
 * Judges a started instance from its health checks: when it is due for a relaunch, how long
 * to back off before relaunching it, and when to give up. It only counts; the caller probes,
 * sleeps and launches.
 */
export class HealthVerdict {
  private current: HealthPhase = 'healthy'
  private passes = 0
  private fails = 0
  /** Relaunches since the app last became healthy: drives the back-off. */
  private failedRelaunches = 0
  private launchedAt = 0
  private passedSinceLaunch = false

  constructor (private readonly init: HealthVerdictInit) {}

  get phase (): HealthPhase { return this.current }

  judge (result: ProbeResult): Verdict {
    return result.ok ? this.pass() : this.fail(describeFailure(result))
  }

  /**
   * A relaunch is due. Unless it is time to give up, the relaunch counts as failed from now
   * until it passes healthyAfter checks.
   */
  planRelaunch (): RelaunchPlan {
    this.current = 'relaunching'
    const failedRelaunches = this.failedRelaunches
    if (failedRelaunches >= this.init.maxFailedRelaunches) return { kind: 'give-up', failedRelaunches }
    this.failedRelaunches++
    return { kind: 'relaunch', failedRelaunches, backoffMs: backoffDelay(failedRelaunches, this.init.backoff) }
  }

  /** A new copy of the app runs: unhealthy until it passes, and its start timeout begins now. */
  relaunched (): void {
    this.current = 'unhealthy'
    this.passes = 0
    this.fails = 0
    this.launchedAt = this.init.now()
    this.passedSinceLaunch = false
  }

  private pass (): Verdict {
    this.fails = 0
    this.passedSinceLaunch = true
    if (this.current !== 'unhealthy') return { kind: 'pass' }
    this.passes++
    if (this.passes < this.init.healthyAfter) return { kind: 'pass' }
    this.current = 'healthy'
    // A good spell: the next trouble starts the back-off from the beginning.
    this.failedRelaunches = 0
    return { kind: 'healthy', passes: this.passes }
  }

  private fail (why: string): Verdict {
    this.passes = 0
    // A relaunched app that has not answered yet may still be booting: it gets the start
    // timeout, as at the first start, rather than N intervals.
    if (this.current === 'unhealthy' && !this.passedSinceLaunch) {
      if (this.init.now() - this.launchedAt < this.init.startTimeoutMs) return { kind: 'booting', why }
      return { kind: 'relaunch', reason: `the relaunched app did not pass ${this.init.healthPath} within ${this.init.startTimeoutMs} ms (last: ${why})`, fails: this.fails, why }
    }
    this.fails++
    if (this.fails < this.init.unhealthyAfter) return { kind: 'fail', fails: this.fails, why }
    return { kind: 'relaunch', reason: `${this.fails} health checks failed in a row (last: ${why})`, fails: this.fails, why }
  }
}

function describeFailure (result: ProbeResult): string {
  return result.status != null ? `HTTP ${result.status}` : result.error ?? 'no answer'
}
