import type { PeerId } from '@libp2p/interface'

export interface RttLimits {
  softRttMs: number
  hardRttMs: number
}

/**
 * Levels, best first: meets the soft RTT and has kept meeting it (reliable) · meets it but not
 * yet for long (fresh) · over the soft RTT, used only when nothing better exists (removal).
 */
export type Level = 'reliable' | 'fresh' | 'removal'
export const LEVELS: readonly Level[] = ['reliable', 'fresh', 'removal']

/** Pings in a row within the soft RTT that make a peer reliable. */
const RELIABLE_AT = 3
/** Weight of a new RTT sample in the smoothed RTT. */
const RTT_ALPHA = 0.3
/** Peak-EWMA time constant (Linkerd's default): lower observations decay in over ~10 s. */
const DECAY_MS = 10_000
/** What an instance never measured is assumed to cost (Linkerd starts at 30 ms too). */
export const DEFAULT_LATENCY_MS = 30
const MIN_LATENCY_MS = 1
/** Answers of a newly known instance that are averaged rather than peak-held (see observeLatency). */
export const WARMUP_ANSWERS = 50
/**
 * Two latency estimates within this factor of each other count as equal (see pickP2C). Measured
 * on a busy 2-core host: one instance's answer times have a p99 of ~5× their median, so the
 * estimates of equal instances differ by up to ~2× from noise alone.
 */
export const LATENCY_TOLERANCE = 2

/**
 * Outlier detection, as Envoy does it: this many failed requests in a row (5xx answers,
 * timeouts) eject an instance for a while; each ejection lasts longer than the last (base ×
 * ejections, capped); and never more than a share of a service's instances is out at once.
 */
export interface OutlierPolicy {
  consecutiveFailures: number
  baseEjectionMs: number
  maxEjectionMs: number
  /** Share of the instances that may be ejected at once; one may always be. */
  maxEjectedShare: number
}

export const OUTLIER_DEFAULTS: OutlierPolicy = { consecutiveFailures: 5, baseEjectionMs: 30_000, maxEjectionMs: 300_000, maxEjectedShare: 0.5 }

/** What one request tells about the instance that served it. */
export type RequestOutcome = 'ok' | 'failed'

export class PeerState {
  readonly key: string
  /** Smoothed ping RTT (EWMA), ms. */
  rttMs: number
  lastRttMs: number
  /** Reliability: rises with each ping within the soft RTT, drops a level on one over it. */
  score: number
  lastPingAt: number
  /** Requests in flight to this peer. */
  inflight = 0
  /** Peak-EWMA latency estimate of its responses, ms. */
  latencyMs = DEFAULT_LATENCY_MS
  /** Failed requests since its last good answer (outlier detection). */
  consecutiveFailures = 0
  /** Times it was ejected; each ejection lasts longer. Forgotten after a long good spell. */
  ejections = 0
  /** Until when it is ejected (0: it is not). */
  ejectedUntil = 0
  private latencyAt: number
  private answers = 0

  constructor (readonly id: PeerId, rttMs: number, limits: RttLimits, now: number) {
    this.key = id.toString()
    this.rttMs = rttMs
    this.lastRttMs = rttMs
    this.score = rttMs <= limits.softRttMs ? 1 : 0
    this.lastPingAt = now
    this.latencyAt = now
  }

  get level (): Level {
    if (this.score >= RELIABLE_AT) return 'reliable'
    return this.score >= 1 ? 'fresh' : 'removal'
  }

  /**
   * Load-aware cost for power of two choices: latency estimate × (requests in flight + 1).
   * Estimates below 1 ms count as 1 ms, the resolution of our RTT measurements: on one host
   * sub-millisecond differences are scheduling noise, and letting them decide would pile the
   * load on whichever instance happened to answer a little faster.
   */
  cost (now: number): number {
    return this.latencyForCost(now) * (this.inflight + 1)
  }

  /**
   * The estimate as of `now`: one not renewed by an answer decays toward zero with the same
   * time constant (as in tower's peak-EWMA), so an instance avoided after a slow spell is
   * tried again after a while instead of never, however light the load.
   */
  latencyForCost (now: number): number {
    const idle = Math.max(0, now - this.latencyAt)
    return Math.max(this.latencyMs * Math.exp(-idle / DECAY_MS), MIN_LATENCY_MS)
  }

  /** Whether any answer of it was timed yet (else latencyMs is the default guess). */
  get measured (): boolean {
    return this.answers > 0
  }

  /**
   * Peak EWMA: an observation above the estimate replaces it at once (react to trouble fast);
   * lower ones decay into it with a ~10 s time constant (recover slowly).
   *
   * Except for a new instance's first answers, which are averaged (the default counting as one):
   * they pay one-off costs (cold JIT, first buffers, connection set-up), and peak-holding one of
   * those would mark the instance slow for tens of seconds — also an instance just started for
   * more capacity. One that is really slow still shows it within a couple of answers.
   */
  observeLatency (ms: number, now: number): void {
    this.answers++
    if (this.answers <= WARMUP_ANSWERS) {
      this.latencyMs += (ms - this.latencyMs) / (this.answers + 1)
    } else if (ms >= this.latencyMs) {
      this.latencyMs = ms
    } else {
      const weight = Math.exp(-Math.max(0, now - this.latencyAt) / DECAY_MS)
      this.latencyMs = this.latencyMs * weight + ms * (1 - weight)
    }
    this.latencyAt = now
  }
}

/** The outcome of one ping, for the peer's level. */
export type PingVerdict = 'kept' | 'dropped'

/**
 * The known instances of one service with their RTTs and levels (the Go original's pcache,
 * done better): a ping over the hard RTT, or none at all, drops a peer at once; one over the
 * soft RTT drops it a level; pings within it raise it until it is reliable.
 */
export class ServicePeers {
  private readonly peers = new Map<string, PeerState>()

  constructor (readonly limits: RttLimits, private readonly now: () => number, private readonly outliers: OutlierPolicy = OUTLIER_DEFAULTS) {}

  /**
   * Records how a request to KEY went. Returns 'ejected' when this failure ejected it: then it
   * takes no requests until its ejection ends (it stays cached and pinged meanwhile).
   */
  outcome (key: string, outcome: RequestOutcome): 'ejected' | undefined {
    const peer = this.peers.get(key)
    if (peer == null) return undefined
    const now = this.now()
    if (outcome === 'ok') {
      peer.consecutiveFailures = 0
      // A long good spell since the last ejection ends: the next one starts short again.
      if (peer.ejections > 0 && peer.ejectedUntil !== 0 && now - peer.ejectedUntil > this.outliers.maxEjectionMs) {
        peer.ejections = 0
        peer.ejectedUntil = 0
      }
      return undefined
    }
    peer.consecutiveFailures++
    if (peer.consecutiveFailures < this.outliers.consecutiveFailures || peer.ejectedUntil > now) return undefined
    let ejected = 0
    for (const other of this.peers.values()) if (other.ejectedUntil > now) ejected++
    if (ejected + 1 > Math.max(1, Math.floor(this.peers.size * this.outliers.maxEjectedShare))) return undefined
    peer.ejections++
    peer.ejectedUntil = now + Math.min(this.outliers.baseEjectionMs * peer.ejections, this.outliers.maxEjectionMs)
    peer.consecutiveFailures = 0
    return 'ejected'
  }

  get size (): number {
    return this.peers.size
  }

  all (): PeerState[] {
    return [...this.peers.values()]
  }

  get (key: string): PeerState | undefined {
    return this.peers.get(key)
  }

  /** Adds a newly found peer with its first RTT, or records the RTT of a known one. */
  add (id: PeerId, rttMs: number): PeerState | undefined {
    const known = this.peers.get(id.toString())
    if (known != null) {
      this.observePing(known.key, rttMs)
      return this.peers.get(known.key)
    }
    if (rttMs > this.limits.hardRttMs) return undefined
    const peer = new PeerState(id, rttMs, this.limits, this.now())
    this.peers.set(peer.key, peer)
    return peer
  }

  /** Records a ping: `undefined` means no answer. */
  observePing (key: string, rttMs: number | undefined): PingVerdict {
    const peer = this.peers.get(key)
    if (peer == null) return 'dropped'
    if (rttMs == null || rttMs > this.limits.hardRttMs) {
      this.peers.delete(key)
      return 'dropped'
    }
    peer.lastRttMs = rttMs
    peer.rttMs = peer.rttMs * (1 - RTT_ALPHA) + rttMs * RTT_ALPHA
    peer.lastPingAt = this.now()
    if (rttMs <= this.limits.softRttMs) {
      peer.score = Math.min(peer.score + 1, RELIABLE_AT)
    } else {
      // Down one level: reliable → fresh, fresh → removal.
      peer.score = peer.score >= RELIABLE_AT ? 1 : 0
    }
    return 'kept'
  }

  remove (key: string): void {
    this.peers.delete(key)
  }

  /** The peers of the best level that has any, without those in `exclude` or ejected. */
  bestLevel (exclude?: ReadonlySet<string>): PeerState[] {
    // One pass per request (this is on the request path): keep the peers of the best level seen.
    let best: PeerState[] = []
    let bestRank = LEVELS.length
    let now: number | undefined
    for (const peer of this.peers.values()) {
      if (exclude?.has(peer.key) === true) continue
      if (peer.ejectedUntil !== 0 && peer.ejectedUntil > (now ??= this.now())) continue
      const rank = LEVELS.indexOf(peer.level)
      if (rank < bestRank) {
        best = [peer]
        bestRank = rank
      } else if (rank === bestRank) {
        best.push(peer)
      }
    }
    return best
  }

  countByLevel (): Record<Level, number> {
    const counts: Record<Level, number> = { reliable: 0, fresh: 0, removal: 0 }
    for (const peer of this.peers.values()) counts[peer.level]++
    return counts
  }
}

/**
 * Power of two choices: two distinct random peers, the cheaper one wins. Spreads load evenly
 * and away from slow or busy peers without any shared state (Linkerd's balancer).
 *
 * A peak-EWMA estimate is an upper envelope of noisy answer times, so two estimates within
 * LATENCY_TOLERANCE of each other are taken as equal and the peer with fewer requests in flight
 * wins (then the first drawn, at random); only a clearer difference weighs latency into the
 * choice. Ranking on noise alone piled the load on whichever instance had the quietest ten
 * seconds: splits of 19/26/55 over three equal instances, where this gives 33 ± 1.5% each.
 *
 * An instance never measured wins when drawn while idle: one answer tells more than the
 * default guess, and beside a fast instance under light load that guess would keep a new
 * instance (one just started for more capacity) from ever being tried.
 */
export function pickP2C (peers: readonly PeerState[], now: number, random: () => number = Math.random): PeerState | undefined {
  if (peers.length <= 1) return peers[0]
  const a = Math.floor(random() * peers.length)
  let b = Math.floor(random() * (peers.length - 1))
  if (b >= a) b++
  const first = peers[a]
  const second = peers[b]
  if (!first.measured && first.inflight === 0) return first
  if (!second.measured && second.inflight === 0) return second
  const firstLatency = first.latencyForCost(now)
  const secondLatency = second.latencyForCost(now)
  if (firstLatency <= secondLatency * LATENCY_TOLERANCE && secondLatency <= firstLatency * LATENCY_TOLERANCE) {
    return second.inflight < first.inflight ? second : first
  }
  return second.cost(now) < first.cost(now) ? second : first
}
