import { readFileSync } from 'node:fs'
import { hostname } from 'node:os'
import { join } from 'node:path'
import type { PeerId, Stream } from '@libp2p/interface'
import { lpStream } from '@libp2p/utils'
import type { MeshNode } from '../node.js'
import { PACKAGE_ROOT } from '../paths.js'

/**
 * What a node says about itself to any peer that asks (on a private network: only peers with
 * its PSK can connect at all). Operators read it with `hyphae status` and the dashboard;
 * `hyphae registry put` reads which signers the allocators trust.
 */
export const STATUS_PROTOCOL = '/hyphae/status/1.0.0'

/** A status is one JSON object; an allocator with its maximum of instances stays far below. */
export const MAX_STATUS_BYTES = 256 * 1024

/** An allocator lists this many instances at most (the answer size stays bounded). */
export const MAX_STATUS_INSTANCES = 1000

/** The caches of this many services at most go into a client proxy's status. */
export const MAX_STATUS_SERVICES = 200

/** What an instance has served, from its server proxy: counts since it started, the rest over the last 10 s. */
export interface InstanceStats {
  ok: number
  /** 5xx answers (a client that went away is neither ok nor failed). */
  failed: number
  total: number
  inFlight: number
  rps: number
  /** Response time, mean and 99th percentile; null: no request in the window. */
  avgMs: number | null
  p99Ms: number | null
  idleS: number
}

export interface InstanceStatus {
  service: string
  /** An allocator's own name for it (its metrics' `instance` label). */
  instance?: string
  state: string
  /** Seconds since it was started. */
  ageS: number
  relaunches: number
  /** The instance's server proxy, once it has one. */
  peerId?: string
  /** Missing when its server proxy did not answer in time. */
  stats?: InstanceStats
}

/** A client proxy's view of one service: the instances it knows and how near each is. */
export interface ServiceCacheStatus {
  service: string
  limits: { softMs: number, hardMs: number }
  peers: Array<{ peer: string, level: string, rttMs: number, inflight: number }>
}

export interface NodeStatus {
  role: 'allocator' | 'proxy'
  /** A proxy's mode: a server proxy fronts one instance, a client proxy only sends. */
  mode?: 'client' | 'server'
  host: string
  peerId: string
  version: string
  uptimeS: number
  addresses: string[]
  /** An allocator's: peer IDs whose DHT records it runs (RegistryKeys); empty: only its static Services. */
  trustedSigners?: string[]
  instances: InstanceStatus[]
  /** A proxy's routing cache, by service. */
  services?: ServiceCacheStatus[]
  /** Set when the lists were cut to keep the answer within MAX_STATUS_BYTES. */
  truncated?: boolean
}

/** The fields every node's status has, for a node that started at STARTED_AT (performance.now()). */
export function nodeFields (node: MeshNode, startedAt: number): Pick<NodeStatus, 'host' | 'peerId' | 'version' | 'uptimeS' | 'addresses'> {
  return {
    host: hostname(),
    peerId: node.peerId.toString(),
    version: VERSION,
    uptimeS: Math.round((performance.now() - startedAt) / 1000),
    addresses: node.getMultiaddrs().map(ma => ma.toString())
  }
}

export const VERSION = (JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }).version

const encoder = new TextEncoder()

/**
 * STATUS as one frame within MAX_STATUS_BYTES: lists past their caps are cut, then the
 * services' caches, then the instances, halving until it fits (marked `truncated`).
 */
export function encodeStatus (status: NodeStatus): Uint8Array {
  let instances = status.instances.slice(0, MAX_STATUS_INSTANCES)
  let services = status.services?.slice(0, MAX_STATUS_SERVICES)
  let truncated = instances.length < status.instances.length || (services?.length ?? 0) < (status.services?.length ?? 0)
  for (;;) {
    const bytes = encoder.encode(JSON.stringify({ ...status, instances, ...(services != null ? { services } : {}), ...(truncated ? { truncated } : {}) }))
    // With both lists empty what is left is the node's own few fields: it fits.
    if (bytes.length <= MAX_STATUS_BYTES || (instances.length === 0 && (services?.length ?? 0) === 0)) return bytes
    truncated = true
    if (services != null && services.length > 0) services = services.slice(0, Math.floor(services.length / 2))
    else instances = instances.slice(0, Math.floor(instances.length / 2))
  }
}

/** Answers STATUS_PROTOCOL with REPORT: one frame, then the stream is closed. The asker sends nothing. */
export async function handleStatus (node: MeshNode, report: () => NodeStatus | Promise<NodeStatus>): Promise<void> {
  await node.handle(STATUS_PROTOCOL, (stream: Stream) => {
    void (async () => {
      const signal = AbortSignal.timeout(5000)
      try {
        const status = await report()
        const lp = lpStream(stream, { maxDataLength: MAX_STATUS_BYTES })
        await lp.write(encodeStatus(status), { signal })
        await stream.close({ signal })
      } catch (err) {
        stream.abort(err as Error)
      }
    })()
  }, { maxInboundStreams: 32 })
}

/** Asks PEER for its status. Rejects on a peer that does not speak the protocol or answers garbage. */
export async function requestStatus (node: MeshNode, peer: PeerId, signal: AbortSignal): Promise<NodeStatus> {
  const stream = await node.dialProtocol(peer, STATUS_PROTOCOL, { signal })
  try {
    const frame = await lpStream(stream, { maxDataLength: MAX_STATUS_BYTES }).read({ signal })
    const status = JSON.parse(new TextDecoder().decode(frame.subarray())) as Partial<NodeStatus>
    await stream.close({ signal }).catch(() => {})
    if (typeof status.peerId !== 'string' || (status.role !== 'allocator' && status.role !== 'proxy') || !Array.isArray(status.instances)) {
      throw new Error('the status answer is not a hyphae status')
    }
    return status as NodeStatus
  } catch (err) {
    stream.abort(err as Error)
    throw err
  }
}
