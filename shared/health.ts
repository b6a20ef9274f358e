import { request } from 'node:http'

export interface ProbeResult {
  /** Healthy: any 2xx or 3xx within the timeout. */
  ok: boolean
  /** The HTTP status, when the app answered at all. */
  status?: number
  error?: string
}

/** One GET of an app's health path, as both the allocator and a server proxy judge it. */
export async function probeHealth (host: string, port: number, path: string, timeoutMs: number): Promise<ProbeResult> {
  return await new Promise<ProbeResult>(resolve => {
    const req = request({ host, port, path, method: 'GET', agent: false, timeout: timeoutMs, headers: { 'User-Agent': 'hyphae' } }, res => {
      res.resume()
      const status = res.statusCode ?? 0
      resolve({ ok: status >= 200 && status < 400, status })
    })
    req.on('timeout', () => { req.destroy(new Error(`no answer within ${timeoutMs} ms`)) })
    req.on('error', err => { resolve({ ok: false, error: err.message }) })
    req.end()
  })
}
