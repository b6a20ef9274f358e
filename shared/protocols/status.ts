import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import type { PeerId, Stream } from '@libp2p/interface'
import { lpStream } from '@libp2p/utils'
import type { MeshNode } from '../node.js'
import { PACKAGE_ROOT } from '../paths.js'

/**
 * What a node says about itself to any peer that asks (on a private network: only peers with
 * its PSK can connect at all). Operators read it with the CLI; `hyphae registry put` reads
 * which signers the allocators trust.
 */
export const STATUS_PROTOCOL = '/hyphae/status/1.0.0'

/** A status is one JSON object; an allocator with its maximum of instances stays far below. */
export const MAX_STATUS_BYTES = 256 * 1024

/** An allocator lists this many instances at most (the answer size stays bounded). */
export const MAX_STATUS_INSTANCES = 1000

export interface InstanceStatus {
  service: string
  state: string
  relaunches: number
  /** The instance's server proxy, once it has one. */
  peerId?: string
}

export interface NodeStatus {
  role: 'allocator'
  host: string
  peerId: string
  version: string
  uptimeS: number
  addresses: string[]
  /** Peer IDs whose DHT records this node runs (RegistryKeys); empty: only its static Services. */
  trustedSigners: string[]
  instances: InstanceStatus[]
}

export const VERSION = (JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }).version

const encoder = new TextEncoder()

/** Answers STATUS_PROTOCOL with REPORT: one frame, then the stream is closed. The asker sends nothing. */
export async function handleStatus (node: MeshNode, report: () => NodeStatus): Promise<void> {
  await node.handle(STATUS_PROTOCOL, (stream: Stream) => {
    void (async () => {
      const signal = AbortSignal.timeout(5000)
      try {
        const status = report()
        const lp = lpStream(stream, { maxDataLength: MAX_STATUS_BYTES })
        await lp.write(encoder.encode(JSON.stringify({ ...status, instances: status.instances.slice(0, MAX_STATUS_INSTANCES) })), { signal })
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
    if (typeof status.peerId !== 'string' || !Array.isArray(status.trustedSigners) || !Array.isArray(status.instances)) {
      throw new Error('the status answer is not a hyphae status')
    }
    return status as NodeStatus
  } catch (err) {
    stream.abort(err as Error)
    throw err
  }
}
