export interface CacheEntry<T> {
  /** Undefined: the lookup found nothing, believed until it expires too. */
  resolved: T | undefined
  expiresAt: number
}

/**
 * Lookup answers by name until they expire, at most `max` of them: clients pick the names,
 * and each made-up one would otherwise stay in memory.
 */
export class RecordCache<T> {
  private readonly entries = new Map<string, CacheEntry<T>>()

  constructor (private readonly max: number, private readonly clock: () => number) {}

  /** The entry for NAME, expired or not: an expired answer is still worth serving while a lookup runs. */
  get (name: string): CacheEntry<T> | undefined {
    return this.entries.get(name)
  }

  set (name: string, entry: CacheEntry<T>): void {
    // Re-inserted, so that it counts as the newest.
    this.entries.delete(name)
    this.entries.set(name, entry)
    if (this.entries.size <= this.max) return
    const now = this.clock()
    for (const [n, e] of this.entries) if (e.expiresAt <= now) this.entries.delete(n)
    // Still full of live entries: drop the oldest.
    bound(this.entries, this.max)
  }

  clear (): void {
    this.entries.clear()
  }
}

/** Drops the oldest entries (Map keeps insertion order) beyond `max`. */
export function bound (map: Map<string, unknown>, max: number): void {
  while (map.size > max) {
    const oldest = map.keys().next().value
    if (oldest == null) break
    map.delete(oldest)
  }
}
