import { serviceCid } from '../shared/cids.js'
import { MeshError } from '../shared/errors.js'
import type { Logger } from '../shared/log.js'
import type { ServiceRecord } from '../shared/registry/record.js'
import type { Allocations } from './allocations.js'
import type { PeerId } from '@libp2p/interface'
import { PeerState, pickP2C, ServicePeers, type Level, type OutlierPolicy, type RequestOutcome, type RttLimits } from './peer-cache.js'
import type { PeerFinder } from '../shared/peer-finder.js'
import { LoadHandle } from './load-handle.js'

export type { RttLimits }

export interface RouterInit {
  finder: PeerFinder
  /** The config's Perf defaults, for records that name no RTTs. */
  defaults: RttLimits
  log: Logger
  /** Cold starts and better instances; none: no instance within the hard RTT is a 503. */
  allocations?: Allocations
  /** How long a request with no cached instance waits on the DHT before asking for a cold start too. */
  coldStartGraceMs?: number
  /**
   * Called when an instance is given up on: its pooled streams are to be closed, and with
   * `inFlight` (it stopped answering pings) the requests on them failed too, as they will not
   * be answered.
   */
  onPeerGone?: (peer: PeerId, options: { inFlight: boolean }) => void
  outliers?: OutlierPolicy
  /** How often cached peers are pinged (with ±20% jitter). */
  pingIntervalMs?: number
  /** How often the DHT is asked again for new instances of a service in use. */
  rediscoverMs?: number
  /** A service unused this long is forgotten (and its peers no longer pinged). */
  idleServiceMs?: number
  now?: () => number
  random?: () => number
}

interface ServiceEntry {
  record: ServiceRecord
  cid: string
  peers: ServicePeers
  /** Instances given up on (unreachable), until when: their provider records are not believed meanwhile. */
  gone: Map<string, number>
  lastUsed: number
  discoveredAt: number
  discovery?: Promise<void>
  improving: boolean
  improveFailures: number
  improveAfter: number
}

/** How long a request with no cached instance waits on the DHT before a cold start is asked for too. */
const COLD_START_GRACE_MS = 1_000
/** A request that waited this long for an instance is logged (a warning: clients notice). */
const SLOW_FIND_MS = 3_000
/** How often the DHT is asked again while a cold start is on its way (one walk at a time per service). */
const REDISCOVER_WHILE_STARTING_MS = 500

/**
 * How long an instance found unreachable is passed over by discovery. Its provider record
 * outlives it in the DHT (records cannot be withdrawn from other peers), and one that drains
 * still answers pings: believed at once, it would be picked again, and end the walk before its
 * replacement is found. Long enough to cover a drain, short enough for a blip to heal.
 */
const GONE_MS = 15_000
/** Instances remembered as gone, per service. */
const MAX_GONE = 64

/** First back-off after an attempt to find a better instance found none; doubles up to the cap. */
const IMPROVE_BACKOFF_MS = 5_000
const IMPROVE_BACKOFF_CAP_MS = 120_000

/**
 * Picks the instance each request goes to. Per service it keeps the instances it knows in a
 * peer cache (levels by RTT and reliability, kept fresh by a background ping loop) and picks
 * among the best level by power of two choices over a peak-EWMA cost. When nothing is within
 * the hard RTT it has an instance started; when the best is over the soft RTT it uses it and
 * asks, in the background, for a nearer one.
 */
export class Router {
  private readonly services = new Map<string, ServiceEntry>()
  private readonly cids = new WeakMap<ServiceRecord, string>()
  private readonly pingIntervalMs: number
  private readonly rediscoverMs: number
  private readonly idleServiceMs: number
  private readonly now: () => number
  private readonly random: () => number
  private timer: NodeJS.Timeout | undefined
  private pinging = false

  constructor (private readonly init: RouterInit) {
    this.pingIntervalMs = init.pingIntervalMs ?? 1000
    // Often enough that a scaled-up instance takes load well before an idle timeout culls it.
    this.rediscoverMs = init.rediscoverMs ?? 5_000
    this.idleServiceMs = init.idleServiceMs ?? 5 * 60_000
    this.now = init.now ?? Date.now
    this.random = init.random ?? Math.random
  }

  start (): void {
    this.schedule()
  }

  stop (): void {
    clearTimeout(this.timer)
    this.timer = undefined
    this.services.clear()
  }

  limits (record: ServiceRecord): RttLimits {
    return {
      softRttMs: record.softRttMs ?? this.init.defaults.softRttMs,
      hardRttMs: record.hardRttMs ?? this.init.defaults.hardRttMs
    }
  }

  /** The instance for one request, never one in `exclude`; a MeshError when there is none. */
  async pick (record: ServiceRecord, exclude: ReadonlySet<string> = new Set(), signal?: AbortSignal): Promise<PeerState> {
    const entry = await this.entryFor(record)
    const now = this.now()
    entry.lastUsed = now
    const candidates = entry.peers.bestLevel(exclude)
    if (candidates.length === 0) return await this.findOrStart(entry, exclude, signal)
    if (now - entry.discoveredAt > this.rediscoverMs) void this.discover(entry).catch(() => {})
    const chosen = pickP2C(candidates, now, this.random) as PeerState
    if (chosen.rttMs > entry.peers.limits.softRttMs) this.improve(entry, chosen.rttMs)
    return chosen
  }

  /** An instance for one request, held by the returned handle until it is released. */
  async acquire (record: ServiceRecord, exclude?: ReadonlySet<string>, signal?: AbortSignal): Promise<LoadHandle> {
    return new LoadHandle(await this.pick(record, exclude, signal), record, this)
  }

  /** Drops an instance that could not be reached; it returns only if the DHT offers it and it answers. */
  unreachable (record: ServiceRecord, peer: PeerState): void {
    const cid = this.cids.get(record)
    const entry = cid != null ? this.services.get(cid) : undefined
    if (entry != null) {
      entry.peers.remove(peer.key)
      entry.gone.delete(peer.key)
      entry.gone.set(peer.key, this.now() + GONE_MS)
      // Oldest first (insertion order): a churning service cannot grow the map.
      for (const key of entry.gone.keys()) {
        if (entry.gone.size <= MAX_GONE) break
        entry.gone.delete(key)
      }
    }
    this.init.onPeerGone?.(peer.id, { inFlight: false })
  }

  /** How a request to an instance went, for outlier detection. */
  report (record: ServiceRecord, peerKey: string, outcome: RequestOutcome): void {
    const cid = this.cids.get(record)
    const entry = cid != null ? this.services.get(cid) : undefined
    if (entry?.peers.outcome(peerKey, outcome) === 'ejected') {
      const peer = entry.peers.get(peerKey)
      this.init.log.warn({ service: record.name, peer: peerKey, ejections: peer?.ejections, untilMs: peer != null ? peer.ejectedUntil - this.now() : undefined }, 'instance ejected after failing requests in a row')
    }
  }

  /** The cache as JSON-friendly data, for `/peers` and metrics. */
  snapshot (): Array<{ service: string, limits: RttLimits, peers: Array<{ peer: string, level: Level, rttMs: number, lastRttMs: number, latencyMs: number, inflight: number, score: number }> }> {
    return [...this.services.values()].map(entry => ({
      service: entry.record.name,
      limits: entry.peers.limits,
      peers: entry.peers.all().map(p => ({ peer: p.key, level: p.level, rttMs: round(p.rttMs), lastRttMs: p.lastRttMs, latencyMs: round(p.latencyMs), inflight: p.inflight, score: p.score }))
    }))
  }

  levelCounts (): Array<{ service: string, counts: Record<Level, number> }> {
    return [...this.services.values()].map(entry => ({ service: entry.record.name, counts: entry.peers.countByLevel() }))
  }

  private async entryFor (record: ServiceRecord): Promise<ServiceEntry> {
    let cid = this.cids.get(record)
    if (cid == null) {
      cid = (await serviceCid(record)).toString()
      this.cids.set(record, cid)
    }
    let entry = this.services.get(cid)
    if (entry == null) {
      entry = { record, cid, peers: new ServicePeers(this.limits(record), this.now, this.init.outliers), gone: new Map(), lastUsed: this.now(), discoveredAt: 0, improving: false, improveFailures: 0, improveAfter: 0 }
      this.services.set(cid, entry)
    }
    return entry
  }

  /** Asks the DHT for instances and adds those within the hard RTT; one walk at a time per service. */
  private async discover (entry: ServiceEntry, signal?: AbortSignal): Promise<void> {
    entry.discovery ??= (async () => {
      try {
        const { record } = entry
        const now = this.now()
        for (const [key, until] of entry.gone) if (until <= now) entry.gone.delete(key)
        const skip = (id: PeerId): boolean => entry.gone.has(id.toString())
        const found = await this.init.finder.discover(await serviceCid(record), entry.peers.limits.hardRttMs, signal, { skip })
        for (const candidate of found) entry.peers.add(candidate.id, candidate.rttMs)
        entry.discoveredAt = this.now()
      } finally {
        entry.discovery = undefined
      }
    })()
    await entry.discovery
  }

  /**
   * No usable instance is cached: asks the DHT, and when that has found none within a grace
   * period, has one started at the same time, taking whichever comes first. A walk can take
   * seconds when a provider hangs (its pings time out one by one), and a request should not
   * wait that out before a replacement is even asked for.
   */
  private async findOrStart (entry: ServiceEntry, exclude: ReadonlySet<string>, signal?: AbortSignal): Promise<PeerState> {
    const began = this.now()
    try {
      return await this.findOrStartNow(entry, exclude, signal)
    } finally {
      // Seconds spent here are seconds a client waits: say so, with what there was to go on.
      const ms = this.now() - began
      if (ms >= SLOW_FIND_MS) this.init.log.warn({ service: entry.record.name, ms, cached: entry.peers.all().length, gone: entry.gone.size }, 'a request waited long for an instance')
    }
  }

  private async findOrStartNow (entry: ServiceEntry, exclude: ReadonlySet<string>, signal?: AbortSignal): Promise<PeerState> {
    const pickFound = (): PeerState | undefined => pickP2C(entry.peers.bestLevel(exclude), this.now(), this.random)
    const discovery = this.discover(entry, signal).then(pickFound)
    let timer: NodeJS.Timeout | undefined
    const grace = new Promise<'grace'>(resolve => { timer = setTimeout(() => { resolve('grace') }, this.init.coldStartGraceMs ?? COLD_START_GRACE_MS) })
    const first = await Promise.race([discovery, grace]).finally(() => { clearTimeout(timer) })
    if (first instanceof PeerState) return first
    this.init.log.debug({ service: entry.record.name }, 'no instance found within the grace period: asking for a cold start too')
    const started = this.coldStart(entry)
    let starting = true
    const startEnded = started.then(() => { starting = false }, () => { starting = false })
    // A replacement may be advertised while the cold start is on its way (a rolling restart,
    // an instance started for another client): the DHT is asked again until either has a peer.
    const found = (async (): Promise<PeerState> => {
      let peer = await discovery
      while (peer == null && starting && signal?.aborted !== true) {
        let wait: NodeJS.Timeout | undefined
        await Promise.race([new Promise(resolve => { wait = setTimeout(resolve, REDISCOVER_WHILE_STARTING_MS) }), startEnded])
        clearTimeout(wait)
        if (!starting) break
        await this.discover(entry, signal).catch(() => {})
        peer = pickFound()
      }
      return peer ?? await started
    })()
    // Whichever has a peer first; a cold start's failure stands only if the walks found nobody.
    return await Promise.any([found, started]).catch(async () => await started)
  }

  private async coldStart (entry: ServiceEntry): Promise<PeerState> {
    const { allocations } = this.init
    const { hardRttMs } = entry.peers.limits
    if (allocations == null) throw new MeshError(503, 'no_instance', `no instance of '${entry.record.name}' within its hard RTT of ${hardRttMs} ms`)
    const started = await allocations.coldStart(entry.record, hardRttMs)
    const peer = entry.peers.add(started.id, started.rttMs) ?? entry.peers.get(started.id.toString())
    if (peer == null) throw new MeshError(503, 'no_instance', `the new instance of '${entry.record.name}' is not within ${hardRttMs} ms`)
    return peer
  }

  /** In the background: at most one request for a nearer instance per service, backing off when none can be had. */
  private improve (entry: ServiceEntry, currentRttMs: number): void {
    const { allocations, log } = this.init
    if (allocations == null || entry.improving || this.now() < entry.improveAfter) return
    entry.improving = true
    allocations.improve(entry.record, entry.peers.limits, currentRttMs).then(found => {
      entry.peers.add(found.id, found.rttMs)
      entry.improveFailures = 0
      log.info({ service: entry.record.name, instance: found.id.toString(), rttMs: found.rttMs, replacedRttMs: Math.round(currentRttMs) }, 'started a nearer instance')
    }, (err: Error) => {
      entry.improveFailures++
      const backoff = Math.min(IMPROVE_BACKOFF_MS * 2 ** (entry.improveFailures - 1), IMPROVE_BACKOFF_CAP_MS)
      entry.improveAfter = this.now() + backoff
      log.info({ service: entry.record.name, rttMs: Math.round(currentRttMs), err, retryInMs: backoff }, 'no nearer instance to be had')
    }).finally(() => { entry.improving = false })
  }

  private schedule (): void {
    const jitter = 0.8 + this.random() * 0.4
    this.timer = setTimeout(() => { void this.pingAll().finally(() => { if (this.timer != null) this.schedule() }) }, this.pingIntervalMs * jitter)
    this.timer.unref()
  }

  /** Pings every cached peer of the services in use, all in parallel. */
  async pingAll (): Promise<void> {
    if (this.pinging) return
    this.pinging = true
    try {
      const now = this.now()
      const pings: Array<Promise<void>> = []
      for (const [cid, entry] of this.services) {
        if (now - entry.lastUsed > this.idleServiceMs) {
          this.services.delete(cid)
          continue
        }
        const { hardRttMs } = entry.peers.limits
        for (const peer of entry.peers.all()) {
          // Never more often than needed: a peer pinged moments ago (by discovery) waits.
          if (now - peer.lastPingAt < this.pingIntervalMs / 2) continue
          pings.push(this.init.finder.ping(peer.id, hardRttMs, undefined, Math.max(2 * hardRttMs, hardRttMs + 500)).then(rtt => {
            if (entry.peers.observePing(peer.key, rtt) === 'dropped') {
              if (rtt == null) this.init.onPeerGone?.(peer.id, { inFlight: true })
              this.init.log.info({ service: entry.record.name, peer: peer.key, rttMs: rtt ?? null, hardRttMs }, rtt == null ? 'instance stopped answering: dropped' : 'instance over the hard RTT: dropped')
            }
          }))
        }
      }
      await Promise.all(pings)
    } finally {
      this.pinging = false
    }
  }
}

function round (n: number): number {
  return Math.round(n * 10) / 10
}
