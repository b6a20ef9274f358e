import { describe, expect, it } from 'vitest'
import type { ProbeResult } from '../../shared/health.js'
import { backoffDelay, DEFAULT_BACKOFF, HealthVerdict, type HealthVerdictInit, type RelaunchPlan } from '../../allocator/health-verdict.js'

const OK: ProbeResult = { ok: true, status: 200 }
const HTTP_500: ProbeResult = { ok: false, status: 500 }
const REFUSED: ProbeResult = { ok: false, error: 'connect ECONNREFUSED 127.0.0.1:4100' }
const SILENT: ProbeResult = { ok: false }

function verdicts (init: Partial<HealthVerdictInit> = {}): { health: HealthVerdict, clock: { t: number } } {
  const clock = { t: 1_000_000 }
  const health = new HealthVerdict({
    unhealthyAfter: 3,
    healthyAfter: 2,
    startTimeoutMs: 30_000,
    backoff: { initialMs: 500, maxMs: 30_000 },
    maxFailedRelaunches: Infinity,
    healthPath: '/healthz',
    now: () => clock.t,
    ...init
  })
  return { health, clock }
}

/** As the supervisor does it: plan the relaunch, then a new copy of the app runs. */
function relaunch (health: HealthVerdict): RelaunchPlan {
  const plan = health.planRelaunch()
  health.relaunched()
  return plan
}

describe('backoffDelay', () => {
  it('waits nothing before the first try', () => {
    expect(backoffDelay(0, { initialMs: 100, maxMs: 1000 })).toBe(0)
    expect(backoffDelay(-3, { initialMs: 100, maxMs: 1000 })).toBe(0)
  })

  it('doubles from initialMs and stops at maxMs', () => {
    const cfg = { initialMs: 100, maxMs: 1000 }
    expect([1, 2, 3, 4, 5, 6].map(n => backoffDelay(n, cfg))).toEqual([100, 200, 400, 800, 1000, 1000])
  })

  it('keeps the default: 500 ms doubling to 30 s', () => {
    expect(DEFAULT_BACKOFF).toEqual({ initialMs: 500, maxMs: 30_000 })
    expect(Object.isFrozen(DEFAULT_BACKOFF)).toBe(true)
    expect([0, 1, 2, 3, 4, 5, 6, 7, 8].map(n => backoffDelay(n, DEFAULT_BACKOFF))).toEqual([0, 500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000])
  })

  it('stays finite after any number of failures, even without a cap', () => {
    expect(backoffDelay(10_000, { initialMs: 1, maxMs: Infinity })).toBe(2 ** 30)
    expect(backoffDelay(31, { initialMs: 1, maxMs: Infinity })).toBe(2 ** 30)
    expect(backoffDelay(30, { initialMs: 1, maxMs: Infinity })).toBe(2 ** 29)
  })
})

describe('health verdict', () => {
  it('starts healthy, and passes keep it so', () => {
    const { health } = verdicts()
    expect(health.phase).toBe('healthy')
    expect(health.judge(OK)).toEqual({ kind: 'pass' })
    expect(health.phase).toBe('healthy')
  })

  it('asks for a relaunch at the unhealthyAfter-th failure in a row', () => {
    const { health } = verdicts()
    expect(health.judge(HTTP_500)).toEqual({ kind: 'fail', fails: 1, why: 'HTTP 500' })
    expect(health.judge(HTTP_500)).toEqual({ kind: 'fail', fails: 2, why: 'HTTP 500' })
    expect(health.judge(REFUSED)).toEqual({
      kind: 'relaunch',
      reason: '3 health checks failed in a row (last: connect ECONNREFUSED 127.0.0.1:4100)',
      fails: 3,
      why: 'connect ECONNREFUSED 127.0.0.1:4100'
    })
    // Declaring it unhealthy is the relaunch's business, not the verdict's.
    expect(health.phase).toBe('healthy')
  })

  it('relaunches at the first failure when unhealthyAfter is 1', () => {
    const { health } = verdicts({ unhealthyAfter: 1 })
    expect(health.judge(SILENT)).toMatchObject({ kind: 'relaunch', fails: 1, why: 'no answer' })
  })

  it('counts only failures in a row', () => {
    const { health } = verdicts()
    health.judge(HTTP_500)
    health.judge(HTTP_500)
    expect(health.judge(OK)).toEqual({ kind: 'pass' })
    expect(health.judge(HTTP_500)).toMatchObject({ kind: 'fail', fails: 1 })
    expect(health.judge(HTTP_500)).toMatchObject({ kind: 'fail', fails: 2 })
  })

  it('says why a check failed: the status, else the error, else no answer', () => {
    const { health } = verdicts({ unhealthyAfter: 100 })
    expect(health.judge({ ok: false, status: 503 })).toMatchObject({ why: 'HTTP 503' })
    expect(health.judge({ ok: false, status: 404, error: 'ignored' })).toMatchObject({ why: 'HTTP 404' })
    expect(health.judge({ ok: false, error: 'no answer within 2000 ms' })).toMatchObject({ why: 'no answer within 2000 ms' })
    expect(health.judge(SILENT)).toMatchObject({ why: 'no answer' })
  })

  it('relaunches a healthy instance at once, then backs off while relaunches do not become healthy', () => {
    const { health } = verdicts({ backoff: { initialMs: 50, maxMs: 400 } })
    const plans = [1, 2, 3, 4, 5, 6].map(() => {
      const plan = relaunch(health)
      expect(health.phase).toBe('unhealthy')
      return plan
    })
    expect(plans.map(p => p.kind)).toEqual(['relaunch', 'relaunch', 'relaunch', 'relaunch', 'relaunch', 'relaunch'])
    expect(plans.map(p => p.failedRelaunches)).toEqual([0, 1, 2, 3, 4, 5])
    expect(plans.map(p => p.kind === 'relaunch' ? p.backoffMs : -1)).toEqual([0, 50, 100, 200, 400, 400])
  })

  it('is relaunching from the plan until the new copy runs, and a launch that failed counts as a failed relaunch', () => {
    const { health } = verdicts()
    expect(health.planRelaunch()).toEqual({ kind: 'relaunch', failedRelaunches: 0, backoffMs: 0 })
    expect(health.phase).toBe('relaunching')
    // The launch failed: no relaunched(); the next plan backs off.
    expect(health.planRelaunch()).toEqual({ kind: 'relaunch', failedRelaunches: 1, backoffMs: 500 })
    health.relaunched()
    expect(health.phase).toBe('unhealthy')
  })

  it('becomes healthy again after healthyAfter passes in a row, which resets the back-off', () => {
    const { health } = verdicts({ healthyAfter: 3 })
    // Passes while healthy are no recovery, however many.
    for (let i = 0; i < 5; i++) expect(health.judge(OK)).toEqual({ kind: 'pass' })
    relaunch(health)
    relaunch(health)
    expect(health.judge(OK)).toEqual({ kind: 'pass' })
    expect(health.judge(OK)).toEqual({ kind: 'pass' })
    expect(health.phase).toBe('unhealthy')
    expect(health.judge(OK)).toEqual({ kind: 'healthy', passes: 3 })
    expect(health.phase).toBe('healthy')
    expect(health.judge(OK)).toEqual({ kind: 'pass' })
    expect(relaunch(health)).toEqual({ kind: 'relaunch', failedRelaunches: 0, backoffMs: 0 })
  })

  it('keeps backing off when a relaunched app passed, but not healthyAfter times in a row', () => {
    const { health } = verdicts()
    relaunch(health)
    relaunch(health)
    expect(health.judge(OK)).toEqual({ kind: 'pass' })
    expect(health.judge(HTTP_500)).toEqual({ kind: 'fail', fails: 1, why: 'HTTP 500' })
    expect(health.judge(OK)).toEqual({ kind: 'pass' })
    expect(health.phase).toBe('unhealthy')
    expect(relaunch(health)).toEqual({ kind: 'relaunch', failedRelaunches: 2, backoffMs: 1000 })
  })

  it('gives a relaunched app that has not passed yet the start timeout, by the injected clock', () => {
    const { health, clock } = verdicts()
    health.planRelaunch()
    // The timeout runs from the launch, not from the plan (the back-off lies between).
    clock.t += 10_000
    health.relaunched()
    const launchedAt = clock.t
    for (let i = 0; i < 5; i++) {
      clock.t += 5000
      expect(health.judge(REFUSED)).toEqual({ kind: 'booting', why: 'connect ECONNREFUSED 127.0.0.1:4100' })
    }
    clock.t = launchedAt + 29_999
    expect(health.judge(HTTP_500)).toEqual({ kind: 'booting', why: 'HTTP 500' })
    expect(health.phase).toBe('unhealthy')
    clock.t = launchedAt + 30_000
    expect(health.judge(SILENT)).toEqual({
      kind: 'relaunch',
      reason: 'the relaunched app did not pass /healthz within 30000 ms (last: no answer)',
      fails: 0,
      why: 'no answer'
    })
  })

  it('counts failures of a relaunched app as usual once it passed, and not those while it booted', () => {
    const { health, clock } = verdicts()
    relaunch(health)
    for (let i = 0; i < 4; i++) expect(health.judge(REFUSED)).toMatchObject({ kind: 'booting' })
    expect(health.judge(OK)).toEqual({ kind: 'pass' })
    clock.t += 5000
    expect(health.judge(HTTP_500)).toEqual({ kind: 'fail', fails: 1, why: 'HTTP 500' })
    expect(health.judge(HTTP_500)).toEqual({ kind: 'fail', fails: 2, why: 'HTTP 500' })
    expect(health.judge(HTTP_500)).toMatchObject({ kind: 'relaunch', reason: '3 health checks failed in a row (last: HTTP 500)', fails: 3 })
  })

  it('starts counting afresh for each new copy of the app', () => {
    const { health, clock } = verdicts()
    health.judge(HTTP_500)
    health.judge(HTTP_500)
    relaunch(health)
    expect(health.judge(OK)).toEqual({ kind: 'pass' })
    expect(health.judge(HTTP_500)).toMatchObject({ kind: 'fail', fails: 1 })
    // A copy that passed before gets no boot grace; the next copy does.
    clock.t += 60_000
    relaunch(health)
    expect(health.judge(HTTP_500)).toMatchObject({ kind: 'booting' })
    expect(health.judge(OK)).toEqual({ kind: 'pass' })
    expect(health.judge(OK)).toEqual({ kind: 'healthy', passes: 2 })
  })

  it('gives up after maxFailedRelaunches relaunches in a row that did not become healthy', () => {
    const { health } = verdicts({ maxFailedRelaunches: 2 })
    expect(relaunch(health)).toMatchObject({ kind: 'relaunch', failedRelaunches: 0 })
    expect(relaunch(health)).toMatchObject({ kind: 'relaunch', failedRelaunches: 1 })
    expect(health.planRelaunch()).toEqual({ kind: 'give-up', failedRelaunches: 2 })
    expect(health.phase).toBe('relaunching')
    // Giving up is not one more failed relaunch.
    expect(health.planRelaunch()).toEqual({ kind: 'give-up', failedRelaunches: 2 })
  })

  it('gives up at once when no relaunch is allowed', () => {
    const { health } = verdicts({ maxFailedRelaunches: 0 })
    expect(health.planRelaunch()).toEqual({ kind: 'give-up', failedRelaunches: 0 })
  })
})
