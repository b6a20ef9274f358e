import { generateKeyPair } from '@libp2p/crypto/keys'
import type { PeerId } from '@libp2p/interface'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { describe, expect, it } from 'vitest'
import { DEFAULT_LATENCY_MS, pickP2C, ServicePeers, WARMUP_ANSWERS, type PeerState } from '../../proxy/peer-cache.js'

async function peerIds (n: number): Promise<PeerId[]> {
  return await Promise.all(Array.from({ length: n }, async () => peerIdFromPrivateKey(await generateKeyPair('Ed25519'))))
}

/** A clock the test moves by hand. */
function clock (): { now: () => number, advance: (ms: number) => void } {
  let t = 1_000_000
  return { now: () => t, advance: ms => { t += ms } }
}

const limits = { softRttMs: 100, hardRttMs: 300 }

describe('peer cache levels', () => {
  it('admits within the hard RTT only, at the fresh level within the soft RTT, else at removal', async () => {
    const [a, b, c] = await peerIds(3)
    const peers = new ServicePeers(limits, clock().now)
    expect(peers.add(a, 5)?.level).toBe('fresh')
    expect(peers.add(b, 150)?.level).toBe('removal')
    expect(peers.add(c, 400)).toBeUndefined()
    expect(peers.size).toBe(2)
  })

  it('raises a peer that keeps meeting the soft RTT, and drops it a level on one ping over it', async () => {
    const [a] = await peerIds(1)
    const peers = new ServicePeers(limits, clock().now)
    peers.add(a, 10)
    peers.observePing(a.toString(), 12)
    expect(peers.get(a.toString())?.level).toBe('fresh')
    peers.observePing(a.toString(), 9)
    expect(peers.get(a.toString())?.level).toBe('reliable')
    peers.observePing(a.toString(), 150)
    expect(peers.get(a.toString())?.level).toBe('fresh')
    peers.observePing(a.toString(), 150)
    expect(peers.get(a.toString())?.level).toBe('removal')
    peers.observePing(a.toString(), 20)
    expect(peers.get(a.toString())?.level).toBe('fresh')
  })

  it('drops a peer at once when a ping is over the hard RTT or unanswered', async () => {
    const [a, b] = await peerIds(2)
    const peers = new ServicePeers(limits, clock().now)
    peers.add(a, 10)
    peers.add(b, 10)
    expect(peers.observePing(a.toString(), 301)).toBe('dropped')
    expect(peers.observePing(b.toString(), undefined)).toBe('dropped')
    expect(peers.size).toBe(0)
  })

  it('smooths the RTT (EWMA) while judging each ping on its own', async () => {
    const [a] = await peerIds(1)
    const peers = new ServicePeers(limits, clock().now)
    peers.add(a, 10)
    peers.observePing(a.toString(), 110)
    const peer = peers.get(a.toString())
    expect(peer?.rttMs).toBeCloseTo(10 * 0.7 + 110 * 0.3)
    expect(peer?.lastRttMs).toBe(110)
  })

  it('serves from the best level that has peers, without excluded ones', async () => {
    const [a, b, c] = await peerIds(3)
    const peers = new ServicePeers(limits, clock().now)
    peers.add(a, 5)
    peers.add(b, 50)
    peers.add(c, 200)
    for (let i = 0; i < 3; i++) peers.observePing(a.toString(), 5)
    expect(peers.bestLevel().map(p => p.key)).toEqual([a.toString()])
    expect(peers.bestLevel(new Set([a.toString()])).map(p => p.key)).toEqual([b.toString()])
    expect(peers.bestLevel(new Set([a.toString(), b.toString()])).map(p => p.key)).toEqual([c.toString()])
    expect(peers.countByLevel()).toEqual({ reliable: 1, fresh: 1, removal: 1 })
  })
})

describe('peak EWMA and power of two choices', () => {
  function warmUp (peer: PeerState, ms: number, now: number): void {
    for (let i = 0; i < WARMUP_ANSWERS; i++) peer.observeLatency(ms, now)
  }

  /** `n` peers admitted at `rttMs` into one service's cache, with the clock the test moves. */
  async function admitted (n: number, rttMs = 5): Promise<{ t: ReturnType<typeof clock>, peers: PeerState[] }> {
    const t = clock()
    const cache = new ServicePeers(limits, t.now)
    const peers = (await peerIds(n)).map(id => cache.add(id, rttMs))
    if (peers.some(p => p == null)) throw new Error('not admitted')
    return { t, peers: peers as PeerState[] }
  }

  it('starts unknown peers at the default cost and averages a new peer\'s first answers', async () => {
    const { t, peers: [peer] } = await admitted(1)
    expect(peer.latencyMs).toBe(DEFAULT_LATENCY_MS)
    // One cold answer among quick ones does not hold the estimate up.
    peer.observeLatency(150, t.now())
    expect(peer.latencyMs).toBe((DEFAULT_LATENCY_MS + 150) / 2)
    for (let i = 0; i < 8; i++) peer.observeLatency(5, t.now())
    expect(peer.latencyMs).toBeCloseTo((DEFAULT_LATENCY_MS + 150 + 8 * 5) / 10, 5)
  })

  it('takes a higher observation at once once warmed up', async () => {
    const { t, peers: [peer] } = await admitted(1)
    warmUp(peer, 5, t.now())
    expect(peer.latencyMs).toBeLessThan(6)
    peer.observeLatency(80, t.now())
    expect(peer.latencyMs).toBe(80)
  })

  it('decays lower observations in with a ~10 s time constant', async () => {
    const { t, peers: [peer] } = await admitted(1)
    warmUp(peer, 0, t.now())
    peer.observeLatency(100, t.now())
    t.advance(10_000)
    peer.observeLatency(0, t.now())
    // After one time constant, e^-1 of the old estimate is left.
    expect(peer.latencyMs).toBeCloseTo(100 * Math.exp(-1), 5)
    t.advance(100)
    peer.observeLatency(0, t.now())
    expect(peer.latencyMs).toBeCloseTo(100 * Math.exp(-1) * Math.exp(-0.01), 5)
  })

  it('counts estimates below 1 ms as 1 ms, so sub-millisecond noise does not decide', async () => {
    const { t, peers: [pa, pb] } = await admitted(2, 0)
    warmUp(pa, 0.2, t.now())
    warmUp(pb, 0.9, t.now())
    t.advance(60_000)
    pa.observeLatency(0.2, t.now())
    pb.observeLatency(0.9, t.now())
    expect(pa.cost(t.now())).toBe(pb.cost(t.now()))
  })

  it('avoids a peer more than twice as costly, and shows a slow new peer within two answers', async () => {
    const { t, peers: [fast, slow] } = await admitted(2)
    warmUp(fast, 5, t.now())
    slow.observeLatency(200, t.now())
    slow.observeLatency(200, t.now())
    for (const r of [0, 0.3, 0.6, 0.99]) expect(pickP2C([fast, slow], t.now(), () => r)).toBe(fast)
  })

  it('takes latency estimates within a factor of two as equal: fewer in flight wins, then the first drawn', async () => {
    const { t, peers: [pa, pb] } = await admitted(2)
    warmUp(pa, 10, t.now())
    warmUp(pb, 10, t.now())
    pa.observeLatency(19, t.now())
    // Slower by less than 2×: the draw decides.
    expect(pickP2C([pa, pb], t.now(), () => 0)).toBe(pa)
    expect(pickP2C([pa, pb], t.now(), () => 0.99)).toBe(pb)
    // Equal enough, and the faster one is busier: the idle one wins whichever is drawn first.
    pb.inflight = 1
    for (const r of [0, 0.99]) expect(pickP2C([pa, pb], t.now(), () => r)).toBe(pa)
  })

  it('weighs a clearer latency difference against requests in flight', async () => {
    const { t, peers: [fast, slow] } = await admitted(2)
    warmUp(fast, 5, t.now())
    warmUp(slow, 12, t.now())
    // 5 ms × 2 in flight beats 12 ms idle; 5 ms × 3 does not.
    fast.inflight = 1
    for (const r of [0, 0.99]) expect(pickP2C([fast, slow], t.now(), () => r)).toBe(fast)
    fast.inflight = 2
    for (const r of [0, 0.99]) expect(pickP2C([fast, slow], t.now(), () => r)).toBe(slow)
  })

  it('tries a never-measured peer when it is drawn idle, even beside a faster one', async () => {
    const { t, peers: [known, fresh] } = await admitted(2)
    warmUp(known, 2, t.now())
    // The default guess (30 ms) alone would lose to 2 ms whichever pair is drawn.
    for (const r of [0, 0.99]) expect(pickP2C([known, fresh], t.now(), () => r)).toBe(fresh)
    // One probe at a time; once it has answered, its measured latency competes.
    fresh.inflight = 1
    for (const r of [0, 0.99]) expect(pickP2C([known, fresh], t.now(), () => r)).toBe(known)
    fresh.inflight = 0
    fresh.observeLatency(3, t.now())
    expect(fresh.measured).toBe(true)
    expect(pickP2C([known, fresh], t.now(), () => 0)).toBe(known)
  })

  it('lets the estimate of a peer no answer renewed decay, so an avoided peer is tried again', async () => {
    const { t, peers: [steady, avoided] } = await admitted(2)
    warmUp(steady, 5, t.now())
    warmUp(avoided, 5, t.now())
    avoided.observeLatency(100, t.now())
    expect(pickP2C([steady, avoided], t.now(), () => 0.99)).toBe(steady)
    // 30 s on, only the steady one was answering: 100 ms × e^-3 ≈ 5 ms, equal again.
    for (let s = 0; s < 30; s++) {
      t.advance(1000)
      steady.observeLatency(5, t.now())
    }
    expect(avoided.latencyForCost(t.now())).toBeCloseTo(100 * Math.exp(-3), 5)
    expect(pickP2C([steady, avoided], t.now(), () => 0.99)).toBe(avoided)
    // One renewed every second is barely touched by the decay.
    expect(steady.latencyForCost(t.now())).toBeGreaterThan(4.5)
  })

  it('weighs requests in flight into the cost', async () => {
    const { t, peers: [pa, pb] } = await admitted(2)
    pa.inflight = 3
    expect(pa.cost(t.now())).toBe(DEFAULT_LATENCY_MS * 4)
    // Whichever pair is drawn, the idle one wins.
    for (const r of [0, 0.3, 0.6, 0.99]) expect(pickP2C([pa, pb], t.now(), () => r)).toBe(pb)
  })

  it('spreads evenly over equal peers', async () => {
    const { t, peers: states } = await admitted(3)
    let seed = 42
    const random = (): number => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed / 2 ** 31 }
    const counts = new Map<string, number>()
    for (let i = 0; i < 3000; i++) {
      const chosen = pickP2C(states, t.now(), random)
      if (chosen != null) counts.set(chosen.key, (counts.get(chosen.key) ?? 0) + 1)
    }
    for (const count of counts.values()) expect(Math.abs(count / 3000 - 1 / 3)).toBeLessThan(0.05)
  })
})

describe('outlier detection (consecutive failures eject for a while)', () => {
  const policy = { consecutiveFailures: 3, baseEjectionMs: 10_000, maxEjectionMs: 25_000, maxEjectedShare: 0.5 }

  it('ejects after N failures in a row, not after N with a success between', async () => {
    const [a, b] = await peerIds(2)
    const c = clock()
    const peers = new ServicePeers(limits, c.now, policy)
    peers.add(a, 5)
    peers.add(b, 5)
    expect(peers.outcome(a.toString(), 'failed')).toBeUndefined()
    expect(peers.outcome(a.toString(), 'failed')).toBeUndefined()
    expect(peers.outcome(a.toString(), 'ok')).toBeUndefined()
    expect(peers.outcome(a.toString(), 'failed')).toBeUndefined()
    expect(peers.outcome(a.toString(), 'failed')).toBeUndefined()
    expect(peers.outcome(a.toString(), 'failed')).toBe('ejected')
    expect(peers.bestLevel().map(p => p.key)).toEqual([b.toString()])
  })

  it('brings an ejected instance back after its time, and ejects it longer the next time (capped)', async () => {
    const [a, b] = await peerIds(2)
    const c = clock()
    const peers = new ServicePeers(limits, c.now, policy)
    peers.add(a, 5)
    peers.add(b, 5)
    const fail = (): string | undefined => { let r; for (let i = 0; i < 3; i++) r = peers.outcome(a.toString(), 'failed'); return r }
    expect(fail()).toBe('ejected')
    c.advance(9_999)
    expect(peers.bestLevel()).toHaveLength(1)
    c.advance(2)
    expect(peers.bestLevel()).toHaveLength(2)
    expect(fail()).toBe('ejected')
    c.advance(19_999)
    expect(peers.bestLevel()).toHaveLength(1)
    c.advance(2)
    expect(fail()).toBe('ejected')
    // Third ejection: 30 s, capped at 25 s.
    c.advance(25_001)
    expect(peers.bestLevel()).toHaveLength(2)
  })

  it('never ejects more than the allowed share at once, but always allows one', async () => {
    const ids = await peerIds(4)
    const peers = new ServicePeers(limits, clock().now, policy)
    for (const id of ids) peers.add(id, 5)
    const ejected = ids.map(id => { let r; for (let i = 0; i < 3; i++) r = peers.outcome(id.toString(), 'failed'); return r })
    expect(ejected).toEqual(['ejected', 'ejected', undefined, undefined])
    expect(peers.bestLevel()).toHaveLength(2)

    const [only] = await peerIds(1)
    const single = new ServicePeers(limits, clock().now, policy)
    single.add(only, 5)
    for (let i = 0; i < 2; i++) single.outcome(only.toString(), 'failed')
    expect(single.outcome(only.toString(), 'failed')).toBe('ejected')
  })
})
