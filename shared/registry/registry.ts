import { setMaxListeners } from 'node:events'
import type { PrivateKey } from '@libp2p/interface'
import { deadline, raceSignal } from '../abort.js'
import { MeshError } from '../errors.js'
import { TokenBucket } from '../token-bucket.js'
import type { Logger } from '../log.js'
import type { MeshNode } from '../node.js'
import { SERVICE_NAME, type ServiceRecord, type ServiceRecordInput } from './record.js'
import { registryKey, registryKeyString, signRecord, verifySignedRecord, type VerifiedRecord } from './signed-record.js'

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
  resolveWithOrigin: (name: string, options?: { signal?: AbortSignal }) => Promise<ResolvedRecord | undefined>
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

interface SignedValue extends VerifiedRecord {
  value: Uint8Array
}

interface CacheEntry {
  resolved: ResolvedRecord | undefined
  expiresAt: number
}

/**
 * Resolves service names to registry records: the static records of the config file first
 * (the operator's word is final), else the DHT (validated, highest seq). Keeps the signed
 * values it uses alive in the DHT by putting them again, unchanged, before they expire, and at
 * once when a lookup finds the DHT has lost one (a restarted DHT node).
 */
export class Registry implements OriginRecordSource {
  private readonly node: MeshNode
  private readonly staticRecords: Map<string, ServiceRecord>
  private readonly allowedSigners: readonly string[]
  private readonly log: Logger
  private readonly ttlMs: number
  private readonly negativeTtlMs: number
  private readonly lookupTimeoutMs: number
  private readonly republishMs: number
  private readonly usedWindowMs: number
  private readonly maxCacheEntries: number
  private readonly maxConcurrentLookups: number
  private readonly lookupBudget: TokenBucket
  private readonly clock: () => number

  private readonly cache = new Map<string, CacheEntry>()
  /** The best signed value seen per name: what we serve when a lookup fails, and what we re-put. */
  private readonly known = new Map<string, SignedValue>()
  private readonly lastUsed = new Map<string, number>()
  /** When each name's lost value was last put back, so a DHT that keeps losing it is not hammered. */
  private readonly restoredAt = new Map<string, number>()
  private readonly inflight = new Map<string, Promise<CacheEntry>>()
  private controller?: AbortController
  private timer?: NodeJS.Timeout
  private republishing?: Promise<number>

  constructor (init: RegistryInit) {
    this.node = init.node
    this.staticRecords = init.staticRecords
    this.allowedSigners = [...init.allowedSigners]
    this.log = init.log
    this.ttlMs = init.ttlMs ?? DEFAULT_REGISTRY_TTL_MS
    this.negativeTtlMs = init.negativeTtlMs ?? 2_000
    this.lookupTimeoutMs = init.lookupTimeoutMs ?? 2_000
    this.republishMs = init.republishMs ?? 10 * 60_000
    this.usedWindowMs = init.usedWindowMs ?? 60 * 60_000
    this.maxCacheEntries = init.maxCacheEntries ?? 10_000
    this.maxConcurrentLookups = init.maxConcurrentLookups ?? 256
    this.clock = init.clock ?? Date.now
    const rate = init.lookupRate ?? { perSecond: 100, burst: 200 }
    this.lookupBudget = new TokenBucket(rate.burst, rate.perSecond, this.clock)
  }

  start (): void {
    if (this.controller != null) return
    this.controller = new AbortController()
    // Every lookup in flight links its deadline to this signal (and unlinks it when done).
    setMaxListeners(0, this.controller.signal)
    if (this.allowedSigners.length === 0) {
      this.log.warn('RegistryKeys is empty: DHT records signed by any key are used for routing, and allocators run only the static Services of their config')
    }
    this.schedule()
  }

  async stop (): Promise<void> {
    if (this.controller == null) return
    this.controller.abort(new Error('registry stopped'))
    this.controller = undefined
    clearTimeout(this.timer)
    this.timer = undefined
    await this.republishing?.catch(() => {})
    this.cache.clear()
    this.known.clear()
    this.lastUsed.clear()
    this.restoredAt.clear()
  }

  /** The record for NAME, or undefined when neither the config file nor the DHT has one. */
  async resolve (name: string, options: { signal?: AbortSignal } = {}): Promise<ServiceRecord | undefined> {
    return (await this.resolveWithOrigin(name, options))?.record
  }

  /** The record for NAME and where it came from (static, or the DHT and its signer). */
  async resolveWithOrigin (name: string, options: { signal?: AbortSignal } = {}): Promise<ResolvedRecord | undefined> {
    this.running()
    if (!SERVICE_NAME.test(name)) return undefined
    const pinned = this.staticRecords.get(name)
    if (pinned != null) return { record: pinned, origin: { source: 'static' } }
    const now = this.clock()
    // Only names with a record count as used: an unknown name a client made up must leave
    // nothing behind but a bounded cache entry.
    if (this.known.has(name)) this.lastUsed.set(name, now)
    const hit = this.cache.get(name)
    if (hit != null && hit.expiresAt > now) return hit.resolved
    const lookup = this.refresh(name)
    // Stale while revalidate: a record we already have is served at once while the DHT is
    // asked again in the background, so no request waits on a lookup once a service is known.
    if (hit?.resolved != null) {
      lookup.catch(() => {})
      return hit.resolved
    }
    const entry = await raceSignal(lookup, options.signal)
    if (entry.resolved != null) this.lastUsed.set(name, this.clock())
    return entry.resolved
  }

  /** One lookup of NAME at a time, shared by every caller. */
  private async refresh (name: string): Promise<CacheEntry> {
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
    const current = await this.fetch(name, check.signal).finally(check.clear)
    if (current != null && current.record.seq >= verified.record.seq && !sameBytes(current.value, value)) {
      throw new RegistryConflictError(`the DHT already holds seq=${current.record.seq} for '${name}'; publish with a higher seq`)
    }

    const putting = deadline(undefined, stopSignal, options.signal)
    const storedOn = await this.put(name, value, putting.signal).finally(putting.clear)
    const now = this.clock()
    this.remember(name, { ...verified, value })
    this.lastUsed.set(name, now)
    this.setCache(name, { resolved: dhtResolved(verified), expiresAt: now + this.ttlMs })
    this.log.debug({ key, seq: verified.record.seq, storedOn }, 'published registry record')
    return { key, record: verified.record, signer: verified.signer, storedOn }
  }

  /**
   * Puts again, unchanged, the signed values of names resolved within the used window, after
   * checking the DHT for a newer one (re-putting an old value would roll storers back).
   * Returns how many names were republished. Runs on a timer; public for tests.
   */
  async republishUsed (): Promise<number> {
    const stopSignal = this.running()
    const now = this.clock()
    let count = 0
    for (const [name, at] of [...this.lastUsed]) {
      if (now - at > this.usedWindowMs) {
        this.lastUsed.delete(name)
        this.known.delete(name)
        continue
      }
      if (!this.known.has(name)) continue
      try {
        const check = deadline(this.lookupTimeoutMs, stopSignal)
        const latest = await this.fetch(name, check.signal).finally(check.clear)
        if (latest != null) this.remember(name, latest)
        const best = this.known.get(name)
        if (best == null) continue
        if (latest != null) this.setCache(name, { resolved: dhtResolved(best), expiresAt: this.clock() + this.ttlMs })
        const putting = deadline(30_000, stopSignal)
        const storedOn = await this.put(name, best.value, putting.signal).finally(putting.clear)
        this.log.debug({ name, seq: best.record.seq, storedOn }, 'republished registry record')
        count++
      } catch (err) {
        if (stopSignal.aborted) break
        this.log.debug({ name, err }, 'republishing a registry record failed')
      }
    }
    return count
  }

  private running (): AbortSignal {
    if (this.controller == null) throw new Error('registry is not started')
    return this.controller.signal
  }

  private schedule (): void {
    // Jitter, so that nodes started together do not all republish at the same moment.
    const delay = this.republishMs * (0.9 + Math.random() * 0.2)
    this.timer = setTimeout(() => {
      this.republishing = this.republishUsed()
      void this.republishing
        .catch(err => this.log.debug({ err }, 'republish round failed'))
        .finally(() => {
          this.republishing = undefined
          if (this.controller != null) this.schedule()
        })
    }, delay)
    // Never the reason a process stays alive: the node it serves decides that.
    this.timer.unref()
  }

  private async lookup (name: string): Promise<CacheEntry> {
    const { signal, clear } = deadline(this.lookupTimeoutMs, this.running())
    const found = await this.fetch(name, signal).finally(clear)
    if (found != null) this.remember(name, found)
    const now = this.clock()
    // A failed lookup keeps serving the last good record: the DHT cannot delete records, so
    // "none found" after we saw one means the lookup fell short or the DHT lost it.
    const known = this.known.get(name)
    if (found == null && known != null) this.restore(name, known)
    const entry: CacheEntry = known != null
      ? { resolved: dhtResolved(known), expiresAt: now + (found != null ? this.ttlMs : this.negativeTtlMs) }
      : { resolved: undefined, expiresAt: now + this.negativeTtlMs }
    this.setCache(name, entry)
    return entry
  }

  /**
   * Puts back a value the DHT no longer returns (its only storer restarted empty, say), at
   * most once per republish interval per name, in the background.
   */
  private restore (name: string, known: SignedValue): void {
    const now = this.clock()
    const last = this.restoredAt.get(name)
    if (last != null && now - last < Math.min(this.republishMs, 60_000)) return
    this.restoredAt.set(name, now)
    bound(this.restoredAt, this.maxCacheEntries)
    const stopSignal = this.running()
    const putting = deadline(30_000, stopSignal)
    this.put(name, known.value, putting.signal).then(storedOn => {
      this.log.info({ name, seq: known.record.seq, storedOn }, 'the DHT had lost a registry record in use: put it back')
    }, err => {
      if (!stopSignal.aborted) this.log.debug({ name, err }, 'putting back a lost registry record failed')
    }).finally(putting.clear)
  }

  /**
   * The best valid value the DHT returns for NAME, or undefined. Reads kad-dht's events
   * rather than contentRouting.get: that throws away every answer when the query times out or
   * when sending a correction to a stale peer fails, while the answers themselves are good.
   */
  private async fetch (name: string, signal: AbortSignal): Promise<SignedValue | undefined> {
    const key = registryKey(name)
    const candidates: Uint8Array[] = []
    try {
      for await (const event of this.node.services.dht.get(key, { signal })) {
        if (event.name === 'VALUE') {
          candidates.push(event.value)
          break
        }
        if (event.name === 'PEER_RESPONSE' && event.record != null) candidates.push(event.record.value)
      }
    } catch (err) {
      this.log.debug({ name, err, answers: candidates.length }, 'registry lookup ended early')
    }

    let best: SignedValue | undefined
    const seen = new Set<string>()
    for (const value of candidates) {
      const id = Buffer.from(value).toString('base64')
      if (seen.has(id)) continue
      seen.add(id)
      try {
        const verified = await verifySignedRecord(key, value, this.allowedSigners)
        if (best == null || verified.record.seq > best.record.seq) best = { ...verified, value }
      } catch (err) {
        this.log.debug({ name, err }, 'ignored an invalid registry value')
      }
    }
    this.log.debug({ name, seq: best?.record.seq, answers: candidates.length }, 'registry lookup')
    return best
  }

  /** Puts VALUE under NAME's key; returns how many peers confirmed storing it. */
  private async put (name: string, value: Uint8Array, signal: AbortSignal): Promise<number> {
    const stored = new Set<string>()
    for await (const event of this.node.services.dht.put(registryKey(name), value, { signal })) {
      if (event.name === 'PEER_RESPONSE' && event.messageName === 'PUT_VALUE' && event.record != null && sameBytes(event.record.value, value)) {
        stored.add(event.from.toString())
      }
    }
    return stored.size
  }

  /** Seq never goes backwards: a stale peer's answer must not replace a newer record. */
  private remember (name: string, candidate: SignedValue): void {
    const current = this.known.get(name)
    if (current == null || candidate.record.seq > current.record.seq) this.known.set(name, candidate)
    bound(this.known, this.maxCacheEntries)
    bound(this.lastUsed, this.maxCacheEntries)
  }

  private setCache (name: string, entry: CacheEntry): void {
    this.cache.delete(name)
    this.cache.set(name, entry)
    if (this.cache.size <= this.maxCacheEntries) return
    const now = this.clock()
    for (const [n, e] of this.cache) if (e.expiresAt <= now) this.cache.delete(n)
    // Still full of live entries: drop the oldest.
    bound(this.cache, this.maxCacheEntries)
  }
}

function dhtResolved (value: VerifiedRecord): ResolvedRecord {
  return { record: value.record, origin: { source: 'dht', signer: value.signer } }
}

/** Drops the oldest entries (Map keeps insertion order) beyond `max`. */
function bound (map: Map<string, unknown>, max: number): void {
  while (map.size > max) {
    const oldest = map.keys().next().value
    if (oldest == null) break
    map.delete(oldest)
  }
}

function sameBytes (a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && Buffer.compare(a, b) === 0
}
