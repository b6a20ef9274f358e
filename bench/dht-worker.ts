#!/usr/bin/env node
// A child process of the DHT suite holding some in-process libp2p nodes (shared/node.ts, the
// same node every daemon runs). It obeys JSON commands over the IPC channel and answers each
// with { id, result } or { id, error }. Timestamps are performance.timeOrigin + now(), ms:
// comparable across processes of one machine.
import '../shared/polyfill.js'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { PeerId } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { CID } from 'multiformats/cid'
import { createMeshNode, routingTableSize, waitForRoutingTable, type MeshNode } from '../shared/node.js'

interface Request {
  id: number
  cmd: string
  args: Record<string, unknown>
}

const nodes: MeshNode[] = []
let extra: MeshNode | undefined

function now (): number {
  return performance.timeOrigin + performance.now()
}

async function newNode (): Promise<MeshNode> {
  const node = await createMeshNode({ privateKey: await generateKeyPair('Ed25519'), listen: [multiaddr('/ip4/127.0.0.1/tcp/0')] })
  await node.start()
  return node
}

/** A dial, tried three times: under load a noise handshake can outlive its timeout. */
async function dialWithRetry (node: MeshNode, addr: ReturnType<typeof multiaddr>): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await node.dial(addr, { signal: AbortSignal.timeout(20_000) })
      return
    } catch (err) {
      if (attempt >= 3) throw err
      await new Promise(resolve => setTimeout(resolve, 200))
    }
  }
}

interface LookupResult {
  found: boolean
  ms: number
  /** Hops to the peer that answered with the provider: 0 local, 1 a peer we knew, 2 one it named… */
  hops: number | null
  /** GET_PROVIDERS requests sent before the first provider came back. */
  queries: number
  error?: string
}

/**
 * One findProviders through node.contentRouting, up to the first provider (or `want`).
 * Hops come from the DHT's query events (onProgress): a peer we dial that nobody named is
 * one hop away (it came from our routing table); a peer named in the `closer` list of a
 * d-hop peer is d+1 hops away. The hop count is that of the peer whose answer held the
 * provider; 0 when our own provider store had it.
 */
async function lookup (node: MeshNode, cid: CID, timeoutMs: number, want?: PeerId): Promise<LookupResult> {
  const depth = new Map<string, number>()
  const self = node.peerId.toString()
  let hops: number | null = null
  let queries = 0
  // Dials and stream opens report progress through the same callback, with other details;
  // and a throw in here would fail the query, so only well-formed query events count.
  const onProgress = (evt: Event): void => {
    const e = (evt as CustomEvent).detail as { name?: string, peer?: PeerId, to?: PeerId, from?: PeerId, closer?: Array<{ id: PeerId }>, providers?: Array<{ id: PeerId }> } | undefined
    if (e == null || typeof e !== 'object' || !evt.type.startsWith('kad-dht:query:')) return
    if (e.name === 'DIAL_PEER' && e.peer != null && !depth.has(e.peer.toString())) depth.set(e.peer.toString(), 1)
    if (e.name === 'SEND_QUERY') queries++
    if (e.name === 'PEER_RESPONSE' && e.from != null) {
      const from = e.from.toString()
      const d = from === self ? 0 : depth.get(from) ?? 1
      for (const p of e.closer ?? []) {
        if (!depth.has(p.id.toString())) depth.set(p.id.toString(), d + 1)
      }
      const providers = e.providers ?? []
      if (hops == null && providers.some(p => want == null || p.id.equals(want))) hops = d
    }
  }
  const started = performance.now()
  const signal = AbortSignal.timeout(timeoutMs)
  try {
    for await (const provider of node.contentRouting.findProviders(cid, { signal, onProgress } as never)) {
      if (want == null || provider.id.equals(want)) {
        return { found: true, ms: performance.now() - started, hops, queries }
      }
    }
  } catch (err) {
    if (!signal.aborted) return { found: false, ms: performance.now() - started, hops: null, queries, error: (err as Error).message }
  }
  return { found: false, ms: performance.now() - started, hops: null, queries }
}

async function handle (cmd: string, args: Record<string, unknown>): Promise<unknown> {
  switch (cmd) {
    case 'start': {
      const count = args.count as number
      // One at a time: key generation and listening are quick; in parallel they only contend.
      for (let i = 0; i < count; i++) nodes.push(await newNode())
      return nodes.map(n => ({ peerId: n.peerId.toString(), addr: `${n.getMultiaddrs()[0].toString()}` }))
    }
    case 'dial': {
      // Failures are counted, not fatal: on a busy machine a handshake can time out.
      const addr = multiaddr(args.addr as string)
      let failed = 0
      await Promise.all(nodes.map(async n => {
        if (addr.toString().includes(n.peerId.toString())) return
        try {
          await dialWithRetry(n, addr)
          await waitForRoutingTable(n, 20_000)
        } catch {
          failed++
        }
      }))
      return failed
    }
    case 'selfQuery': {
      // What kad-dht's periodic self-query does (every 5 min; it ran at start with an empty
      // table): look up our own ID, which fills the routing table with the peers near us.
      let failed = 0
      await Promise.all(nodes.map(async n => {
        try {
          for await (const event of n.services.dht.getClosestPeers(n.peerId.toMultihash().bytes, { signal: AbortSignal.timeout(30_000) })) { void event }
        } catch {
          failed++
        }
      }))
      return failed
    }
    case 'tables':
      return nodes.map(n => routingTableSize(n))
    case 'provide': {
      const node = nodes[args.index as number]
      const started = performance.now()
      await node.contentRouting.provide(CID.parse(args.cid as string), { signal: AbortSignal.timeout(30_000) })
      return { ms: performance.now() - started }
    }
    case 'find':
      return await lookup(nodes[args.index as number], CID.parse(args.cid as string), args.timeoutMs as number)
    case 'spawnExtra': {
      // A new instance as a daemon starts: fresh key, listen, dial the bootstrap, wait for a
      // routing table entry, provide (startMeshBase + Advertiser, without the HTTP parts).
      const startedAt = now()
      extra = await newNode()
      await dialWithRetry(extra, multiaddr(args.bootstrap as string))
      await waitForRoutingTable(extra, 20_000)
      const joinedAt = now()
      await extra.contentRouting.provide(CID.parse(args.cid as string), { signal: AbortSignal.timeout(30_000) })
      return { peerId: extra.peerId.toString(), startedAt, joinedAt, providedAt: now() }
    }
    case 'findUntil': {
      // Look up again and again (a client that has never seen the instance) until it shows.
      const node = nodes[args.index as number]
      const cid = CID.parse(args.cid as string)
      const want = args.peerId != null ? peerIdFromString(args.peerId as string) : undefined
      const deadline = Date.now() + (args.timeoutMs as number)
      let attempts = 0
      while (Date.now() < deadline) {
        attempts++
        const r = await lookup(node, cid, Math.max(1, Math.min(5000, deadline - Date.now())), want)
        if (r.found) return { foundAt: now(), attempts, lastLookupMs: r.ms, hops: r.hops }
        await new Promise(resolve => setTimeout(resolve, 20))
      }
      return { foundAt: null, attempts }
    }
    case 'stopExtra':
      await extra?.stop()
      extra = undefined
      return null
    case 'stop':
      await extra?.stop()
      await Promise.all(nodes.map(async n => { await n.stop() }))
      return null
    default:
      throw new Error(`unknown command ${cmd}`)
  }
}

process.on('message', (msg: Request) => {
  handle(msg.cmd, msg.args).then(result => {
    process.send?.({ id: msg.id, result })
    if (msg.cmd === 'stop') process.disconnect()
  }, (err: Error) => {
    process.send?.({ id: msg.id, error: err.stack ?? err.message })
  })
})
process.on('disconnect', () => { process.exit(0) })
process.stdout.write('ready\n')
