import type { PeerId } from '@libp2p/interface'
import type { CID } from 'multiformats/cid'
import { deadline, raceSignal } from './abort.js'
import type { Logger } from './log.js'
import type { MeshNode } from './node.js'

export interface Candidate {
  id: PeerId
  /** Round trip in ms, from libp2p ping (whole ms: 0 is a valid RTT on one machine). */
  rttMs: number
}

export interface PeerFinderInit {
  node: MeshNode
  log: Logger
  /** How long a DHT walk for providers may take. */
  discoveryTimeoutMs?: number
  /** Once a provider answered, how long the walk goes on without finding a new one. */
  settleMs?: number
}

export interface DiscoverOptions {
  /**
   * Providers to pass over: neither pinged nor counted as an answer that lets the walk end.
   * A stale record of an instance that is going away (draining, still answering pings) would
   * otherwise end the walk before the record of its replacement is met.
   */
  skip?: (id: PeerId) => boolean
}

/** Finds the providers of a CID in the DHT and measures each one's RTT, all in parallel. */
export class PeerFinder {
  private readonly discoveryTimeoutMs: number
  private readonly settleMs: number

  constructor (private readonly init: PeerFinderInit) {
    this.discoveryTimeoutMs = init.discoveryTimeoutMs ?? 3000
    this.settleMs = init.settleMs ?? 300
  }

  /**
   * Providers of `cid` within `hardRttMs`, nearest first. Each provider is pinged as soon as
   * the DHT yields it, so the walk and the pings overlap.
   */
  async discover (cid: CID, hardRttMs: number, signal?: AbortSignal, options: DiscoverOptions = {}): Promise<Candidate[]> {
    const { node } = this.init
    const pings: Array<Promise<Candidate | undefined>> = []
    // The walk also ends once a provider answered and no new one came for a while: a walk
    // waits out every peer it asks, and one hung peer would hold it to its deadline.
    const settled = new AbortController()
    let settleTimer: NodeJS.Timeout | undefined
    const settle = (): void => {
      clearTimeout(settleTimer)
      settleTimer = setTimeout(() => { settled.abort() }, this.settleMs)
    }
    const walk = deadline(this.discoveryTimeoutMs, signal, settled.signal)
    let answered = false
    try {
      // Raced, not only signalled: a query blocked in a dial does not always see the abort,
      // and every request waiting for an instance of the service waits on this walk.
      await raceSignal(this.walk(cid, walk.signal, id => {
        if (id.equals(node.peerId) || options.skip?.(id) === true) return
        if (answered) settle()
        pings.push(this.measure(id, hardRttMs, signal).then(found => {
          if (found != null && !answered) {
            answered = true
            settle()
          }
          return found
        }))
      }), walk.signal)
    } catch (err) {
      // A walk cut short by its deadline still yields the providers found so far.
      if (signal?.aborted === true) throw err
      if (!settled.signal.aborted) this.init.log.debug({ cid: cid.toString(), err }, 'provider walk ended early')
    } finally {
      clearTimeout(settleTimer)
      walk.clear()
    }
    const measured = await Promise.all(pings)
    return measured.filter((c): c is Candidate => c != null).sort((a, b) => a.rttMs - b.rttMs)
  }

  /**
   * Every provider of `cid` the walk finds before `walkMs` that answers a ping within `pingMs`
   * (this node included when it provides). Unlike discover(), the walk is not cut short once
   * providers answer: this is a count, and a short walk would undercount.
   */
  async liveProviders (cid: CID, options: { walkMs: number, pingMs: number }): Promise<Set<string>> {
    const { node } = this.init
    const live = new Set<string>()
    const checks: Array<Promise<void>> = []
    try {
      await this.walk(cid, AbortSignal.timeout(options.walkMs), id => {
        if (id.equals(node.peerId)) {
          live.add(id.toString())
          return
        }
        checks.push(this.ping(id, Infinity, undefined, options.pingMs).then(rtt => { if (rtt != null) live.add(id.toString()) }))
      })
    } catch (err) {
      // The deadline ends most walks on a large mesh: what was found by then is the answer.
      this.init.log.debug({ cid: cid.toString(), err }, 'provider count: walk ended early')
    }
    await Promise.all(checks)
    return live
  }

  /** Walks the DHT for the providers of `cid`, each once, with its addresses in the peer store first. */
  private async walk (cid: CID, signal: AbortSignal, onProvider: (id: PeerId) => void): Promise<void> {
    const { node } = this.init
    const seen = new Set<string>()
    for await (const provider of node.contentRouting.findProviders(cid, { signal })) {
      const key = provider.id.toString()
      if (seen.has(key)) continue
      seen.add(key)
      if (provider.multiaddrs.length > 0) await node.peerStore.merge(provider.id, { multiaddrs: provider.multiaddrs }).catch(() => {})
      onProvider(provider.id)
    }
  }

  /** The peer's RTT, or undefined when it does not answer or is over `hardRttMs`. */
  async measure (peer: PeerId, hardRttMs: number, signal?: AbortSignal): Promise<Candidate | undefined> {
    const rttMs = await this.ping(peer, hardRttMs, signal)
    if (rttMs == null || rttMs > hardRttMs) return undefined
    return { id: peer, rttMs }
  }

  /**
   * One ping. A dial may come first, so by default the deadline allows a few round trips for
   * it; pings of connected peers pass a tighter one.
   */
  async ping (peer: PeerId, hardRttMs: number, signal?: AbortSignal, timeoutMs = hardRttMs * 4 + 1000): Promise<number | undefined> {
    const deadline = AbortSignal.timeout(timeoutMs)
    const pingSignal = signal != null ? AbortSignal.any([deadline, signal]) : deadline
    try {
      // Raced too: a ping stuck in a dial to a peer that is going away must not outlast its deadline.
      return await raceSignal(this.init.node.services.ping.ping(peer, { signal: pingSignal }), pingSignal)
    } catch (err) {
      this.init.log.debug({ peer: peer.toString(), err }, 'ping failed')
      return undefined
    }
  }
}
