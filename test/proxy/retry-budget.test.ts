import { describe, expect, it } from 'vitest'
import { RetryBudget } from '../../proxy/retry-budget.js'

describe('retry budget', () => {
  it('allows a few retries per second even with no traffic, then refuses', () => {
    let t = 0
    const budget = new RetryBudget({ ratio: 0.2, minPerSecond: 1, windowMs: 10_000, now: () => t })
    let allowed = 0
    for (let i = 0; i < 50; i++) if (budget.tryWithdraw()) allowed++
    expect(allowed).toBe(10)
    t += 10_000
    expect(budget.tryWithdraw()).toBe(true)
  })

  it('allows about 20% of requests as retries on top', () => {
    const t = 0
    const budget = new RetryBudget({ ratio: 0.2, minPerSecond: 0, windowMs: 10_000, now: () => t })
    for (let i = 0; i < 1000; i++) budget.deposit()
    let allowed = 0
    for (let i = 0; i < 1000; i++) if (budget.tryWithdraw()) allowed++
    expect(allowed).toBe(200)
  })

  it('forgets requests and retries older than the window', () => {
    let t = 0
    const budget = new RetryBudget({ ratio: 0.2, minPerSecond: 0, windowMs: 10_000, now: () => t })
    for (let i = 0; i < 100; i++) budget.deposit()
    t += 11_000
    expect(budget.tryWithdraw()).toBe(false)
  })
})
