import type { ResolvedRecord } from '../shared/registry/registry.js'
import { normalizePeerIds } from '../shared/registry/signed-record.js'
import { TokenBucket } from '../shared/token-bucket.js'
import type { ServiceRecord } from '../shared/registry/record.js'
import { AllocationError } from '../shared/protocols/alloc-errors.js'

/**
 * The trust rule (DESIGN.md): an allocator runs the operator's own static records, and
 * records from the DHT only when RegistryKeys lists who signed them. The registry already
 * drops DHT records from unlisted signers when the list is not empty, so what is left to
 * refuse here is a DHT record while the list is empty: anyone can sign one of those.
 */
export function checkTrust (resolved: ResolvedRecord, trustedSigners: readonly string[]): AllocationError | undefined {
  const { origin, record } = resolved
  if (origin.source === 'static') return undefined
  if (trustedSigners.length > 0 && normalizePeerIds(trustedSigners).has(origin.signer)) return undefined
  return new AllocationError('untrusted_record', trustedSigners.length === 0
    ? `'${record.name}' comes from the DHT, signed by ${origin.signer}, and RegistryKeys is empty: this allocator runs only the static Services of its config (list the publisher's peer ID in RegistryKeys to run it)`
    : `'${record.name}' is signed by ${origin.signer}, which is not in RegistryKeys`)
}

/**
 * How many instances of a service one allocator runs at most: the record's maxInstances, and
 * one when nothing asks for more (no autoscaling target, no floor above one). More requests
 * for such a service get the instance already there, so a flood of them starts nothing.
 */
export function instanceCap (record: ServiceRecord, defaultTargetRps?: number): number {
  const autoscaled = (record.targetRps ?? defaultTargetRps) != null || (record.minInstances ?? 0) > 1
  return record.maxInstances ?? (autoscaled ? Infinity : 1)
}

export interface PeerRateLimiterInit {
  /** Requests a peer may make at once after a quiet spell. */
  burst?: number
  /** Requests per second a peer earns back. */
  perSecond?: number
  /** Peers remembered at once; the least recently seen is forgotten first (it starts full again). */
  maxPeers?: number
  now?: () => number
}

export const ADMISSION_DEFAULTS = { burst: 20, perSecond: 2, maxPeers: 4096 } as const

/** A token bucket per requesting peer, so one peer cannot keep an allocator busy starting things. */
export class PeerRateLimiter {
  private readonly buckets = new Map<string, TokenBucket>()
  private readonly burst: number
  private readonly perSecond: number
  private readonly maxPeers: number
  private readonly now: () => number

  constructor (init: PeerRateLimiterInit = {}) {
    this.burst = init.burst ?? ADMISSION_DEFAULTS.burst
    this.perSecond = init.perSecond ?? ADMISSION_DEFAULTS.perSecond
    this.maxPeers = init.maxPeers ?? ADMISSION_DEFAULTS.maxPeers
    this.now = init.now ?? Date.now
  }

  /** Takes one token for PEER; false when it has none left. */
  tryTake (peer: string): boolean {
    const bucket = this.buckets.get(peer) ?? new TokenBucket(this.burst, this.perSecond, this.now)
    // Re-inserted, so the map's order is least recently seen first.
    this.buckets.delete(peer)
    this.buckets.set(peer, bucket)
    if (this.buckets.size > this.maxPeers) this.buckets.delete(this.buckets.keys().next().value as string)
    return bucket.tryTake()
  }

  get size (): number {
    return this.buckets.size
  }
}
