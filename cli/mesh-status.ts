import { setMaxListeners } from 'node:events'
import type { PeerId } from '@libp2p/interface'
import { allocatorCid, clientProxyCid, serviceCid } from '../shared/cids.js'
import type { MeshNode } from '../shared/node.js'
import { requestStatus, type NodeStatus } from '../shared/protocols/status.js'
import type { RecordSource } from '../shared/registry/registry.js'

export interface MeshStatusOptions {
  /** Services to look for providers of, beyond those the nodes that answer name. */
  services?: string[]
  /** The whole survey's time. */
  timeoutMs?: number
  /** Time each node has to answer. */
  askMs?: number
  /** Nodes asked at most. */
  maxNodes?: number
}

export interface MeshStatus {
  /** When the survey ended (ms since the epoch). */
  at: number
  tookMs: number
  nodes: NodeStatus[]
  /** Nodes found that did not answer in time, or answered garbage. */
  unanswered: Array<{ peerId: string, error: string }>
  /** True when the survey ran out of time or hit maxNodes before its walks ended. */
  partial: boolean
}

export const STATUS_DEFAULTS = { timeoutMs: 5000, askMs: 3000, maxNodes: 200 }
/** Services whose providers are looked for, at most: one DHT walk each. */
const MAX_WALKED_SERVICES = 100

/**
 * The whole mesh as its nodes tell it, with no control plane to ask: the peers this node is
 * connected to (its bootstraps), the allocators and client proxies the DHT knows, then the
 * providers of every service any of those named, each asked `/hyphae/status/1.0.0`. Instances an allocator
 * already reported (with its sidecars' stats) are not asked again.
 */
export async function surveyMesh (node: MeshNode, registry: RecordSource, options: MeshStatusOptions = {}): Promise<MeshStatus> {
  const { timeoutMs, askMs, maxNodes } = { ...STATUS_DEFAULTS, ...options }
  const began = performance.now()
  const deadline = AbortSignal.timeout(timeoutMs)
  // Every ask and walk listens on it: as many listeners as nodes, by design.
  setMaxListeners(maxNodes + MAX_WALKED_SERVICES + 8, deadline)
  const nodes = new Map<string, NodeStatus>()
  const unanswered = new Map<string, string>()
  const asks: Array<Promise<void>> = []
  const asked = new Set<string>([node.peerId.toString()])
  let partial = false

  const ask = (peer: PeerId): void => {
    const key = peer.toString()
    if (asked.has(key)) return
    if (asked.size > maxNodes) {
      partial = true
      return
    }
    asked.add(key)
    asks.push(requestStatus(node, peer, AbortSignal.any([deadline, AbortSignal.timeout(askMs)])).then(
      status => { nodes.set(key, status) },
      (err: Error) => { unanswered.set(key, err.message) }
    ))
  }
  const walk = async (cid: Awaited<ReturnType<typeof allocatorCid>>): Promise<void> => {
    try {
      for await (const provider of node.contentRouting.findProviders(cid, { signal: deadline })) {
        if (provider.multiaddrs.length > 0) await node.peerStore.merge(provider.id, { multiaddrs: provider.multiaddrs })
        ask(provider.id)
      }
    } catch {
      // Out of time, or the DHT had no more to say: the nodes found so far are the answer.
      if (deadline.aborted) partial = true
    }
  }
  const settle = async (): Promise<void> => {
    while (asks.length > 0) await Promise.all(asks.splice(0))
  }

  for (const peer of node.getPeers()) ask(peer)
  await Promise.all([walk(await allocatorCid()), walk(await clientProxyCid())])
  await settle()

  // Then the providers of every service named so far: server proxies no allocator runs.
  const reported = new Set<string>()
  const services = new Set(options.services ?? [])
  for (const status of nodes.values()) {
    for (const instance of status.instances) {
      services.add(instance.service)
      if (status.role === 'allocator' && instance.peerId != null) reported.add(instance.peerId)
    }
    for (const cache of status.services ?? []) services.add(cache.service)
  }
  for (const peer of reported) asked.add(peer)
  if (services.size > MAX_WALKED_SERVICES) partial = true
  await Promise.all([...services].slice(0, MAX_WALKED_SERVICES).map(async name => {
    const record = await registry.resolve(name, { signal: deadline }).catch(() => undefined)
    if (record != null) await walk(await serviceCid(record))
  }))
  await settle()

  // A node that lives on (the dashboard's, `--watch`) stays connected to sidecars it met, and
  // asks them among its peers: an in-process sidecar does not answer, a process sidecar would
  // list its instance a second time. Their allocator has told of them.
  const sidecars = new Set([...nodes.values()].flatMap(n => n.role === 'allocator' ? n.instances.map(i => i.peerId) : []))
  return {
    at: Date.now(),
    tookMs: Math.round(performance.now() - began),
    nodes: [...nodes.values()].filter(n => n.role === 'allocator' || !sidecars.has(n.peerId)),
    unanswered: [...unanswered].filter(([peerId]) => !sidecars.has(peerId)).map(([peerId, error]) => ({ peerId, error })),
    partial
  }
}
