/**
 * Why an instance could not be provided. The code is stable: it travels to the asking peer in
 * the `/hyphae/alloc/1.0.0` error reply, and clients and tests match on it.
 */
export type AllocationErrorCode =
  /** The runtime could not start the app, or the app kept exiting before it became healthy. */
  | 'start_failed'
  /** The app ran but its health path never passed before the start deadline. */
  | 'unhealthy'
  /** The app never answered its health path at all before the start deadline. */
  | 'timeout'
  /** The app was healthy but its server proxy would not start. */
  | 'sidecar_failed'
  /** The record's image is neither local nor pullable. */
  | 'image_unavailable'
  /** The runtime the record needs (e.g. the Docker Engine) does not answer on this host. */
  | 'runtime_unavailable'
  /** The allocator stopped the instance while it was starting. */
  | 'aborted'
  /** The request is not `{"service": NAME}` in one frame of at most 16 KiB. */
  | 'bad_request'
  /** No valid signed registry record (nor static record) names the service. */
  | 'unknown_service'
  /** No room: --max-instances, the service's own cap, or the cpu/memory the record asks for. */
  | 'capacity'
  /** The record comes from the DHT and no key in RegistryKeys signed it (DESIGN.md's trust rule). */
  | 'untrusted_record'
  /** The asking peer sent more requests than the allocator takes from one peer. */
  | 'rate_limited'
  /** The allocator is stopping. */
  | 'shutting_down'
  | 'internal'

export class AllocationError extends Error {
  override name = 'AllocationError'
  constructor (readonly code: AllocationErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options)
  }
}
