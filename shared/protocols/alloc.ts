import type { PeerId, Stream } from '@libp2p/interface'
import { lpStream } from '@libp2p/utils'
import type { Multiaddr } from '@multiformats/multiaddr'
import type { MeshNode } from '../node.js'
import { SERVICE_NAME } from '../registry/record.js'
import { AllocationError, type AllocationErrorCode } from './alloc-errors.js'

export const ALLOC_PROTOCOL = '/hyphae/alloc/1.0.0'

/** A request is one small JSON object: anything bigger is garbage or an attack. */
export const MAX_FRAME_BYTES = 16 * 1024

export interface AllocInstance {
  peerId: string
  multiaddrs: string[]
}

export type AllocResponse =
  | { ok: true, instance: AllocInstance }
  | { ok: false, error: { code: AllocationErrorCode, message: string } }

export interface AllocRequest {
  service: string
  /**
   * Run at least this seq of the record: a publisher deploying what it just stored makes the
   * allocator look past a record (or an absence) it cached before the put.
   */
  minSeq?: number
}

/** Parses and checks a request frame: the service's name, and optionally minSeq. */
export function parseAllocRequest (bytes: Uint8Array): AllocRequest {
  let json: unknown
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes))
  } catch {
    throw new AllocationError('bad_request', 'the request is not UTF-8 JSON')
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw new AllocationError('bad_request', 'the request must be a JSON object')
  const { service, minSeq, ...rest } = json as { service?: unknown, minSeq?: unknown }
  if (typeof service !== 'string' || Object.keys(rest).length > 0) throw new AllocationError('bad_request', 'the request must be {"service": NAME} (and optionally "minSeq": N) and nothing else')
  if (!SERVICE_NAME.test(service)) throw new AllocationError('bad_request', 'invalid service name')
  if (minSeq === undefined) return { service }
  if (typeof minSeq !== 'number' || !Number.isSafeInteger(minSeq) || minSeq < 0) throw new AllocationError('bad_request', 'minSeq must be a non-negative integer')
  return { service, minSeq }
}

const encoder = new TextEncoder()

/**
 * Serves one allocation stream: reads one length-prefixed request, answers one response.
 * Garbage, an oversized frame or a slow sender get a coded error (or a closed stream);
 * nothing a peer sends can throw out of here.
 */
export async function serveAllocStream (stream: Stream, allocate: (request: AllocRequest, signal: AbortSignal) => Promise<AllocInstance>, options: { readTimeoutMs?: number, allocateTimeoutMs: number }): Promise<AllocResponse> {
  const lp = lpStream(stream, { maxDataLength: MAX_FRAME_BYTES })
  let response: AllocResponse
  try {
    const frame = await lp.read({ signal: AbortSignal.timeout(options.readTimeoutMs ?? 5000) })
    const request = parseAllocRequest(frame.subarray())
    const instance = await allocate(request, AbortSignal.timeout(options.allocateTimeoutMs))
    response = { ok: true, instance }
  } catch (err) {
    response = { ok: false, error: toWireError(err) }
  }
  try {
    await lp.write(encoder.encode(JSON.stringify(response)), { signal: AbortSignal.timeout(5000) })
    await stream.close({ signal: AbortSignal.timeout(5000) })
  } catch {
    stream.abort(new Error('could not answer the allocation request'))
  }
  return response
}

function toWireError (err: unknown): { code: AllocationErrorCode, message: string } {
  if (err instanceof AllocationError) return { code: err.code, message: err.message }
  const name = (err as Error)?.name
  if (name === 'InvalidDataLengthError' || name === 'InvalidDataLengthLengthError' || name === 'InvalidMessageLengthError') {
    return { code: 'bad_request', message: `the request frame is malformed or larger than ${MAX_FRAME_BYTES} bytes` }
  }
  if (name === 'TimeoutError' || name === 'AbortError') return { code: 'timeout', message: 'timed out' }
  if (name === 'UnexpectedEOFError') return { code: 'bad_request', message: 'the stream ended before a whole request arrived' }
  return { code: 'internal', message: (err as Error)?.message ?? String(err) }
}

/** Asks an allocator for an instance of SERVICE; resolves with its answer. */
export async function requestAllocation (node: MeshNode, allocator: PeerId | Multiaddr, service: string, signal: AbortSignal, options: { minSeq?: number } = {}): Promise<AllocResponse> {
  const stream = await node.dialProtocol(allocator, ALLOC_PROTOCOL, { signal })
  try {
    const lp = lpStream(stream, { maxDataLength: MAX_FRAME_BYTES })
    const request: AllocRequest = options.minSeq != null ? { service, minSeq: options.minSeq } : { service }
    await lp.write(encoder.encode(JSON.stringify(request)), { signal })
    const frame = await lp.read({ signal })
    const answer = JSON.parse(new TextDecoder().decode(frame.subarray())) as AllocResponse
    await stream.close({ signal }).catch(() => {})
    return answer
  } catch (err) {
    stream.abort(err as Error)
    throw err
  }
}
