import { setMaxListeners } from 'node:events'
import type { PrivateKey } from '@libp2p/interface'
import { deadline, raceSignal } from '../abort.js'
import { MeshError } from '../errors.js'
import { TokenBucket } from '../token-bucket.js'
import type { Logger } from '../log.js'
import type { MeshNode } from '../node.js'
import { DhtRecords, sameBytes } from './dht-records.js'
import { RecordCache, type CacheEntry } from './record-cache.js'
import { SERVICE_NAME, type ServiceRecord, type ServiceRecordInput } from './record.js'
import { Republisher } from './republisher.js'
import { registryKeyString, signRecord, verifySignedRecord, type VerifiedRecord } from './signed-record.js'

/** Where a resolved record came from: the operator's config, or the DHT (and who signed it). */
export type RecordOrigin = { source: 'static' } | { source: 'dht', signer: string }

export interface ResolvedRecord {
  record: ServiceRecord
  origin: RecordOrigin
}

/** What resolves service names to records: the Registry, or a test's stand-in. */
export interface RecordSource {
  resolve: (name: string, options?: { signal?: AbortSignal }) => Promise<ServiceRecord | undefined>
}

/** A RecordSource that also tells where each record came from, for the allocator's trust rule. */
export interface OriginRecordSource extends RecordSource {
  resolveWithOrigin: (name: string, options?: { signal?: AbortSignal, minSeq?: number }) => Promise<ResolvedRecord | undefined>
}

export interface RegistryInit {
  node: MeshNode
  /** Records from the config file: the operator's own, never overridden by the DHT. */
  staticRecords: Map<string, ServiceRecord>
  /** Peer IDs allowed to sign records (RegistryKeys); empty: any signer. */
  allowedSigners: readonly string[]
  log: Logger
  /** How long a record found in the DHT is used before it is looked up again. */
  ttlMs?: number
  /** How long "the DHT has none" is believed (the static record, or nothing, is served meanwhile). */
  negativeTtlMs?: number
  /** One DHT lookup's time limit; what has arrived by then is used. */
  lookupTimeoutMs?: number
  /** How often records in use are put again, so they outlive their author's `registry put`. */
  republishMs?: number
  /** Records resolved within this window are republished; older ones are forgotten. */
  usedWindowMs?: number
  /** Most names to cache; bounds memory when requests name random services. */
  maxCacheEntries?: number
  /** Most DHT lookups at once; beyond it a name not cached is answered 503 (clients pick names). */
  maxConcurrentLookups?: number
  /**
   * DHT lookups of names not cached, per second (and at once, after a quiet spell): a client
   * naming made-up services must not turn each into a walk over the mesh.
   */
  lookupRate?: { perSecond: number, burst: number }
  clock?: () => number
}

/** How long a resolved record is cached. */
export const DEFAULT_REGISTRY_TTL_MS = 60_000

export interface PublishResult {
  key: string
  record: ServiceRecord
  signer: string
  /** How many peers confirmed they stored the value. */
  storedOn: number
}

/** Publishing would replace a newer record in the DHT (the DHT keeps whatever was put last). */
export class RegistryConflictError extends Error {
  override name = 'RegistryConflictError'
}

/**
 * Resolves service names to registry records: the static records of the config file first
 * (the operator's word is final), else the DHT (validated, highest seq). Keeps the signed
 * values it uses alive in the DHT by putting them again, unchanged, before they expire, and at
 * once when a lookup finds the DHT has lost one (a restarted DHT node).
 */
export class Registry implements OriginRecordSource {
  private readonly staticRecords: Map<string, ServiceRecord>
  private readonly allowedSigners: readonly string[]
  private readonly log: Logger
  private readonly ttlMs: number
  private readonly negativeTtlMs: number
  private readonly lookupTimeoutMs: number
  private readonly maxConcurrentLookups: number
  private readonly lookupBudget: TokenBucket
  private readonly clock: () => number
  private readonly dht: DhtRecords
  private readonly cache: RecordCache<ResolvedRecord>
  private readonly republisher: Republisher

  private readonly inflight = new Map<string, Promise<CacheEntry<ResolvedRecord>>>()
  private controller?: AbortController

  constructor (init: RegistryInit) {
    this.staticRecords = init.staticRecords
    this.allowedSigners = [...init.allowedSigners]
    this.log = init.log
    this.ttlMs = init.ttlMs ?? DEFAULT_REGISTRY_TTL_MS
    this.negativeTtlMs = init.negativeTtlMs ?? 2_000
    this.lookupTimeoutMs = init.lookupTimeoutMs ?? 2_000
    this.maxConcurrentLookups = init.maxConcurrentLookups ?? 256
    this.clock = init.clock ?? Date.now
    // Plenty for the names a host's apps use (a name is looked up again once a minute at most;
    // the burst covers a proxy's first requests), and each made-up name a client sends beyond
    // it costs the mesh no walk. A walk allocates ~0.4 MB in the proxy (kad-dht's query and
    // routing-table updates, peer store merges; heap sampling profile of a 40,000-name flood)
    // and lives long enough to reach the old generation: at 100/s, 20,000 made-up names grew
    // a proxy's RSS by ~115 MB of walk garbage, at 20/s by 12–47 MB, at 10/s by 14–22 MB
    // (12–40 MB beside a CI run).
    const rate = init.lookupRate ?? { perSecond: 10, burst: 50 }
    this.lookupBudget = new TokenBucket(rate.burst, rate.perSecond, this.clock)
    const maxCacheEntries = init.maxCacheEntries ?? 10_000
    this.dht = new DhtRecords(init.node, this.allowedSigners, this.log)
    this.cache = new RecordCache(maxCacheEntries, this.clock)
    this.republisher = new Republisher({
      dht: this.dht,
      log: this.log,
      clock: this.clock,
      republishMs: init.republishMs ?? 10 * 60_000,
      usedWindowMs: init.usedWindowMs ?? 60 * 60_000,
      lookupTimeoutMs: this.lookupTimeoutMs,
      maxEntries: maxCacheEntries,
      onRefreshed: (name, best) => { this.cache.set(name, { resolved: dhtResolved(best), expiresAt: this.clock() + this.ttlMs }) }
    })
  }

  start (): void {
    if (this.controller != null) return
    this.controller = new AbortController()
    // Every lookup in flight links its deadline to this signal (and unlinks it when done).
    setMaxListeners(0, this.controller.signal)
    if (this.allowedSigners.length === 0) {
      this.log.warn('RegistryKeys is empty: DHT records signed by any key are used for routing, and allocators run only the static Services of their config')
    }
    this.republisher.start(this.controller.signal)
  }

  async stop (): Promise<void> {
    if (this.controller == null) return
    this.controller.abort(new Error('registry stopped'))
    this.controller = undefined
    await this.republisher.stop()
    this.cache.clear()
  }

  /** The record for NAME, or undefined when neither the config file nor the DHT has one. */
  async resolve (name: string, options: { signal?: AbortSignal } = {}): Promise<ServiceRecord | undefined> {
    return (await this.resolveWithOrigin(name, options))?.record
  }

  /** The record for NAME and where it came from (static, or the DHT and its signer). */
  async resolveWithOrigin (name: string, options: { signal?: AbortSignal, minSeq?: number } = {}): Promise<ResolvedRecord | undefined> {
    this.running()
    if (!SERVICE_NAME.test(name)) return undefined
    const pinned = this.staticRecords.get(name)
    if (pinned != null) return { record: pinned, origin: { source: 'static' } }
    const now = this.clock()
    // Kept alive in the DHT while in use; a made-up name leaves only a bounded cache entry.
    this.republisher.used(name, now)
    const hit = this.cache.get(name)
    // Unless it is older than the caller knows exists (a deploy right after its put): then
    // the caller waits for the DHT.
    const usable = options.minSeq == null || (hit?.resolved?.record.seq ?? -1) >= options.minSeq
    if (usable && hit != null && hit.expiresAt > now) return hit.resolved
    const lookup = this.refresh(name)
    // Stale while revalidate: a record we already have is served at once while the DHT is
    // asked again in the background, so no request waits on a lookup once a service is known.
    if (usable && hit?.resolved != null) {
      lookup.catch(() => {})
      return hit.resolved
    }
    const entry = await raceSignal(lookup, options.signal)
    if (entry.resolved != null) this.republisher.used(name, this.clock())
    return entry.resolved
  }

  /** One lookup of NAME at a time, shared by every caller. */
  private async refresh (name: string): Promise<CacheEntry<ResolvedRecord>> {
    let lookup = this.inflight.get(name)
    if (lookup == null) {
      if (this.inflight.size >= this.maxConcurrentLookups || !this.lookupBudget.tryTake()) {
        throw new MeshError(503, 'registry_busy', `too many registry lookups in progress to look up '${name}': try again`)
      }
      lookup = this.lookup(name).finally(() => this.inflight.delete(name))
      this.inflight.set(name, lookup)
    }
    return await lookup
  }

  /**
   * Signs RECORD and puts it in the DHT. Refuses to replace a newer record: kad-dht peers
   * store whatever is put last, so a lower seq would silently roll the service back.
   */
  async publish (record: ServiceRecord | ServiceRecordInput, privateKey: PrivateKey, options: { signal?: AbortSignal } = {}): Promise<PublishResult> {
    const stopSignal = this.running()
    const value = await signRecord(record, privateKey)
    const key = registryKeyString(record.name)
    // kad-dht stores our own put locally without validating it: check here what peers will check.
    const verified = await verifySignedRecord(key, value, this.allowedSigners)
    const name = verified.record.name

    const check = deadline(this.lookupTimeoutMs, stopSignal, options.signal)
    const current = await this.dht.fetch(name, check.signal).finally(check.clear)
    if (current != null && current.record.seq >= verified.record.seq && !sameBytes(current.value, value)) {
      throw new RegistryConflictError(`the DHT already holds seq=${current.record.seq} for '${name}'; publish with a higher seq`)
    }

    const putting = deadline(undefined, stopSignal, options.signal)
    const storedOn = await this.dht.put(name, value, putting.signal).finally(putting.clear)
    const now = this.clock()
    this.republisher.remember(name, { ...verified, value })
    this.republisher.used(name, now)
    this.cache.set(name, { resolved: dhtResolved(verified), expiresAt: now + this.ttlMs })
    this.log.debug({ key, seq: verified.record.seq, storedOn }, 'published registry record')
    return { key, record: verified.record, signer: verified.signer, storedOn }
  }

  /**
   * Puts again, unchanged, the values of the names used lately (see Republisher); returns how
   * many. Runs on a timer; public for tests.
   */
  async republishUsed (): Promise<number> {
    return await this.republisher.republishUsed(this.running())
  }

  private running (): AbortSignal {
    if (this.controller == null) throw new Error('registry is not started')
    return this.controller.signal
  }

  private async lookup (name: string): Promise<CacheEntry<ResolvedRecord>> {
    const { signal, clear } = deadline(this.lookupTimeoutMs, this.running())
    const found = await this.dht.fetch(name, signal).finally(clear)
    if (found != null) this.republisher.remember(name, found)
    const now = this.clock()
    // A failed lookup keeps serving the last good record: the DHT cannot delete records, so
    // "none found" after we saw one means the lookup fell short or the DHT lost it.
    const known = this.republisher.best(name)
    if (found == null && known != null) this.republisher.restore(name, known, this.running())
    const entry: CacheEntry<ResolvedRecord> = known != null
      ? { resolved: dhtResolved(known), expiresAt: now + (found != null ? this.ttlMs : this.negativeTtlMs) }
      : { resolved: undefined, expiresAt: now + this.negativeTtlMs }
    this.cache.set(name, entry)
    return entry
  }
}

function dhtResolved (value: VerifiedRecord): ResolvedRecord {
  return { record: value.record, origin: { source: 'dht', signer: value.signer } }
}
