import { generateKeyPair } from '@libp2p/crypto/keys'
import type { PeerId } from '@libp2p/interface'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { pino } from 'pino'
import { describe, expect, it } from 'vitest'
import type { Allocations } from '../../proxy/allocations.js'
import type { Candidate, DiscoverOptions, PeerFinder } from '../../shared/peer-finder.js'
import { Router } from '../../proxy/router.js'
import { parseRecord } from '../../shared/registry/record.js'
import { waitFor } from '../helpers/wait-for.js'

const log = pino({ level: 'silent' })
const record = parseRecord({ name: 'svc', command: 'x', health: '/', softRttMs: 100, hardRttMs: 300 })

async function peerIds (n: number): Promise<PeerId[]> {
  return await Promise.all(Array.from({ length: n }, async () => peerIdFromPrivateKey(await generateKeyPair('Ed25519'))))
}

/** A finder whose DHT answers and RTTs the test sets. */
class FakeFinder {
  rtts = new Map<string, number | undefined>()
  providers: PeerId[] = []
  discoveries = 0

  async discover (_cid: unknown, hardRttMs: number, _signal?: AbortSignal, options: DiscoverOptions = {}): Promise<Candidate[]> {
    this.discoveries++
    return this.providers
      .filter(id => options.skip?.(id) !== true)
      .map(id => ({ id, rttMs: this.rtts.get(id.toString()) }))
      .filter((c): c is Candidate => c.rttMs != null && c.rttMs <= hardRttMs)
      .sort((a, b) => a.rttMs - b.rttMs)
  }

  async ping (id: PeerId): Promise<number | undefined> {
    return this.rtts.get(id.toString())
  }
}

function routerWith (finder: FakeFinder, allocations?: Partial<Allocations>, now = (): number => 1_000_000): Router {
  return new Router({
    finder: finder as unknown as PeerFinder,
    allocations: allocations as Allocations | undefined,
    defaults: { softRttMs: 100, hardRttMs: 1000 },
    log,
    now
  })
}

describe('router', () => {
  it('walks the DHT once and serves later requests from the cache', async () => {
    const [a] = await peerIds(1)
    const finder = new FakeFinder()
    finder.providers = [a]
    finder.rtts.set(a.toString(), 5)
    const router = routerWith(finder)
    for (let i = 0; i < 20; i++) expect((await router.pick(record)).key).toBe(a.toString())
    expect(finder.discoveries).toBe(1)
  })

  it('never uses an instance over the hard RTT, and prefers one within the soft RTT', async () => {
    const [near, slow, far] = await peerIds(3)
    const finder = new FakeFinder()
    finder.providers = [near, slow, far]
    finder.rtts.set(near.toString(), 5).set(slow.toString(), 150).set(far.toString(), 400)
    const router = routerWith(finder)
    for (let i = 0; i < 50; i++) expect((await router.pick(record)).key).toBe(near.toString())
    expect((await router.pick(record, new Set([near.toString()]))).key).toBe(slow.toString())
  })

  it('moves off an instance whose ping goes over the hard RTT at the next ping round', async () => {
    const [a, b] = await peerIds(2)
    const finder = new FakeFinder()
    finder.providers = [a, b]
    finder.rtts.set(a.toString(), 5).set(b.toString(), 60)
    let t = 1_000_000
    const router = routerWith(finder, undefined, () => t)
    const before = new Set<string>()
    for (let i = 0; i < 20; i++) before.add((await router.pick(record)).key)
    expect(before).toEqual(new Set([a.toString(), b.toString()]))
    finder.rtts.set(a.toString(), 350)
    t += 2000
    await router.pingAll()
    for (let i = 0; i < 10; i++) expect((await router.pick(record)).key).toBe(b.toString())
  })

  it('passes over an instance it found unreachable while its provider record lingers, then believes the DHT again', async () => {
    const [draining, replacement] = await peerIds(2)
    const finder = new FakeFinder()
    finder.providers = [draining]
    finder.rtts.set(draining.toString(), 1)
    let now = 1_000_000
    const router = routerWith(finder, undefined, () => now)
    const first = await router.acquire(record)
    expect(first.peer.key).toBe(draining.toString())
    // It refuses new streams (draining) but answers pings, and its record stays in the DHT,
    // beside its replacement's.
    first.failed('unreachable')
    first.release()
    finder.providers = [draining, replacement]
    finder.rtts.set(replacement.toString(), 5)
    for (let i = 0; i < 10; i++) expect((await router.pick(record)).key).toBe(replacement.toString())
    // Once the window is over, the DHT's word counts again (a blip heals).
    now += 16_000
    finder.rtts.set(replacement.toString(), undefined)
    expect((await router.pick(record, new Set([replacement.toString()]))).key).toBe(draining.toString())
  })

  it('takes an instance that appears in the DHT while a cold start is on its way', async () => {
    const [replacement] = await peerIds(1)
    const finder = new FakeFinder()
    let coldStarts = 0
    // A cold start that takes long (a mesh with no allocator near: seconds of walks).
    const router = routerWith(finder, { coldStart: async () => { coldStarts++; return await new Promise(() => {}) } })
    const picked = router.pick(record)
    await waitFor(() => coldStarts === 1, 'the cold start asked for')
    finder.providers = [replacement]
    finder.rtts.set(replacement.toString(), 2)
    expect((await picked).key).toBe(replacement.toString())
    expect(finder.discoveries).toBeGreaterThanOrEqual(2)
  })

  it('has an instance started when none is within the hard RTT', async () => {
    const [fresh] = await peerIds(1)
    const finder = new FakeFinder()
    let coldStarts = 0
    const router = routerWith(finder, {
      coldStart: async () => { coldStarts++; return { id: fresh, rttMs: 3 } }
    })
    expect((await router.pick(record)).key).toBe(fresh.toString())
    expect((await router.pick(record)).key).toBe(fresh.toString())
    expect(coldStarts).toBe(1)
  })

  it('asks for a nearer instance in the background when the best is over the soft RTT, once at a time, backing off', async () => {
    const [slow, better] = await peerIds(2)
    const finder = new FakeFinder()
    finder.providers = [slow]
    finder.rtts.set(slow.toString(), 150)
    let asks = 0
    const offer: { answer?: Candidate } = {}
    let t = 1_000_000
    const router = routerWith(finder, {
      improve: async () => {
        asks++
        if (offer.answer == null) throw new Error('none nearer')
        return offer.answer
      }
    }, () => t)
    // Served by the slow one meanwhile; only one request for a better instance.
    for (let i = 0; i < 5; i++) expect((await router.pick(record)).key).toBe(slow.toString())
    await new Promise(resolve => setImmediate(resolve))
    expect(asks).toBe(1)
    // Backing off: no second ask straight away.
    await router.pick(record)
    await new Promise(resolve => setImmediate(resolve))
    expect(asks).toBe(1)
    t += 6000
    offer.answer = { id: better, rttMs: 2 }
    await router.pick(record)
    await new Promise(resolve => setImmediate(resolve))
    expect(asks).toBe(2)
    expect((await router.pick(record)).key).toBe(better.toString())
  })
})
