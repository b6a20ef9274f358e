import type { PeerId } from '@libp2p/interface'
import { allocatorCid } from '../shared/cids.js'
import type { MeshNode } from '../shared/node.js'
import { requestStatus } from '../shared/protocols/status.js'

export interface AllocatorSurvey {
  /** Allocators whose status came back. */
  answered: number
  /** Of those, the ones that run DHT records signed by the signer, nearest (fastest answer) first. */
  trusting: Array<{ id: PeerId, rttMs: number }>
}

export interface AllocatorSurveyOptions {
  /** Time for the DHT walk that finds allocators. */
  walkMs?: number
  /** Time each allocator has to answer. */
  askMs?: number
  /** Allocators asked at most. */
  maxAllocators?: number
}

/**
 * Asks the allocators the DHT knows whether they run records signed by SIGNER, so that
 * `registry put` can say when a record it stored will never run anywhere, and deploy it on
 * those that will.
 */
export async function surveyAllocators (node: MeshNode, signer: string, options: AllocatorSurveyOptions = {}): Promise<AllocatorSurvey> {
  const { walkMs = 5000, askMs = 3000, maxAllocators = 50 } = options
  const asks: Array<Promise<{ id: PeerId, trusts: boolean, rttMs: number } | undefined>> = []
  const seen = new Set<string>()
  try {
    for await (const provider of node.contentRouting.findProviders(await allocatorCid(), { signal: AbortSignal.timeout(walkMs) })) {
      const key = provider.id.toString()
      if (seen.has(key) || provider.id.equals(node.peerId)) continue
      seen.add(key)
      if (provider.multiaddrs.length > 0) await node.peerStore.merge(provider.id, { multiaddrs: provider.multiaddrs })
      const asked = performance.now()
      // The time to answer stands in for nearness: it is a round trip (or two, with a dial).
      asks.push(requestStatus(node, provider.id, AbortSignal.timeout(askMs))
        .then(status => ({ id: provider.id, trusts: status.trustedSigners?.includes(signer) === true, rttMs: performance.now() - asked }), () => undefined))
      if (seen.size >= maxAllocators) break
    }
  } catch {
    // The walk ran out of time: the allocators found so far are the answer.
  }
  const answers = (await Promise.all(asks)).filter(answer => answer !== undefined)
  const trusting = answers.filter(answer => answer.trusts).sort((a, b) => a.rttMs - b.rttMs).map(({ id, rttMs }) => ({ id, rttMs }))
  return { answered: answers.length, trusting }
}
