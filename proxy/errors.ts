import type { ServerResponse } from 'node:http'
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

/** Malformed HTTP or oversized headers: a JSON answer, then close; the server goes on. */
export function answerClientError (err: Error & { code?: string }, socket: Duplex): void {
  if (!socket.writable) {
    socket.destroy()
    return
  }
  const tooLarge = err.code === 'HPE_HEADER_OVERFLOW'
  const status = tooLarge ? 431 : 400
  const body = JSON.stringify({ error: { code: status, reason: tooLarge ? 'headers_too_large' : 'bad_request', message: tooLarge ? 'request headers too large' : 'malformed HTTP request' } })
  socket.end(`HTTP/1.1 ${status} ${tooLarge ? 'Request Header Fields Too Large' : 'Bad Request'}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`)
}
