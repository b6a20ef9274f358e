import { createHash } from 'node:crypto'
import { request, type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http'
import { Readable } from 'node:stream'

export interface HttpResult {
  status: number
  headers: IncomingHttpHeaders
  rawHeaders: string[]
  body: Buffer
  trailers: Record<string, string | undefined>
}

export interface HttpOptions {
  method?: string
  headers?: OutgoingHttpHeaders | string[]
  body?: string | Buffer | Readable
  timeoutMs?: number
}

/** One request with node:http (no pooling), the whole body collected. */
export async function http (url: string, opts: HttpOptions = {}): Promise<HttpResult> {
  return await new Promise<HttpResult>((resolve, reject) => {
    const req = request(url, { method: opts.method ?? 'GET', headers: opts.headers as OutgoingHttpHeaders, agent: false, timeout: opts.timeoutMs ?? 30_000 }, res => {
      const chunks: Buffer[] = []
      res.on('data', (chunk: Buffer) => chunks.push(chunk))
      res.on('end', () => {
        resolve({ status: res.statusCode ?? 0, headers: res.headers, rawHeaders: res.rawHeaders, body: Buffer.concat(chunks), trailers: res.trailers })
      })
      res.on('error', reject)
    })
    req.on('timeout', () => req.destroy(new Error(`no answer from ${url} in time`)))
    req.on('error', reject)
    if (opts.body instanceof Readable) opts.body.pipe(req)
    else req.end(opts.body)
  })
}

export function json<T = Record<string, unknown>> (result: HttpResult): T {
  return JSON.parse(result.body.toString('utf8')) as T
}

export function sha256 (data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex')
}

/** A deterministic body of `size` bytes, generated lazily (never held whole in memory). */
export function patternStream (size: number, seed = 7): Readable {
  const block = Buffer.alloc(64 * 1024)
  for (let i = 0; i < block.length; i++) block[i] = (i * seed) % 253
  let sent = 0
  return new Readable({
    read () {
      if (sent >= size) {
        this.push(null)
        return
      }
      const n = Math.min(block.length, size - sent)
      sent += n
      this.push(n === block.length ? block : block.subarray(0, n))
    }
  })
}

export async function sha256OfStream (stream: Readable): Promise<{ sha256: string, bytes: number }> {
  const hash = createHash('sha256')
  let bytes = 0
  for await (const chunk of stream) {
    hash.update(chunk as Buffer)
    bytes += (chunk as Buffer).length
  }
  return { sha256: hash.digest('hex'), bytes }
}
