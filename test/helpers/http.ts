import { createHash } from 'node:crypto'
import { Agent, request, type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http'
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

export interface LoadResult {
  statuses: Map<number, number>
  /** Bodies of 200 answers, counted (e.g. which instance answered). */
  bodies: Map<string, number>
  /** Requests that got no HTTP answer at all. */
  errors: string[]
  sent: number
}

/**
 * A bounded load: `concurrency` workers send GETs with keep-alive until `total` requests were
 * sent or `stop()` is called, whichever first. Never unbounded, never off 127.0.0.1.
 */
export function startLoad (url: string, opts: { concurrency: number, total: number, method?: string }): { done: Promise<LoadResult>, stop: () => void, result: LoadResult } {
  const agent = new Agent({ keepAlive: true, maxSockets: opts.concurrency })
  const result: LoadResult = { statuses: new Map(), bodies: new Map(), errors: [], sent: 0 }
  let stopped = false
  const worker = async (): Promise<void> => {
    while (!stopped && result.sent < opts.total) {
      result.sent++
      try {
        const answer = await new Promise<{ status: number, body: string }>((resolve, reject) => {
          const req = request(url, { agent, method: opts.method ?? 'GET', timeout: 10_000 }, res => {
            let body = ''
            res.setEncoding('utf8')
            res.on('data', (chunk: string) => { body += chunk })
            res.on('end', () => { resolve({ status: res.statusCode ?? 0, body }) })
            res.on('error', reject)
          })
          req.on('timeout', () => req.destroy(new Error('timed out')))
          req.on('error', reject)
          req.end()
        })
        result.statuses.set(answer.status, (result.statuses.get(answer.status) ?? 0) + 1)
        if (answer.status === 200) result.bodies.set(answer.body, (result.bodies.get(answer.body) ?? 0) + 1)
      } catch (err) {
        result.errors.push((err as Error).message)
      }
    }
  }
  const done = Promise.all(Array.from({ length: opts.concurrency }, worker)).then(() => {
    agent.destroy()
    return result
  })
  return { done, stop: () => { stopped = true }, result }
}

/** Sends TEXT as is on a new TCP connection and returns all that comes back until the server closes it. */
export async function rawHttp (port: number, text: string, timeoutMs = 10_000): Promise<string> {
  const { connect } = await import('node:net')
  return await new Promise<string>((resolve, reject) => {
    const socket = connect(port, '127.0.0.1')
    const chunks: Buffer[] = []
    const timer = setTimeout(() => { socket.destroy(); reject(new Error(`no end of the answer within ${timeoutMs} ms`)) }, timeoutMs)
    socket.on('data', chunk => chunks.push(chunk))
    socket.on('error', err => { clearTimeout(timer); reject(err) })
    socket.on('close', () => { clearTimeout(timer); resolve(Buffer.concat(chunks).toString('latin1')) })
    socket.write(text)
  })
}
