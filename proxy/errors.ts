import type { ServerResponse } from 'node:http'

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
