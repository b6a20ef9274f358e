import type { PeerId } from '@libp2p/interface'
import { raceSignal } from './abort.js'
import { serviceCid } from './cids.js'
import type { Logger } from './log.js'
import type { MeshNode } from './node.js'
import type { ServiceRecord } from './registry/record.js'

export interface InstanceCounterInit {
  node: MeshNode
  log: Logger
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
    const { node, log } = this.init
    const self = node.peerId.toString()
    const seen = new Set<string>()
    const live = new Set<string>()
    const checks: Array<Promise<void>> = []
    try {
      for await (const provider of node.contentRouting.findProviders(cid, { signal: AbortSignal.timeout(this.lookupTimeoutMs) })) {
        const id = provider.id.toString()
        if (seen.has(id)) continue
        seen.add(id)
        if (id === self) {
          live.add(id)
          continue
        }
        if (provider.multiaddrs.length > 0) await node.peerStore.merge(provider.id, { multiaddrs: provider.multiaddrs }).catch(() => {})
        checks.push(this.alive(provider.id).then(ok => { if (ok) live.add(id) }))
      }
    } catch (err) {
      // The deadline ends most walks on a large mesh: what was found by then is the answer.
      log.debug({ cid: cid.toString(), err: (err as Error).message }, 'instance count: provider walk ended early')
    }
    await Promise.all(checks)
    return live
  }

  private async alive (peer: PeerId): Promise<boolean> {
    try {
      await this.init.node.services.ping.ping(peer, { signal: AbortSignal.timeout(this.pingTimeoutMs) })
      return true
    } catch {
      return false
    }
  }
}

/** What the floor needs from a counter; a fake in tests. */
export type InstanceCount = Pick<InstanceCounter, 'count'>

export interface MinInstancesGuardInit {
  counter: InstanceCount
  log: Logger
  /** How often the mesh-wide count of each guarded service is refreshed. */
  refreshMs?: number
  /**
   * How long a "yes, cullable" holds a place: long enough for the asking supervisor to read
   * its idle time and decide, short enough that a busy instance does not starve an idle one
   * of the same service (it asks again on its next check).
   */
  grantMs?: number
  now?: () => number
  timers?: { setInterval: (fn: () => void, ms: number) => unknown, clearInterval: (handle: unknown) => void }
}

interface Floor {
  record: ServiceRecord
  members: Set<object>
  /** Mesh-wide live instances; undefined until the first count. */
  count?: number
  /** Members told "cullable" recently, with when: each may be culling now. */
  grants: Map<object, number>
  /** Members tearing down that the count may still include. */
  leaving: Set<object>
  /** Bumped when a member goes, so a count taken before it is not trusted. */
  generation: number
  refreshing: boolean
}

/**
 * Keeps the allocator from culling a service below its record's `minInstances`. A
 * supervisor's `cullable()` must answer synchronously, so the mesh-wide count of each guarded
 * service is refreshed in the background while this allocator runs instances of it.
 *
 * Local instances that go idle together (the load stopped) would all be told "cullable" from
 * the same count; a "yes" therefore reserves a place until that supervisor asks again or its
 * instance goes. Allocators on other hosts can still race this one: the floor holds as far as
 * each allocator's view of the DHT does.
 */
export class MinInstancesGuard {
  private readonly floors = new Map<string, Floor>()
  private readonly keys = new Map<object, string>()
  private readonly refreshMs: number
  private readonly grantMs: number
  private readonly now: () => number
  private readonly timers: NonNullable<MinInstancesGuardInit['timers']>
  private timer?: unknown

  constructor (private readonly init: MinInstancesGuardInit) {
    this.refreshMs = init.refreshMs ?? 2000
    this.grantMs = init.grantMs ?? 500
    this.now = init.now ?? Date.now
    this.timers = init.timers ?? {
      setInterval: (fn, ms) => setInterval(fn, ms),
      clearInterval: handle => { clearInterval(handle as NodeJS.Timeout) }
    }
  }

  start (): void {
    this.timer ??= this.timers.setInterval(() => { void this.refresh() }, this.refreshMs)
  }

  stop (): void {
    if (this.timer != null) this.timers.clearInterval(this.timer)
    this.timer = undefined
  }

  /** A local instance of the record's service now runs. */
  add (instance: object, record: ServiceRecord): void {
    this.keys.set(instance, record.name)
    let floor = this.floors.get(record.name)
    if (floor == null) {
      floor = { record, members: new Set(), grants: new Map(), leaving: new Set(), generation: 0, refreshing: false }
      this.floors.set(record.name, floor)
    }
    floor.record = record
    floor.members.add(instance)
    if (record.minInstances != null && floor.count == null) void this.refreshOne(floor)
  }

  /** The instance began to tear down: it no longer holds up the floor. */
  leaving (instance: object): void {
    const floor = this.floorOf(instance)
    if (floor == null) return
    floor.grants.delete(instance)
    floor.leaving.add(instance)
  }

  /** The instance is gone. */
  remove (instance: object): void {
    const floor = this.floorOf(instance)
    this.keys.delete(instance)
    if (floor == null) return
    floor.members.delete(instance)
    floor.grants.delete(instance)
    floor.leaving.delete(instance)
    // Until the next count, assume the one it took included this instance.
    if (floor.count != null) floor.count = Math.max(0, floor.count - 1)
    floor.generation++
    if (floor.members.size === 0) this.floors.delete(floor.record.name)
  }

  /** Sync, for the supervisor: may this instance be culled now? */
  cullable (instance: object): boolean {
    const floor = this.floorOf(instance)
    const min = floor?.record.minInstances
    if (floor == null || min == null) return true
    // Unknown count: keep the instance warm rather than risk going below the floor.
    if (floor.count == null) return false
    // Asking again means its last "yes" did not end in a cull.
    floor.grants.delete(instance)
    const now = this.now()
    for (const [other, at] of floor.grants) if (now - at > this.grantMs) floor.grants.delete(other)
    if (floor.count - floor.grants.size - floor.leaving.size <= min) return false
    floor.grants.set(instance, now)
    return true
  }

  /** The last known mesh-wide count of a guarded service, for status pages and tests. */
  knownCount (service: string): number | undefined {
    return this.floors.get(service)?.count
  }

  /** Refreshes every guarded service's count now (the timer calls this). */
  async refresh (): Promise<void> {
    await Promise.all([...this.floors.values()].filter(f => f.record.minInstances != null).map(async f => { await this.refreshOne(f) }))
  }

  private async refreshOne (floor: Floor): Promise<void> {
    if (floor.refreshing) return
    floor.refreshing = true
    const generation = floor.generation
    try {
      // A fresh walk: a cached answer from before an instance went would still count it.
      const count = await this.init.counter.count(floor.record, undefined, 0)
      if (floor.generation === generation) floor.count = count
    } catch (err) {
      this.init.log.debug({ service: floor.record.name, err: (err as Error).message }, 'instance count failed')
    } finally {
      floor.refreshing = false
    }
  }

  private floorOf (instance: object): Floor | undefined {
    const name = this.keys.get(instance)
    return name == null ? undefined : this.floors.get(name)
  }
}
