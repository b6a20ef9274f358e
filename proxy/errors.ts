import { STATUS_CODES, type ServerResponse } from 'node:http'
import type { Duplex } from 'node:stream'

/** The JSON error body of DESIGN.md: `{"error":{"code":N,"message":"…"}}`, plus a stable reason. */
export function sendError (res: ServerResponse, status: number, reason: string, message: string): void {
  if (res.headersSent) {
    res.destroy()
    return
  }
  const body = JSON.stringify({ error: { code: status, reason, message } })
  res.writeHead(status, {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(body),
    'X-Hyphae-Error': reason
  })
  res.end(body)
}

/**
 * sendError's answer as raw response bytes, for a relay that writes its own. `close`: the
 * connection ends after it (the client must not send another request on it).
 */
export function errorResponseBytes (status: number, reason: string, message: string, close: boolean): Buffer {
  const body = JSON.stringify({ error: { code: status, reason, message } })
  return Buffer.from(`HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Error'}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nX-Hyphae-Error: ${reason}\r\n${close ? 'Connection: close\r\n' : ''}\r\n${body}`)
}

/** Malformed HTTP or oversized headers: a JSON answer, then close; the server goes on. */
export function answerClientError (err: Error & { code?: string }, socket: Duplex): void {
  if (!socket.writable) {
    socket.destroy()
    return
  }
  socket.end(err.code === 'HPE_HEADER_OVERFLOW'
    ? errorResponseBytes(431, 'headers_too_large', 'request headers too large', true)
    : errorResponseBytes(400, 'bad_request', 'malformed HTTP request', true))
}
