import { describe, expect, it } from 'vitest'
import { RequestStats, STATS_WINDOW_MS } from '../../proxy/request-stats.js'

describe('RequestStats', () => {
  const clock = (): { now: () => number, advance: (ms: number) => void } => {
    let t = 1_000_000
    return { now: () => t, advance: ms => { t += ms } }
  }

  it('counts ok, failed (5xx) and total; a client that went away is neither ok nor failed', () => {
    const c = clock()
    const stats = new RequestStats({ now: c.now })
    for (const status of [200, 204, 404, 500, 502, 499]) {
      stats.started()
      stats.finished(status, 5)
    }
    expect(stats.snapshot()).toMatchObject({ ok: 3, failed: 2, total: 6, inFlight: 0 })
  })

  it('takes the rate, the mean and the p99 over the last window only', () => {
    const c = clock()
    const stats = new RequestStats({ now: c.now })
    for (let i = 0; i < 50; i++) { stats.started(); stats.finished(200, 1000) }
    c.advance(STATS_WINDOW_MS + 1)
    for (let i = 1; i <= 100; i++) { stats.started(); stats.finished(200, i) }
    const s = stats.snapshot()
    expect(s.total).toBe(150)
    expect(s.rps).toBe(100 / (STATS_WINDOW_MS / 1000))
    expect(s.avgMs).toBe(50.5)
    expect(s.p99Ms).toBe(99)
    c.advance(STATS_WINDOW_MS + 1)
    expect(stats.snapshot()).toMatchObject({ rps: 0, avgMs: null, p99Ms: null, total: 150 })
  })

  it('is idle for no time while a request is in flight, and counts from the last one that finished', () => {
    const c = clock()
    const stats = new RequestStats({ now: c.now })
    c.advance(3000)
    expect(stats.idleMs).toBe(3000)
    stats.started()
    c.advance(5000)
    expect(stats.idleMs).toBe(0)
    expect(stats.snapshot().inFlight).toBe(1)
    stats.finished(200, 5000)
    c.advance(1500)
    expect(stats.snapshot().idleS).toBe(1.5)
  })

  it('stays right past its ring of samples (a million requests)', () => {
    const c = clock()
    const stats = new RequestStats({ now: c.now })
    for (let i = 0; i < 1_000_000; i++) { stats.started(); stats.finished(200, i % 100) }
    const s = stats.snapshot()
    expect(s.total).toBe(1_000_000)
    expect(s.p99Ms).toBeLessThanOrEqual(99)
  })
})
