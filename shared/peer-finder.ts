import type { PeerId } from '@libp2p/interface'
import type { CID } from 'multiformats/cid'
import { deadline } from './abort.js'
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
  async discover (cid: CID, hardRttMs: number, signal?: AbortSignal): Promise<Candidate[]> {
    const { node } = this.init
    const self = node.peerId.toString()
    const seen = new Set<string>()
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
      for await (const provider of node.contentRouting.findProviders(cid, { signal: walk.signal })) {
        const key = provider.id.toString()
        if (key === self || seen.has(key)) continue
        seen.add(key)
        if (answered) settle()
        if (provider.multiaddrs.length > 0) await node.peerStore.merge(provider.id, { multiaddrs: provider.multiaddrs })
        pings.push(this.measure(provider.id, hardRttMs, signal).then(found => {
          if (found != null && !answered) {
            answered = true
            settle()
          }
          return found
        }))
      }
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
    try {
      return await this.init.node.services.ping.ping(peer, { signal: signal != null ? AbortSignal.any([deadline, signal]) : deadline })
    } catch (err) {
      this.init.log.debug({ peer: peer.toString(), err }, 'ping failed')
      return undefined
    }
  }
}
