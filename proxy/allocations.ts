import { setTimeout as delay } from 'node:timers/promises'
import type { PeerId } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { requestAllocation, type AllocInstance, type AllocResponse } from '../shared/protocols/alloc.js'
import { allocatorCid } from '../shared/cids.js'
import { MeshError } from '../shared/errors.js'
import type { Logger } from '../shared/log.js'
import type { MeshNode } from '../shared/node.js'
import type { ServiceRecord } from '../shared/registry/record.js'
import type { Candidate, PeerFinder } from '../shared/peer-finder.js'

export interface AllocationsInit {
  node: MeshNode
  finder: PeerFinder
  log: Logger
  /** How long requests are held for a cold start before they get a 504. */
  coldStartTimeoutMs?: number
  /** How long a cold start keeps asking the DHT for allocators when it finds none. */
  discoveryRetryMs?: number
  /** The allocator of this very node (an allocator's doors for its instances), nearest of all. */
  local?: LocalAllocator
}

/** An allocator in this process: asked directly, since a node cannot dial itself. */
export type LocalAllocator = (service: string, signal: AbortSignal) => Promise<AllocResponse>

/** How long requests wait for an instance to be started. */
export const DEFAULT_COLD_START_TIMEOUT_MS = 30_000

/** Long enough for a mesh that is still starting; short enough that a mesh with no allocator says so. */
const DISCOVERY_RETRY_MS = 5_000
/** After a fruitless retry window, cold starts look once, not again for a window, for this long. */
const NO_ALLOCATOR_MEMORY_MS = 10_000

/**
 * Asks allocators for instances: a cold start when a service has none within its hard RTT
 * (concurrent requests share one allocation and are all released by the deadline), and a
 * better instance when the best one is over the soft RTT (from an allocator nearer than it).
 */
export class Allocations {
  private readonly coldStarts = new Map<string, Promise<Candidate>>()
  private readonly coldStartTimeoutMs: number
  /** When a whole retry window last found no allocator: a mesh without one answers fast. */
  private noAllocatorAt = -Infinity

  constructor (private readonly init: AllocationsInit) {
    this.coldStartTimeoutMs = init.coldStartTimeoutMs ?? DEFAULT_COLD_START_TIMEOUT_MS
  }

  async coldStart (record: ServiceRecord, hardRttMs: number): Promise<Candidate> {
    let allocation = this.coldStarts.get(record.name)
    if (allocation == null) {
      allocation = this.startCold(record, hardRttMs).finally(() => this.coldStarts.delete(record.name))
      this.coldStarts.set(record.name, allocation)
    }
    return await allocation
  }

  /**
   * A new instance from an allocator nearer than `currentRttMs`, preferring those within the
   * soft RTT; rejects when no allocator is nearer or none could start one.
   */
  async improve (record: ServiceRecord, limits: { softRttMs: number, hardRttMs: number }, currentRttMs: number): Promise<Candidate> {
    const deadline = AbortSignal.timeout(this.coldStartTimeoutMs)
    const allocators = (await this.init.finder.discover(await allocatorCid(), limits.hardRttMs, deadline)).filter(a => a.rttMs < currentRttMs)
    if (allocators.length === 0) throw new MeshError(503, 'no_nearer_allocator', `no allocator nearer than ${currentRttMs} ms`)
    return await this.requestFrom(allocators, record, limits.hardRttMs, deadline)
  }

  private async startCold (record: ServiceRecord, hardRttMs: number): Promise<Candidate> {
    const started = performance.now()
    const deadline = AbortSignal.timeout(this.coldStartTimeoutMs)
    try {
      // This host's own allocator first, without a walk: what it starts is as near as can be.
      let refusedHere: string | undefined
      if (this.init.local != null) {
        try {
          return await this.requestFrom([{ id: this.init.node.peerId, rttMs: 0 }], record, hardRttMs, deadline)
        } catch (err) {
          if (deadline.aborted) throw err
          refusedHere = (err as Error).message
        }
      }
      const allocators = await this.findAllocators(hardRttMs, deadline)
      if (allocators.length === 0 && refusedHere != null) throw new MeshError(503, 'allocation_failed', `${refusedHere}, and no other allocator is within ${hardRttMs} ms`)
      this.init.log.debug({ service: record.name, allocators: allocators.length, ms: Math.round(performance.now() - started) }, 'cold start: allocators found')
      if (allocators.length === 0) throw new MeshError(503, 'no_allocator', `no instance of '${record.name}' within its hard RTT of ${hardRttMs} ms, and no allocator within it to start one`)
      const instance = await this.requestFrom(allocators, record, hardRttMs, deadline)
      this.init.log.info({ service: record.name, instance: instance.id.toString(), rttMs: instance.rttMs, ms: Math.round(performance.now() - started) }, 'cold start: instance allocated')
      return instance
    } catch (err) {
      if (deadline.aborted) throw new MeshError(504, 'cold_start_timeout', `no instance of '${record.name}' was ready within ${this.coldStartTimeoutMs} ms`)
      throw err
    }
  }

  /**
   * Allocators within the hard RTT. An empty answer is asked again, backing off, until the
   * deadline or the discovery budget: just after start-up (or a partition) the DHT may not
   * know any yet, and one empty walk is no proof there are none (the Go original retried too).
   */
  private async findAllocators (hardRttMs: number, deadline: AbortSignal): Promise<Candidate[]> {
    const cid = await allocatorCid()
    const recentlyNone = performance.now() - this.noAllocatorAt < NO_ALLOCATOR_MEMORY_MS
    const giveUpAt = performance.now() + (recentlyNone ? 0 : Math.min(this.coldStartTimeoutMs, this.init.discoveryRetryMs ?? DISCOVERY_RETRY_MS))
    for (let wait = 100; ; wait = Math.min(wait * 2, 2000)) {
      const found = await this.init.finder.discover(cid, hardRttMs, deadline)
      if (found.length > 0) this.noAllocatorAt = -Infinity
      else if (!recentlyNone && performance.now() + wait > giveUpAt) this.noAllocatorAt = performance.now()
      if (found.length > 0 || deadline.aborted || performance.now() + wait > giveUpAt) return found
      this.init.log.debug({ retryInMs: wait }, 'no allocator found yet: asking the DHT again')
      await delay(wait, undefined, { signal: deadline }).catch(() => {})
    }
  }

  /** Asks each allocator in turn, nearest first, until one starts an instance that answers within the hard RTT. */
  private async requestFrom (allocators: Candidate[], record: ServiceRecord, hardRttMs: number, deadline: AbortSignal): Promise<Candidate> {
    const { node, finder, log } = this.init
    const { accepted, refusals } = await requestFirst(allocators, record.name, {
      request: async (allocator, service, signal) => {
        const { local } = this.init
        return local != null && allocator.equals(node.peerId) ? await local(service, signal) : await requestAllocation(node, allocator, service, signal)
      },
      signal: deadline,
      onRefused: (allocator, code, message) => { log.info({ service: record.name, allocator: allocator.toString(), code, err: message }, 'allocator refused') },
      accept: async instance => {
        const id = peerIdFromString(instance.peerId)
        await node.peerStore.merge(id, { multiaddrs: instance.multiaddrs.map(text => multiaddr(text)) })
        const rttMs = await finder.ping(id, hardRttMs, deadline)
        if (rttMs == null || rttMs > hardRttMs) return `its new instance is not within ${hardRttMs} ms`
        return { id, rttMs }
      }
    })
    if (accepted != null) return accepted.value
    throw new MeshError(503, 'allocation_failed', `no allocator could start '${record.name}': ${refusals.join('; ')}`)
  }
}

/** Asks one allocator for an instance of a service (the `/hyphae/alloc/1.0.0` exchange). */
export type RequestInstance = (allocator: PeerId, service: string, signal: AbortSignal) => Promise<AllocResponse>

export interface RequestFirstOptions<T> {
  request: RequestInstance
  signal: AbortSignal
  /** Takes the new instance (a value) or turns it down (why); default: takes it as it is. */
  accept?: (instance: AllocInstance) => Promise<T | string>
  onRefused?: (allocator: PeerId, code: string, message: string) => void
}

/**
 * Asks allocators in turn, nearest first, until one starts an instance that is accepted; else
 * says why each did not. Cold starts, nearer instances and scale-ups all ask this way.
 */
export async function requestFirst<T = AllocInstance> (allocators: Candidate[], service: string, options: RequestFirstOptions<T>): Promise<{ accepted?: { allocator: Candidate, value: T }, refusals: string[] }> {
  const refusals: string[] = []
  for (const allocator of allocators) {
    let answer: AllocResponse
    try {
      answer = await options.request(allocator.id, service, options.signal)
    } catch (err) {
      if (options.signal.aborted) throw err
      refusals.push(`${short(allocator.id)}: unreachable (${(err as Error).message})`)
      options.onRefused?.(allocator.id, 'unreachable', (err as Error).message)
      continue
    }
    if (!answer.ok) {
      refusals.push(`${short(allocator.id)}: ${answer.error.code} (${answer.error.message})`)
      options.onRefused?.(allocator.id, answer.error.code, answer.error.message)
      continue
    }
    const value = options.accept != null ? await options.accept(answer.instance) : answer.instance as T
    if (typeof value === 'string') {
      refusals.push(`${short(allocator.id)}: ${value}`)
      continue
    }
    return { accepted: { allocator, value }, refusals }
  }
  return { refusals }
}

function short (id: PeerId): string {
  return id.toString().slice(-8)
}
