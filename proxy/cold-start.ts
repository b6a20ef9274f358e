import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { requestAllocation } from '../allocator/alloc-protocol.js'
import { allocatorCid } from '../shared/cids.js'
import { MeshError } from '../shared/errors.js'
import type { Logger } from '../shared/log.js'
import type { MeshNode } from '../shared/node.js'
import type { ServiceRecord } from '../shared/registry/record.js'
import type { Candidate, PeerFinder } from './peer-finder.js'

export interface ColdStarterInit {
  node: MeshNode
  finder: PeerFinder
  log: Logger
  /** How long requests are held for an allocation before they get a 504. */
  timeoutMs?: number
}

/**
 * Starts an instance when a service has none within its hard RTT: the nearest allocator
 * within the hard RTT is asked (then the next, if one refuses). Concurrent requests for one
 * service share one allocation, and all of them are released, with an answer or an error,
 * by the deadline.
 */
export class ColdStarter {
  private readonly inflight = new Map<string, Promise<Candidate>>()
  private readonly timeoutMs: number

  constructor (private readonly init: ColdStarterInit) {
    this.timeoutMs = init.timeoutMs ?? 30_000
  }

  async start (record: ServiceRecord, hardRttMs: number): Promise<Candidate> {
    let allocation = this.inflight.get(record.name)
    if (allocation == null) {
      allocation = this.allocate(record, hardRttMs).finally(() => this.inflight.delete(record.name))
      this.inflight.set(record.name, allocation)
    }
    return await allocation
  }

  private async allocate (record: ServiceRecord, hardRttMs: number): Promise<Candidate> {
    const { node, finder, log } = this.init
    const started = performance.now()
    const deadline = AbortSignal.timeout(this.timeoutMs)
    try {
      const allocators = await finder.discover(await allocatorCid(), hardRttMs, deadline)
      if (allocators.length === 0) throw new MeshError(503, 'no_allocator', `no instance of '${record.name}' within its hard RTT of ${hardRttMs} ms, and no allocator within it to start one`)
      const refusals: string[] = []
      for (const allocator of allocators) {
        const answer = await requestAllocation(node, allocator.id, record.name, deadline).catch((err: Error) => {
          if (deadline.aborted) throw err
          return { ok: false as const, error: { code: 'unreachable', message: err.message } }
        })
        if (!answer.ok) {
          refusals.push(`${allocator.id.toString().slice(-8)}: ${answer.error.code} (${answer.error.message})`)
          log.info({ service: record.name, allocator: allocator.id.toString(), code: answer.error.code, err: answer.error.message }, 'allocator refused')
          continue
        }
        const id = peerIdFromString(answer.instance.peerId)
        await node.peerStore.merge(id, { multiaddrs: answer.instance.multiaddrs.map(text => multiaddr(text)) })
        const rttMs = await finder.ping(id, hardRttMs, deadline)
        if (rttMs == null) {
          refusals.push(`${allocator.id.toString().slice(-8)}: its new instance does not answer`)
          continue
        }
        log.info({ service: record.name, allocator: allocator.id.toString(), instance: answer.instance.peerId, rttMs, ms: Math.round(performance.now() - started) }, 'cold start: instance allocated')
        return { id, rttMs }
      }
      throw new MeshError(503, 'allocation_failed', `no allocator could start '${record.name}': ${refusals.join('; ')}`)
    } catch (err) {
      if (deadline.aborted) throw new MeshError(504, 'cold_start_timeout', `no instance of '${record.name}' was ready within ${this.timeoutMs} ms`)
      throw err
    }
  }
}
