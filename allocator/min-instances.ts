import type { Logger } from '../shared/log.js'
import type { ServiceRecord } from '../shared/registry/record.js'
import type { InstanceCounter } from '../shared/instance-count.js'

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
      this.init.log.debug({ service: floor.record.name, err }, 'instance count failed')
    } finally {
      floor.refreshing = false
    }
  }

  private floorOf (instance: object): Floor | undefined {
    const name = this.keys.get(instance)
    return name == null ? undefined : this.floors.get(name)
  }
}
