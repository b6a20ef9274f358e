import type { PeerId } from '@libp2p/interface'
import { serviceCid } from '../shared/cids.js'
import { MeshError } from '../shared/errors.js'
import type { ServiceRecord } from '../shared/registry/record.js'
import type { ColdStarter } from './cold-start.js'
import type { Candidate, PeerFinder } from './peer-finder.js'

export interface RttLimits {
  softRttMs: number
  hardRttMs: number
}

export interface RouterInit {
  finder: PeerFinder
  /** The config's Perf defaults, for records that name no RTTs. */
  defaults: RttLimits
  /** Starts an instance when none is within the hard RTT; none: answer 503. */
  coldStarter?: ColdStarter
  /** How long a discovered set of instances is used before the DHT is asked again. */
  cacheTtlMs?: number
  now?: () => number
}

interface CachedInstances {
  candidates: Candidate[]
  expiresAt: number
}

/**
 * Picks the instance a request goes to: the nearest known instance within the service's
 * hard RTT. Instances are discovered once and cached, so the DHT is not walked per request;
 * a failed instance is dropped and the next request looks again.
 */
export class Router {
  private readonly cache = new Map<string, CachedInstances>()
  private readonly discoveries = new Map<string, Promise<Candidate[]>>()
  private readonly keys = new WeakMap<ServiceRecord, string>()
  private readonly cacheTtlMs: number
  private readonly now: () => number

  constructor (private readonly init: RouterInit) {
    this.cacheTtlMs = init.cacheTtlMs ?? 30_000
    this.now = init.now ?? Date.now
  }

  limits (record: ServiceRecord): RttLimits {
    return {
      softRttMs: record.softRttMs ?? this.init.defaults.softRttMs,
      hardRttMs: record.hardRttMs ?? this.init.defaults.hardRttMs
    }
  }

  /** The best instance not in `exclude`; a MeshError 503 when there is none within the hard RTT. */
  async pick (record: ServiceRecord, exclude: ReadonlySet<string> = new Set(), signal?: AbortSignal): Promise<Candidate> {
    const key = await this.keyOf(record)
    const cached = this.cache.get(key)
    let candidates = cached != null && cached.expiresAt > this.now() ? cached.candidates : undefined
    if (candidates == null || candidates.every(c => exclude.has(c.id.toString()))) {
      candidates = await this.discover(record, key, signal)
    }
    const best = candidates.find(c => !exclude.has(c.id.toString()))
    if (best != null) return best
    const { hardRttMs } = this.limits(record)
    if (this.init.coldStarter == null) throw new MeshError(503, 'no_instance', `no instance of '${record.name}' within its hard RTT of ${hardRttMs} ms`)
    const started = await this.init.coldStarter.start(record, hardRttMs)
    const entry = this.cache.get(key)
    const known = entry?.candidates.filter(c => !c.id.equals(started.id)) ?? []
    this.cache.set(key, { candidates: [...known, started].sort((a, b) => a.rttMs - b.rttMs), expiresAt: this.now() + this.cacheTtlMs })
    return started
  }

  /** Forgets an instance that failed a request; it comes back only if the DHT offers it again. */
  async markFailed (record: ServiceRecord, peer: PeerId): Promise<void> {
    const entry = this.cache.get(await this.keyOf(record))
    if (entry != null) entry.candidates = entry.candidates.filter(c => !c.id.equals(peer))
  }

  private async discover (record: ServiceRecord, key: string, signal?: AbortSignal): Promise<Candidate[]> {
    // Concurrent requests for one service share one DHT walk.
    let discovery = this.discoveries.get(key)
    if (discovery == null) {
      discovery = (async () => {
        const { finder } = this.init
        const cid = await serviceCid(record)
        const candidates = await finder.discover(cid, this.limits(record).hardRttMs, signal)
        this.cache.set(key, { candidates, expiresAt: this.now() + (candidates.length > 0 ? this.cacheTtlMs : 0) })
        return candidates
      })().finally(() => this.discoveries.delete(key))
      this.discoveries.set(key, discovery)
    }
    return await discovery
  }

  /** Records are cached objects, so their CIDs are computed once, not per request. */
  private async keyOf (record: ServiceRecord): Promise<string> {
    let key = this.keys.get(record)
    if (key == null) {
      key = (await serviceCid(record)).toString()
      this.keys.set(record, key)
    }
    return key
  }
}
