import { describe, expect, it } from 'vitest'
import { checkTrust, instanceCap, PeerRateLimiter } from '../../allocator/admission.js'
import { parseRecord } from '../../shared/registry/record.js'

const record = parseRecord({ name: 'svc', command: 'run' })
const SIGNER = '12D3KooWGr15EnzXanNyxZ69NkPdvMwfygsgPTocicR6QLnD2sdo'
const OTHER = '12D3KooWCs33mjrnwoBXD4YrPDh5JnMbYiJAjYp29rC3K2v7i8yA'

describe('the trust rule', () => {
  it('runs a static record whatever RegistryKeys says', () => {
    expect(checkTrust({ record, origin: { source: 'static' } }, [])).toBeUndefined()
    expect(checkTrust({ record, origin: { source: 'static' } }, [OTHER])).toBeUndefined()
  })

  it('refuses any DHT record while RegistryKeys is empty, saying how to allow it', () => {
    const refusal = checkTrust({ record, origin: { source: 'dht', signer: SIGNER } }, [])
    expect(refusal?.code).toBe('untrusted_record')
    expect(refusal?.message).toMatch(/RegistryKeys is empty/)
  })

  it('runs a DHT record signed by a listed key, and only that', () => {
    expect(checkTrust({ record, origin: { source: 'dht', signer: SIGNER } }, [SIGNER])).toBeUndefined()
    expect(checkTrust({ record, origin: { source: 'dht', signer: OTHER } }, [SIGNER])?.code).toBe('untrusted_record')
  })
})

describe('instanceCap', () => {
  it('is one per allocator when nothing asks for more', () => {
    expect(instanceCap(record)).toBe(1)
    expect(instanceCap(parseRecord({ name: 'svc', command: 'run', minInstances: 1 }))).toBe(1)
  })

  it('is the record\'s maxInstances when it has one', () => {
    expect(instanceCap(parseRecord({ name: 'svc', command: 'run', maxInstances: 3 }))).toBe(3)
  })

  it('is unbounded (the allocator\'s own limit applies) for an autoscaled service', () => {
    expect(instanceCap(parseRecord({ name: 'svc', command: 'run', targetRps: 10 }))).toBe(Infinity)
    expect(instanceCap(record, 50)).toBe(Infinity)
    expect(instanceCap(parseRecord({ name: 'svc', command: 'run', minInstances: 2 }))).toBe(Infinity)
  })
})

describe('PeerRateLimiter', () => {
  it('lets a burst through, then refuses until tokens come back at the set rate', () => {
    let now = 0
    const limiter = new PeerRateLimiter({ burst: 3, perSecond: 2, now: () => now })
    expect([1, 2, 3, 4].map(() => limiter.tryTake('a'))).toEqual([true, true, true, false])
    now += 499
    expect(limiter.tryTake('a')).toBe(false)
    now += 2
    expect(limiter.tryTake('a')).toBe(true)
    expect(limiter.tryTake('a')).toBe(false)
  })

  it('keeps peers apart: one peer\'s flood leaves another its burst', () => {
    const limiter = new PeerRateLimiter({ burst: 2, perSecond: 1, now: () => 0 })
    for (let i = 0; i < 100; i++) limiter.tryTake('flooder')
    expect(limiter.tryTake('other')).toBe(true)
    expect(limiter.tryTake('other')).toBe(true)
    expect(limiter.tryTake('other')).toBe(false)
  })

  it('remembers a bounded number of peers, forgetting the least recently seen', () => {
    const limiter = new PeerRateLimiter({ burst: 1, perSecond: 0.001, maxPeers: 100, now: () => 0 })
    for (let i = 0; i < 10_000; i++) limiter.tryTake(`peer-${i}`)
    expect(limiter.size).toBe(100)
    // The newest are remembered (and empty); the oldest were forgotten (full again).
    expect(limiter.tryTake('peer-9999')).toBe(false)
    expect(limiter.tryTake('peer-0')).toBe(true)
  })
})
