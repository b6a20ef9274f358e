import { raceSignal } from './abort.js'
import { serviceCid } from './cids.js'
import type { PeerFinder } from './peer-finder.js'
import type { ServiceRecord } from './registry/record.js'

export interface InstanceCounterInit {
  finder: PeerFinder
  /** How long one answer is reused. Callers ask on every check; the DHT need not be walked each time. */
  cacheMs?: number
  /** How long the DHT walk for providers may take. */
  lookupTimeoutMs?: number
  /** How long each provider gets to answer its ping. */
  pingTimeoutMs?: number
  now?: () => number
}

/**
 * Counts the live instances of a service mesh-wide: the distinct providers of its service CID
 * in the DHT that answer a ping. The ping matters: a provider record outlives its instance
 * for up to the provider validity (10 min), so a culled instance would otherwise keep
 * counting, and a minInstances floor would be enforced against instances that are gone.
 */
export class InstanceCounter {
  /** The newest answer per service CID, with when its walk began. */
  private readonly cache = new Map<string, { startedAt: number, peers: ReadonlySet<string> }>()
  private readonly lookups = new Map<string, { startedAt: number, peers: Promise<ReadonlySet<string>> }>()
  private readonly cacheMs: number
  private readonly lookupTimeoutMs: number
  private readonly pingTimeoutMs: number
  private readonly now: () => number

  constructor (private readonly init: InstanceCounterInit) {
    this.cacheMs = init.cacheMs ?? 2000
    this.lookupTimeoutMs = init.lookupTimeoutMs ?? 1000
    this.pingTimeoutMs = init.pingTimeoutMs ?? 1000
    this.now = init.now ?? Date.now
  }

  /**
   * Live instances of the record's service, mesh-wide as far as the DHT shows. `maxAgeMs`:
   * reuse only an answer whose walk began at most this long ago (0: a walk that begins now).
   */
  async count (record: ServiceRecord, signal?: AbortSignal, maxAgeMs = this.cacheMs): Promise<number> {
    return (await this.providers(record, signal, maxAgeMs)).size
  }

  /** Peer IDs of the live instances (this node included when it provides the service). */
  async providers (record: ServiceRecord, signal?: AbortSignal, maxAgeMs = this.cacheMs): Promise<ReadonlySet<string>> {
    const cid = await serviceCid(record)
    const key = cid.toString()
    const now = this.now()
    const cached = this.cache.get(key)
    if (cached != null && now - cached.startedAt <= maxAgeMs) return cached.peers
    let lookup = this.lookups.get(key)
    if (lookup == null || now - lookup.startedAt > maxAgeMs) {
      // Shared by concurrent callers, so it runs on its own deadlines: one caller giving up
      // must not cut the walk short for the others.
      const started = { startedAt: now, peers: this.lookup(cid) }
      lookup = started
      this.lookups.set(key, started)
      void started.peers.then(peers => {
        const newest = this.cache.get(key)
        if (newest == null || newest.startedAt <= started.startedAt) this.cache.set(key, { startedAt: started.startedAt, peers })
      }).catch(() => {}).finally(() => { if (this.lookups.get(key) === started) this.lookups.delete(key) })
    }
    return await raceSignal(lookup.peers, signal)
  }

  private async lookup (cid: Awaited<ReturnType<typeof serviceCid>>): Promise<ReadonlySet<string>> {
    return await this.init.finder.liveProviders(cid, { walkMs: this.lookupTimeoutMs, pingMs: this.pingTimeoutMs })
  }
}
