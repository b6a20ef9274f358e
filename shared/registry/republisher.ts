import { deadline } from '../abort.js'
import type { Logger } from '../log.js'
import type { DhtRecords, SignedValue } from './dht-records.js'
import { bound } from './record-cache.js'

export interface RepublisherInit {
  dht: DhtRecords
  log: Logger
  clock: () => number
  /** How often values in use are put again. */
  republishMs: number
  /** Values used within this window are republished; older ones are forgotten. */
  usedWindowMs: number
  /** One DHT lookup's time limit, before a value is put again. */
  lookupTimeoutMs: number
  /** Most names to keep; bounds memory like the registry's cache. */
  maxEntries: number
  /** A republish round found what the DHT holds for NAME, and BEST is now the best value: cache it. */
  onRefreshed: (name: string, best: SignedValue) => void
}

/**
 * The signed values the registry uses, kept alive in the DHT so that they outlive their
 * author's `registry put`: put again, unchanged, before they expire, and at once when a lookup
 * finds the DHT has lost one (a restarted DHT node).
 */
export class Republisher {
  /** The best signed value seen per name: what is served when a lookup fails, and what is re-put. */
  private readonly known = new Map<string, SignedValue>()
  private readonly lastUsed = new Map<string, number>()
  /** When each name's lost value was last put back, so a DHT that keeps losing it is not hammered. */
  private readonly restoredAt = new Map<string, number>()
  private timer?: NodeJS.Timeout
  private republishing?: Promise<number>

  constructor (private readonly init: RepublisherInit) {}

  /** Republishes on a timer until STOP aborts (and stop() is called). */
  start (stop: AbortSignal): void {
    this.schedule(stop)
  }

  async stop (): Promise<void> {
    clearTimeout(this.timer)
    this.timer = undefined
    await this.republishing?.catch(() => {})
    this.known.clear()
    this.lastUsed.clear()
    this.restoredAt.clear()
  }

  best (name: string): SignedValue | undefined {
    return this.known.get(name)
  }

  /** Seq never goes backwards: a stale peer's answer must not replace a newer record. */
  remember (name: string, candidate: SignedValue): void {
    const current = this.known.get(name)
    if (current == null || candidate.record.seq > current.record.seq) this.known.set(name, candidate)
    bound(this.known, this.init.maxEntries)
    bound(this.lastUsed, this.init.maxEntries)
  }

  /**
   * Only names with a value count as used: an unknown name a client made up must leave
   * nothing behind here.
   */
  used (name: string, at: number): void {
    if (this.known.has(name)) this.lastUsed.set(name, at)
  }

  /**
   * Puts again, unchanged, the signed values of names used within the used window, after
   * checking the DHT for a newer one (re-putting an old value would roll storers back).
   * Returns how many names were republished.
   */
  async republishUsed (stop: AbortSignal): Promise<number> {
    const { dht, log, clock } = this.init
    const now = clock()
    let count = 0
    for (const [name, at] of [...this.lastUsed]) {
      if (now - at > this.init.usedWindowMs) {
        this.lastUsed.delete(name)
        this.known.delete(name)
        continue
      }
      if (!this.known.has(name)) continue
      try {
        const check = deadline(this.init.lookupTimeoutMs, stop)
        const latest = await dht.fetch(name, check.signal).finally(check.clear)
        if (latest != null) this.remember(name, latest)
        const best = this.known.get(name)
        if (best == null) continue
        if (latest != null) this.init.onRefreshed(name, best)
        const putting = deadline(30_000, stop)
        const storedOn = await dht.put(name, best.value, putting.signal).finally(putting.clear)
        log.debug({ name, seq: best.record.seq, storedOn }, 'republished registry record')
        count++
      } catch (err) {
        if (stop.aborted) break
        log.debug({ name, err }, 'republishing a registry record failed')
      }
    }
    return count
  }

  /**
   * Puts back a value the DHT no longer returns (its only storer restarted empty, say), at
   * most once per republish interval per name, in the background.
   */
  restore (name: string, known: SignedValue, stop: AbortSignal): void {
    const { dht, log } = this.init
    const now = this.init.clock()
    const last = this.restoredAt.get(name)
    if (last != null && now - last < Math.min(this.init.republishMs, 60_000)) return
    this.restoredAt.set(name, now)
    bound(this.restoredAt, this.init.maxEntries)
    const putting = deadline(30_000, stop)
    dht.put(name, known.value, putting.signal).then(storedOn => {
      log.info({ name, seq: known.record.seq, storedOn }, 'the DHT had lost a registry record in use: put it back')
    }, err => {
      if (!stop.aborted) log.debug({ name, err }, 'putting back a lost registry record failed')
    }).finally(putting.clear)
  }

  private schedule (stop: AbortSignal): void {
    // Jitter, so that nodes started together do not all republish at the same moment.
    const delay = this.init.republishMs * (0.9 + Math.random() * 0.2)
    this.timer = setTimeout(() => {
      this.republishing = this.republishUsed(stop)
      void this.republishing
        .catch(err => this.init.log.debug({ err }, 'republish round failed'))
        .finally(() => {
          this.republishing = undefined
          if (!stop.aborted) this.schedule(stop)
        })
    }, delay)
    // Never the reason a process stays alive: the node it serves decides that.
    this.timer.unref()
  }
}
