import { request } from 'node:http'

const BLOCK = Buffer.alloc(256 * 1024, 0x62)

export interface TransferResult {
  bytes: number
  seconds: number
  status: number
}

/** GET a body of `bytes` bytes and discard it; the time from request to last byte. */
export async function download (url: string, timeoutMs: number): Promise<TransferResult> {
  const started = performance.now()
  return await new Promise((resolve, reject) => {
    const req = request(url, { agent: false }, res => {
      let bytes = 0
      res.on('data', (chunk: Buffer) => { bytes += chunk.length })
      res.on('end', () => { clearTimeout(timer); resolve({ bytes, seconds: (performance.now() - started) / 1000, status: res.statusCode ?? 0 }) })
      res.on('error', err => { clearTimeout(timer); reject(err) })
    })
    const timer = setTimeout(() => { req.destroy(new Error(`download ${url}: not done within ${timeoutMs} ms`)) }, timeoutMs)
    req.on('error', err => { clearTimeout(timer); reject(err) })
    req.end()
  })
}

/** POST `bytes` bytes (Content-Length, written with backpressure); the time to the response's end. */
export async function upload (url: string, bytes: number, timeoutMs: number): Promise<TransferResult & { reply: string }> {
  const started = performance.now()
  return await new Promise((resolve, reject) => {
    const req = request(url, { method: 'POST', agent: false, headers: { 'Content-Type': 'application/octet-stream', 'Content-Length': bytes } }, res => {
      let reply = ''
      res.setEncoding('utf8')
      res.on('data', (text: string) => { reply += text })
      res.on('end', () => { clearTimeout(timer); resolve({ bytes, seconds: (performance.now() - started) / 1000, status: res.statusCode ?? 0, reply }) })
      res.on('error', err => { clearTimeout(timer); reject(err) })
    })
    const timer = setTimeout(() => { req.destroy(new Error(`upload ${url}: not done within ${timeoutMs} ms`)) }, timeoutMs)
    req.on('error', err => { clearTimeout(timer); reject(err) })
    let sent = 0
    const pump = (): void => {
      while (sent < bytes) {
        const size = Math.min(BLOCK.length, bytes - sent)
        sent += size
        if (!req.write(size === BLOCK.length ? BLOCK : BLOCK.subarray(0, size))) {
          req.once('drain', pump)
          return
        }
      }
      req.end()
    }
    pump()
  })
}
