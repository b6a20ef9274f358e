import type { IncomingMessage } from 'node:http'
import type { RelayError } from './relay-error.js'

export { relay, type RelayResult, type RelayTarget } from './mesh-exchange.js'
export { RelayError, type RelayPhase } from './relay-error.js'

/** RFC 9110 §9.2.2: a retry of these has the same effect as one request. */
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE'])

/** True when the request carries no body, so it can be sent again as it is. */
function hasNoBody (req: IncomingMessage): boolean {
  const length = req.headers['content-length']
  return req.headers['transfer-encoding'] == null && (length == null || length === '0')
}

/**
 * Whether a failed attempt may be sent to another instance: always when it never left, and
 * for idempotent requests when no response byte arrived. Only bodiless requests, as a body
 * that was streamed cannot be streamed again.
 */
export function mayRetry (req: IncomingMessage, err: RelayError): boolean {
  if (err.clientGone || err.phase === 'response' || err.timedOut || !hasNoBody(req)) return false
  if (err.phase === 'connect' || err.reusedConnection) return true
  return IDEMPOTENT.has(req.method ?? '')
}
