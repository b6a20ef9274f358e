import { request, type Agent, type ClientRequest, type IncomingMessage, type ServerResponse } from 'node:http'
import { forwardRawHeaders, trailerPairs, type ForwardHeaders } from './headers.js'

/**
 * Where a relayed request failed. `connect`: no connection or stream was ever had, so the
 * request provably never left. `request`: it may have reached the upstream, but no response
 * byte came back. `response`: the response had started.
 */
export type RelayPhase = 'connect' | 'request' | 'response'

export class RelayError extends Error {
  override name = 'RelayError'
  constructor (message: string, readonly phase: RelayPhase, readonly timedOut = false, readonly reusedConnection = false, readonly clientGone = false) {
    super(message)
  }
}

export interface RelayTarget {
  agent: Agent
  host?: string
  port?: number
  path: string
  forward?: ForwardHeaders
  /** Time allowed until the response headers arrive. */
  responseTimeoutMs?: number
  /** Called once the request has been handed to the connection (for latency estimates). */
  onRequestSent?: () => void
  /** Called when the response headers arrive (for latency estimates); `reused`: over a pooled connection. */
  onResponseStart?: (reused: boolean) => void
}

export interface RelayResult {
  status: number
}

/**
 * Sends `req` to the target and streams the answer to `res`, with backpressure both ways,
 * trailers and 100-continue carried end to end. Resolves once the response is complete.
 * Rejects with a RelayError; when its phase is not `response`, nothing was written to
 * `res` and the caller may answer or retry.
 */
export async function relay (req: IncomingMessage, res: ServerResponse, target: RelayTarget): Promise<RelayResult> {
  return await new Promise<RelayResult>((resolve, reject) => {
    let phase: RelayPhase = 'connect'
    let settled = false
    let timer: NodeJS.Timeout | undefined
    let upstream: ClientRequest
    try {
      upstream = request({
        agent: target.agent,
        host: target.host,
        port: target.port,
        method: req.method,
        path: target.path,
        headers: requestHeaders(req, target.forward) as unknown as Record<string, string>,
        setHost: false
      })
    } catch (err) {
      // Headers Node will not send (it checks them here): nothing left, nothing to retry.
      reject(new RelayError(`cannot forward the request: ${(err as Error).message}`, 'connect'))
      return
    }

    const fail = (err: Error & { code?: string }, timedOut = false, clientGone = false): void => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      req.unpipe(upstream)
      upstream.destroy()
      if (phase === 'response') res.destroy(err)
      reject(new RelayError(err.message, phase, timedOut, upstream.reusedSocket && err.code === 'ECONNRESET', clientGone))
    }

    upstream.once('socket', () => {
      if (phase === 'connect') phase = 'request'
    })
    if (target.onRequestSent != null) upstream.once('finish', target.onRequestSent)
    // The clock starts once the request is sent: a long upload is not a slow answer.
    if (target.responseTimeoutMs != null) {
      const timeoutMs = target.responseTimeoutMs
      upstream.once('finish', () => {
        if (phase !== 'response' && !settled) timer = setTimeout(() => { fail(new Error(`no response within ${timeoutMs} ms`), true) }, timeoutMs)
      })
    }
    upstream.on('error', fail)
    if (req.headers.expect != null) upstream.on('continue', () => { res.writeContinue() })

    upstream.on('response', (answer: IncomingMessage) => {
      phase = 'response'
      clearTimeout(timer)
      target.onResponseStart?.(upstream.reusedSocket)
      try {
        res.writeHead(answer.statusCode ?? 502, answer.statusMessage, forwardRawHeaders(answer.rawHeaders, { chunked: answersChunked(req, answer) }))
      } catch (err) {
        // What the upstream sent cannot be sent on (Node checks headers as it writes them).
        fail(err as Error)
        return
      }
      answer.pipe(res, { end: false })
      answer.on('end', () => {
        if (answer.rawTrailers.length > 0) res.addTrailers(trailerPairs(answer.rawTrailers))
        res.end()
      })
      answer.on('error', fail)
      res.once('finish', () => {
        if (settled) return
        settled = true
        resolve({ status: answer.statusCode ?? 502 })
      })
    })

    // The client went away: stop the upstream too, so nothing is left streaming. Not the
    // upstream's fault: callers must not hold it against the instance.
    res.once('close', () => {
      if (!res.writableFinished) fail(new Error('client closed the connection'), false, true)
    })

    if (req.readableEnded) {
      // A retry: the (bodiless) request was read by the failed attempt.
      upstream.end()
      return
    }
    req.pipe(upstream, { end: false })
    req.once('end', () => {
      if (req.rawTrailers.length > 0) upstream.addTrailers(trailerPairs(req.rawTrailers))
      upstream.end()
    })
  })
}

/**
 * The forwarded request's headers. A chunked body goes on chunked, whatever the method: Node's
 * client chunks only some methods by default, and would send a GET's chunked body unframed,
 * for the app to read as the start of another request (request smuggling).
 */
function requestHeaders (req: IncomingMessage, forward: ForwardHeaders | undefined): string[] {
  const chunked = req.headers['content-length'] == null && /chunked/i.test(req.headers['transfer-encoding'] ?? '')
  const headers = forwardRawHeaders(req.rawHeaders, { ...forward, chunked })
  if (chunked) headers.push('Transfer-Encoding', 'chunked')
  return headers
}

/** Whether Node answers this on chunked: a body of unknown length, to an HTTP/1.1 client. */
function answersChunked (req: IncomingMessage, answer: IncomingMessage): boolean {
  const status = answer.statusCode ?? 0
  const bodiless = req.method === 'HEAD' || status === 204 || status === 304 || (status >= 100 && status < 200)
  return !bodiless && answer.headers['content-length'] == null && (req.httpVersionMajor > 1 || req.httpVersionMinor >= 1)
}

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
