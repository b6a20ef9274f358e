import { describe, expect, it } from 'vitest'
import { bound, RecordCache } from '../../../shared/registry/record-cache.js'

describe('RecordCache', () => {
  it('keeps expired entries (served while a lookup runs) until it is full', () => {
    let now = 1000
    const cache = new RecordCache<string>(2, () => now)
    cache.set('a', { resolved: 'A', expiresAt: 1500 })
    now = 2000
    expect(cache.get('a')).toEqual({ resolved: 'A', expiresAt: 1500 })
    expect(cache.get('b')).toBeUndefined()
  })

  it('when full, drops expired entries first, then the oldest live ones', () => {
    let now = 0
    const cache = new RecordCache<string>(2, () => now)
    cache.set('expired', { resolved: undefined, expiresAt: 10 })
    cache.set('old', { resolved: 'O', expiresAt: 100 })
    now = 20
    cache.set('new', { resolved: 'N', expiresAt: 100 })
    // Over the bound: the expired entry goes, the older live one stays.
    expect(cache.get('expired')).toBeUndefined()
    expect(cache.get('old')?.resolved).toBe('O')

    cache.set('newest', { resolved: 'W', expiresAt: 100 })
    expect(cache.get('old')).toBeUndefined()
    expect(cache.get('new')?.resolved).toBe('N')
    expect(cache.get('newest')?.resolved).toBe('W')
  })

  it('counts a name set again as the newest', () => {
    const cache = new RecordCache<string>(2, () => 0)
    cache.set('a', { resolved: 'A1', expiresAt: 100 })
    cache.set('b', { resolved: 'B', expiresAt: 100 })
    cache.set('a', { resolved: 'A2', expiresAt: 100 })
    cache.set('c', { resolved: 'C', expiresAt: 100 })
    expect(cache.get('b')).toBeUndefined()
    expect(cache.get('a')?.resolved).toBe('A2')
    cache.clear()
    expect(cache.get('a')).toBeUndefined()
  })
})

describe('bound', () => {
  it('drops the oldest entries beyond the maximum', () => {
    const map = new Map([['a', 1], ['b', 2], ['c', 3]])
    bound(map, 1)
    expect([...map.keys()]).toEqual(['c'])
    bound(map, 5)
    expect(map.size).toBe(1)
  })
})
