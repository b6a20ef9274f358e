/** How long and how often `waitFor` checks. */
export interface WaitLimits {
  /** Gives up this long after the first check, even while a check is still running. Default 10 s. */
  timeoutMs?: number
  /** Pause between two checks. Default 25 ms. */
  everyMs?: number
  /** Gives up after this many checks, should the time not be up yet. Default: no limit. */
  maxChecks?: number
}

const DEFAULT_TIMEOUT_MS = 10_000
const DEFAULT_EVERY_MS = 25

/** What a check still running at the deadline yields (it is left to finish on its own). */
const STILL_RUNNING = Symbol('still running')

/**
 * Polls `check` until it returns a value other than `undefined` or `false`, and resolves with
 * that value; a check that throws fails the wait at once. Fails after `timeoutMs` (a number, or
 * `{ timeoutMs, everyMs, maxChecks }`) with an error that names `what` was awaited, e.g.
 * `await waitFor(() => supervisor.state === 'culled', 'the cull', 5000)`.
 */
export async function waitFor<T> (
  check: () => T | undefined | false | Promise<T | undefined | false>,
  what: string,
  limits: number | WaitLimits = {}
): Promise<T> {
  const { timeoutMs = DEFAULT_TIMEOUT_MS, everyMs = DEFAULT_EVERY_MS, maxChecks = Infinity } = typeof limits === 'number' ? { timeoutMs: limits } : limits
  const startedAt = performance.now()
  const deadline = startedAt + timeoutMs
  for (let checks = 1; ; checks++) {
    const value = await beforeDeadline(check(), deadline)
    if (value !== undefined && value !== false && value !== STILL_RUNNING) return value
    const left = deadline - performance.now()
    if (value === STILL_RUNNING || left <= 0 || checks >= maxChecks) {
      const elapsed = `${(performance.now() - startedAt).toFixed(0)} ms`
      const tally = `${checks} ${checks === 1 ? 'check' : 'checks'}`
      throw new Error(value !== STILL_RUNNING && left > 0
        ? `gave up after ${tally} (${elapsed}) waiting for ${what}`
        : `timed out after ${elapsed} (${tally}${value === STILL_RUNNING ? ', the last one still running' : ''}) waiting for ${what}`)
    }
    await new Promise(resolve => setTimeout(resolve, Math.min(everyMs, left)))
  }
}

/** The check's outcome, or STILL_RUNNING if it has none by the deadline. */
async function beforeDeadline<V> (outcome: V | Promise<V>, deadline: number): Promise<V | typeof STILL_RUNNING> {
  if (!(outcome instanceof Promise)) return outcome
  // Settled or not, a check abandoned at the deadline must not fail the run later.
  outcome.catch(() => {})
  let timer: NodeJS.Timeout | undefined
  const expiry = new Promise<typeof STILL_RUNNING>(resolve => {
    timer = setTimeout(() => { resolve(STILL_RUNNING) }, Math.max(0, deadline - performance.now()))
  })
  try {
    return await Promise.race([outcome, expiry])
  } finally {
    clearTimeout(timer)
  }
}
