import type { InstanceCounter } from '../shared/instance-count.js'
import type { Logger } from '../shared/log.js'
import type { ServiceRecord } from '../shared/registry/record.js'

/** What one look at the floor found: enough instances, one to ask for (here), or nothing to do here. */
export type FloorVerdict =
  | { kind: 'floor_met' | 'floor_left_to_peer' | 'stopped' }
  | { kind: 'short', instances: number, minInstances: number }

export interface FloorKeeperInit {
  record: ServiceRecord
  /** This instance's peer ID: it counts as live, and the lowest live ID is the one that asks. */
  self: string
  instances: Pick<InstanceCounter, 'providers'>
  log: Logger
  /** How often the floor is looked at. */
  checkMs: number
  now: () => number
}

/**
 * Keeps a record's `minInstances` warm once the service runs at all (with no control plane,
 * nothing starts the first one before a request does): when the DHT shows fewer live
 * instances, the one with the lowest peer ID among them asks for another, so that instances
 * seeing the same shortfall do not each start one. Allocators never cull below the floor.
 */
export class FloorKeeper {
  private nextCheckAt = 0

  constructor (private readonly init: FloorKeeperInit) {}

  get due (): boolean {
    return (this.init.record.minInstances ?? 0) > 1 && this.init.now() >= this.nextCheckAt
  }

  async check (signal: AbortSignal): Promise<FloorVerdict> {
    const { record, self, now } = this.init
    const min = record.minInstances ?? 0
    this.nextCheckAt = now() + this.init.checkMs
    // Fresh walks (a cached count from before the last start would ask for one too many),
    // and a shortfall seen twice: a walk cut short by its deadline misses instances, and
    // acting on it would start one more than the floor.
    const walk = async (): Promise<Set<string>> => new Set([self, ...await this.init.instances.providers(record, signal, 0)])
    let live: Set<string>
    try {
      live = await walk()
      if (live.size < min) live = await walk()
    } catch (err) {
      if (signal.aborted) return { kind: 'stopped' }
      this.init.log.debug({ service: record.name, err }, 'instance count failed')
      return { kind: 'floor_left_to_peer' }
    }
    if (live.size >= min) return { kind: 'floor_met' }
    if ([...live].sort()[0] !== self) return { kind: 'floor_left_to_peer' }
    return { kind: 'short', instances: live.size, minInstances: min }
  }

  /**
   * After asking for an instance: count again at the next check when one was allocated (it is
   * advertised before its allocation is answered), else wait `cooldownMs`.
   */
  asked (allocated: boolean, cooldownMs: number): void {
    this.nextCheckAt = this.init.now() + (allocated ? 0 : cooldownMs)
  }
}
