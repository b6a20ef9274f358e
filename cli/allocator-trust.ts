import { allocatorCid } from '../shared/cids.js'
import type { MeshNode } from '../shared/node.js'
import { requestStatus } from '../shared/protocols/status.js'

export interface TrustSurvey {
  /** Allocators whose status came back. */
  answered: number
  /** Of those, the ones that run DHT records signed by the signer. */
  trusting: number
}

export interface TrustSurveyOptions {
  /** Time for the DHT walk that finds allocators. */
  walkMs?: number
  /** Time each allocator has to answer. */
  askMs?: number
  /** Allocators asked at most. */
  maxAllocators?: number
}

/**
 * Asks the allocators the DHT knows whether they run records signed by SIGNER, so that
 * `registry put` can say when a record it stored will never run anywhere.
 */
export async function surveyAllocatorTrust (node: MeshNode, signer: string, options: TrustSurveyOptions = {}): Promise<TrustSurvey> {
  const { walkMs = 5000, askMs = 3000, maxAllocators = 50 } = options
  const asks: Array<Promise<boolean | undefined>> = []
  const seen = new Set<string>()
  try {
    for await (const provider of node.contentRouting.findProviders(await allocatorCid(), { signal: AbortSignal.timeout(walkMs) })) {
      const key = provider.id.toString()
      if (seen.has(key) || provider.id.equals(node.peerId)) continue
      seen.add(key)
      if (provider.multiaddrs.length > 0) await node.peerStore.merge(provider.id, { multiaddrs: provider.multiaddrs })
      asks.push(requestStatus(node, provider.id, AbortSignal.timeout(askMs)).then(status => status.trustedSigners.includes(signer), () => undefined))
      if (seen.size >= maxAllocators) break
    }
  } catch {
    // The walk ran out of time: the allocators found so far are the answer.
  }
  const answers = (await Promise.all(asks)).filter(answer => answer !== undefined)
  return { answered: answers.length, trusting: answers.filter(Boolean).length }
}
