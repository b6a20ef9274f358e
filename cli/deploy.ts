import type { PeerId } from '@libp2p/interface'
import { InstanceCounter } from '../shared/instance-count.js'
import type { Logger } from '../shared/log.js'
import type { MeshNode } from '../shared/node.js'
import { PeerFinder } from '../shared/peer-finder.js'
import { requestAllocation, type AllocResponse } from '../shared/protocols/alloc.js'
import type { ServiceRecord } from '../shared/registry/record.js'

/** How long `registry put` waits for the instances of a record with minInstances to be up. */
export const DEFAULT_DEPLOY_TIMEOUT_MS = 60_000

export interface DeployInit {
  node: MeshNode
  log: Logger
  /** Allocators that run the record's signer's records, nearest first. */
  allocators: Array<{ id: PeerId, rttMs: number }>
  /** One line of progress for the user. */
  progress: (line: string) => void
  timeoutMs?: number
  /** The `/hyphae/alloc/1.0.0` exchange; a fake in tests. */
  request?: (allocator: PeerId, service: string, signal: AbortSignal, options: { minSeq: number }) => Promise<AllocResponse>
  /** Peer IDs of the live instances already running; a fake in tests. */
  running?: (record: ServiceRecord, signal: AbortSignal) => Promise<ReadonlySet<string>>
}

export interface DeployResult {
  wanted: number
  /** Instances up at the end: those already running and those started here. */
  up: number
  /** Why each allocator that did not start one did not. */
  refusals: string[]
}

/**
 * Deploy on publish: asks the nearest trusting allocators, one instance each, until the
 * record's minInstances run, so that the first request does not pay for the cold start. An
 * allocator answers once its instance is healthy and advertised; the ask names the record's
 * seq so that an allocator that cached an older record (or none) looks again first.
 */
export async function deploy (record: ServiceRecord, init: DeployInit): Promise<DeployResult> {
  const wanted = record.minInstances ?? 0
  const { progress } = init
  const signal = AbortSignal.timeout(init.timeoutMs ?? DEFAULT_DEPLOY_TIMEOUT_MS)
  const findRunning = init.running ?? (async (r, s) => await new InstanceCounter({ finder: new PeerFinder({ node: init.node, log: init.log }), lookupTimeoutMs: 3000 }).providers(r, s, 0))
  const request = init.request ?? (async (allocator, service, s, options) => await requestAllocation(init.node, allocator, service, s, options))
  const existing = await findRunning(record, signal).catch(() => new Set<string>())
  const running = existing.size
  const refusals: string[] = []
  if (running >= wanted) {
    progress(`${record.name}: ${running} instance${running === 1 ? '' : 's'} running, minInstances ${wanted}: nothing to start`)
    return { wanted, up: running, refusals }
  }
  progress(`deploying ${record.name}: ${wanted - running} instance${wanted - running === 1 ? '' : 's'} to start (minInstances ${wanted}, ${running} running)`)
  const started = new Set<string>()
  const began = performance.now()
  for (const allocator of init.allocators) {
    if (running + started.size >= wanted || signal.aborted) break
    const name = short(allocator.id)
    progress(`${record.name}: asking allocator ${name} to start one…`)
    const asked = performance.now()
    let answer: AllocResponse
    try {
      answer = await request(allocator.id, record.name, signal, { minSeq: record.seq })
    } catch (err) {
      refusals.push(`${name}: unreachable (${(err as Error).message})`)
      progress(`${record.name}: allocator ${name} did not answer: ${(err as Error).message}`)
      continue
    }
    if (!answer.ok) {
      refusals.push(`${name}: ${answer.error.code} (${answer.error.message})`)
      progress(`${record.name}: allocator ${name} refused: ${answer.error.code} (${answer.error.message})`)
      continue
    }
    // An allocator at its cap for the service answers with the instance it already runs.
    if (started.has(answer.instance.peerId) || existing.has(answer.instance.peerId)) {
      progress(`${record.name}: allocator ${name} already runs one`)
      continue
    }
    started.add(answer.instance.peerId)
    progress(`${record.name}: up on allocator ${name} as ${short(answer.instance.peerId)} in ${seconds(performance.now() - asked)} (${running + started.size} of ${wanted})`)
  }
  const up = running + started.size
  if (up >= wanted) progress(`${record.name}: ${up} of ${wanted} instances up in ${seconds(performance.now() - began)}`)
  return { wanted, up, refusals }
}

function short (id: PeerId | string): string {
  const text = id.toString()
  return `…${text.slice(-8)}`
}

function seconds (ms: number): string {
  return `${(ms / 1000).toFixed(2)} s`
}
