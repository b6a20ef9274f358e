import { describe, expect, it } from 'vitest'
import { RateWindow } from '../../shared/rate-window.js'

describe('RateWindow', () => {
  it('counts what happened within the window and forgets what is older', () => {
    let t = 0
    const w = new RateWindow({ windowMs: 1000, buckets: 10, now: () => t })
    w.add()
    t = 500
    w.add(2)
    expect(w.count()).toBe(3)
    t = 1050
    expect(w.count()).toBe(2)
    t = 1600
    expect(w.count()).toBe(0)
  })

  it('counts from a given bucket on', () => {
    let t = 0
    const w = new RateWindow({ windowMs: 1000, buckets: 10, now: () => t })
    w.add()
    t = 300
    w.add()
    expect(w.count(w.bucketOf(300))).toBe(1)
    expect(w.count(w.bucketOf(301) + 1)).toBe(0)
  })

  it('never counts a slot left from an earlier lap of the ring', () => {
    let t = 0
    const w = new RateWindow({ windowMs: 1000, buckets: 10, now: () => t })
    w.add(5)
    t = 10_000 // the same slot, many laps later
    w.add()
    expect(w.count()).toBe(1)
  })
})
