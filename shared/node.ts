import { readFile } from 'node:fs/promises'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { kadDHT, passthroughMapper, type KadDHT, type SelectFn, type ValidateFn } from '@libp2p/kad-dht'
import { ping, type Ping } from '@libp2p/ping'
import { preSharedKey } from '@libp2p/pnet'
import { tcp } from '@libp2p/tcp'
import type { Libp2p, PrivateKey } from '@libp2p/interface'
import type { Multiaddr } from '@multiformats/multiaddr'
import { createLibp2p, type Libp2pOptions } from 'libp2p'
import { UsageError } from './errors.js'
import type { Logger } from './log.js'

export const DHT_PROTOCOL = '/hyphae/kad/1.0.0'

/**
 * yamux's default 256 KiB window caps one stream at window ÷ RTT (about 5 MB/s at 50 ms).
 * A stream may grow its window to 16 MiB (320 MB/s at 50 ms); it starts at 1 MiB so short
 * responses never wait for a window update. By the yamux spec a stream starts at 256 KiB each
 * way; the patched yamux (patches/) grants the rest with the stream's SYN or ACK.
 */
export const STREAM_WINDOW = { initial: 1024 * 1024, max: 16 * 1024 * 1024 }

/** Addresses that share one IP with many peers (one machine, one NAT): never rate limited. */
const LOCAL_RANGES = [
  '/ip4/127.0.0.0/ipcidr/8', '/ip4/10.0.0.0/ipcidr/8', '/ip4/172.16.0.0/ipcidr/12',
  '/ip4/192.168.0.0/ipcidr/16', '/ip6/::1/ipcidr/128', '/ip6/fc00::/ipcidr/7'
]

export type MeshServices = { identify: unknown, ping: Ping, dht: KadDHT }
export type MeshNode = Libp2p<MeshServices>

export interface MeshNodeInit {
  privateKey: PrivateKey
  listen: Multiaddr[]
  announce?: Multiaddr[]
  psk?: Uint8Array
  /** Validators and selectors for our own DHT record namespaces, keyed by prefix. */
  validators?: Record<string, ValidateFn>
  selectors?: Record<string, SelectFn>
  /** How long provider records stay valid, ms. Short, so a dead instance ages out soon. */
  providerValidityMs?: number
  /**
   * Use the DHT without serving it: the node still provides and looks up, but other nodes do
   * not put it in their routing tables or query it.
   */
  dhtClientMode?: boolean
  /**
   * Where libp2p keeps DHT records, provider records and the peer store (default: in
   * memory). The caller opens it before the node starts and closes it after the node stops.
   */
  datastore?: Libp2pOptions['datastore']
}

/** The one libp2p node every hyphae daemon runs. */
export async function createMeshNode (init: MeshNodeInit): Promise<MeshNode> {
  const providerValidityMs = init.providerValidityMs ?? 10 * 60_000
  return await createLibp2p({
    privateKey: init.privateKey,
    ...(init.datastore != null ? { datastore: init.datastore } : {}),
    addresses: {
      listen: init.listen.map(ma => ma.toString()),
      announce: (init.announce ?? []).map(ma => ma.toString())
    },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux({
      streamOptions: {
        initialStreamWindowSize: STREAM_WINDOW.initial,
        maxStreamWindowSize: STREAM_WINDOW.max,
        // Pooled HTTP streams sit idle between requests; the HTTP layer times them out.
        inactivityTimeout: 10 * 60_000,
        // A paused reader still receives up to a full window: the default 4 MiB limit would
        // reset a stream whose window has grown past it.
        maxReadBufferLength: 2 * STREAM_WINDOW.max
      },
      maxInboundStreams: 4096,
      maxOutboundStreams: 4096
    })],
    ...(init.psk != null ? { connectionProtector: preSharedKey({ psk: init.psk }) } : {}),
    connectionManager: {
      allow: LOCAL_RANGES,
      maxConnections: 1024,
      maxIncomingPendingConnections: 64
    },
    services: {
      identify: identify(),
      ping: ping({ maxInboundStreams: 256, maxOutboundStreams: 256 }),
      dht: kadDHT({
        protocol: DHT_PROTOCOL,
        clientMode: init.dhtClientMode ?? false,
        peerInfoMapper: passthroughMapper,
        validators: init.validators ?? {},
        selectors: init.selectors ?? {},
        initialQuerySelfInterval: 0,
        allowQueryWithZeroPeers: true,
        providers: { provideValidity: Math.ceil(providerValidityMs / 1000), cleanupInterval: 60 },
        reprovide: { validity: providerValidityMs, threshold: Math.floor(providerValidityMs / 2), interval: Math.floor(providerValidityMs / 4) }
      })
    }
  })
}

/** Reads a PSK in the swarm key format (`/key/swarm/psk/1.0.0/`, `/base16/`, 64 hex digits). */
export async function readPsk (file?: string, text?: string): Promise<Uint8Array | undefined> {
  let content = text
  if (file != null) {
    try {
      content = await readFile(file, 'utf8')
    } catch (err) {
      throw new UsageError(`cannot read PSK file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
    }
  }
  if (content == null) return undefined
  const lines = content.trim().split(/\r?\n/)
  if (lines.length !== 3 || lines[0] !== '/key/swarm/psk/1.0.0/' || lines[1] !== '/base16/' || !/^[0-9a-fA-F]{64}$/.test(lines[2])) {
    throw new UsageError('the PSK is not a swarm key (/key/swarm/psk/1.0.0/, /base16/, 64 hex digits)')
  }
  return new TextEncoder().encode(content.trim() + '\n')
}

/**
 * Dials every bootstrap, logging which answered. The DHT fills its routing table from these
 * connections. Failures are logged, not fatal: a bootstrap may come up after us.
 */
export async function dialBootstraps (node: MeshNode, bootstraps: Multiaddr[], log: Logger, signal?: AbortSignal): Promise<number> {
  const results = await Promise.allSettled(bootstraps.map(async ma => {
    const conn = await node.dial(ma, { signal: signal ?? AbortSignal.timeout(5000) })
    log.info({ bootstrap: ma.toString(), peer: conn.remotePeer.toString() }, 'connected to bootstrap')
  }))
  let connected = 0
  results.forEach((result, i) => {
    if (result.status === 'fulfilled') connected++
    else log.warn({ bootstrap: bootstraps[i].toString(), err: (result.reason as Error).message }, 'bootstrap unreachable')
  })
  return connected
}

/** Peers in the DHT routing table. kad-dht keeps `routingTable` out of its public type. */
export function routingTableSize (node: MeshNode): number {
  return (node.services.dht as unknown as { routingTable: { size: number } }).routingTable.size
}

/**
 * Waits until the DHT knows at least one peer (identify has run on a bootstrap connection), so
 * that a first `provide` or `put` reaches the mesh and not only our own datastore.
 */
export async function waitForRoutingTable (node: MeshNode, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  while (routingTableSize(node) === 0) {
    if (Date.now() >= deadline) return false
    await new Promise(resolve => setTimeout(resolve, 10))
  }
  return true
}
