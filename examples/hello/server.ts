#!/usr/bin/env node
// The example application the mesh runs. Plain node:http with no dependencies, so that it can
// run as a process instance or be copied into any Node container image as is.
import { createHash } from 'node:crypto'
import { once } from 'node:events'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { realpathSync } from 'node:fs'
import { hostname } from 'node:os'
import { setTimeout as delay } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'

/** Bytes of the /bytes pattern: i % 251, a prime, so that a shifted or dropped chunk shows. */
export const PATTERN_BLOCK = (() => {
  const block = Buffer.allocUnsafe(64 * 1024)
  for (let i = 0; i < block.length; i++) block[i] = i % 251
  return block
})()

/** The byte at offset `i` of any /bytes response, for clients that check content. */
export function patternByte (i: number): number {
  return (i % PATTERN_BLOCK.length) % 251
}

export interface HelloStats {
  requests: number
  failures: number
  averageResponseMs: number
  startedAt: string
}

export interface HelloServerOptions {
  host: string
  port: number
  instance?: string
  /** Share of requests (0–1) answered 500, as the seed's workers could be told to fail; never the health path. */
  failureRate?: number
  /** Requests wait a random time around this (uniform in 0–2×), before any other work. */
  avgDelayMs?: number
  /** For tests: the dice. */
  random?: () => number
}

/** Paths that failure injection leaves alone, so the instance stays healthy and observable. */
const NEVER_INJECTED = new Set(['/healthz', '/stats', '/api/v1/_crash'])

export class HelloServer {
  private readonly server: Server
  private crashed = false
  private requests = 0
  private failures = 0
  private completed = 0
  private totalResponseMs = 0
  private readonly startedAt = new Date()
  private instanceName = ''

  constructor (private readonly opts: HelloServerOptions) {
    this.server = createServer((req, res) => { this.handle(req, res) })
  }

  async start (): Promise<number> {
    this.server.listen(this.opts.port, this.opts.host)
    await once(this.server, 'listening')
    const address = this.server.address()
    const port = typeof address === 'object' && address !== null ? address.port : this.opts.port
    this.instanceName = this.opts.instance ?? `${hostname()}:${port}`
    return port
  }

  async stop (): Promise<void> {
    if (!this.server.listening) return
    const closed = new Promise<void>(resolve => this.server.close(() => { resolve() }))
    // Keep-alive and long /stream or /slow responses would hold close() open forever.
    this.server.closeAllConnections()
    await closed
  }

  stats (): HelloStats {
    return {
      requests: this.requests,
      failures: this.failures,
      // Over finished requests only: the one asking for the stats has no duration yet.
      averageResponseMs: this.completed === 0 ? 0 : this.totalResponseMs / this.completed,
      startedAt: this.startedAt.toISOString()
    }
  }

  private handle (req: IncomingMessage, res: ServerResponse): void {
    const started = performance.now()
    this.requests++
    res.on('close', () => {
      this.completed++
      this.totalResponseMs += performance.now() - started
      if (res.statusCode >= 500 || !res.writableFinished) this.failures++
    })
    this.route(req, res).catch((err: unknown) => {
      if (!res.headersSent) {
        sendText(res, 500, `internal error: ${String(err)}\n`)
      } else {
        res.destroy(err instanceof Error ? err : new Error(String(err)))
      }
    })
  }

  private async route (req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://localhost')
    const path = url.pathname
    const method = req.method ?? 'GET'
    const isGet = method === 'GET' || method === 'HEAD'

    // Like the seed's acts container: once crashed, every request fails, health included,
    // so that a health checker sees it and relaunches the instance.
    if (this.crashed) {
      req.resume()
      sendText(res, 500, 'crashed\n')
      return
    }

    if (!NEVER_INJECTED.has(path)) {
      const { failureRate = 0, avgDelayMs = 0, random = Math.random } = this.opts
      if (avgDelayMs > 0) await delay(random() * 2 * avgDelayMs)
      if (failureRate > 0 && random() < failureRate) {
        req.resume()
        sendText(res, 500, 'injected failure (FAILURE_RATE)\n')
        return
      }
    }

    if (path.startsWith('/echo')) { await this.echo(req, res); return }
    if (path === '/api/v1/_crash' && method === 'POST') {
      req.resume()
      this.crashed = true
      sendText(res, 200, 'crashed\n')
      return
    }
    if ((path === '/upload') && (method === 'POST' || method === 'PUT')) {
      const { bytes, sha256 } = await hashBody(req)
      sendJson(res, 200, { bytes, sha256 })
      return
    }

    req.resume()
    if (!isGet) { sendText(res, 405, 'method not allowed\n'); return }

    if (path === '/') { sendText(res, 200, `hello from ${this.instanceName}\n`); return }
    // Drops the connection without an answer: what a proxy sees when an app dies mid-request.
    if (path === '/reset') { req.socket.destroy(); return }
    if (path === '/healthz') { sendText(res, 200, 'ok'); return }
    if (path === '/stats') { sendJson(res, 200, this.stats()); return }
    if (path.startsWith('/bytes/')) {
      const n = parseCount(path.slice('/bytes/'.length))
      if (n === undefined) { sendText(res, 400, 'bad byte count\n'); return }
      await streamBytes(res, n, url.searchParams.get('chunked') === '1')
      return
    }
    if (path === '/stream') {
      const n = parseCount(url.searchParams.get('n') ?? '5') ?? 5
      const interval = parseCount(url.searchParams.get('interval') ?? '100') ?? 100
      await streamChunks(res, n, interval)
      return
    }
    if (path.startsWith('/status/')) {
      const code = Number(path.slice('/status/'.length))
      if (!Number.isInteger(code) || code < 200 || code > 599) { sendText(res, 400, 'bad status\n'); return }
      if (code === 204 || code === 304) {
        res.writeHead(code)
        res.end()
      } else {
        sendText(res, code, `status ${code}\n`)
      }
      return
    }
    if (path === '/trailers') {
      res.writeHead(200, { 'Content-Type': 'text/plain', Trailer: 'X-Checksum' })
      res.write('body with a trailer\n')
      res.addTrailers({ 'X-Checksum': 'abc' })
      res.end()
      return
    }
    if (path === '/slow') {
      const ms = parseCount(url.searchParams.get('ms') ?? '1000') ?? 1000
      await delay(ms)
      sendText(res, 200, `slept ${ms}\n`)
      return
    }
    sendText(res, 404, 'not found\n')
  }

  private async echo (req: IncomingMessage, res: ServerResponse): Promise<void> {
    const { bytes, sha256 } = await hashBody(req)
    sendJson(res, 200, {
      method: req.method,
      url: req.url,
      headers: req.headers,
      rawHeaders: req.rawHeaders,
      bodyLength: bytes,
      bodySha256: sha256,
      trailers: req.trailers
    })
  }
}

function sendText (res: ServerResponse, status: number, text: string): void {
  res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': Buffer.byteLength(text) })
  res.end(text)
}

function sendJson (res: ServerResponse, status: number, value: unknown): void {
  const text = JSON.stringify(value) + '\n'
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) })
  res.end(text)
}

function parseCount (text: string): number | undefined {
  if (!/^\d{1,15}$/.test(text)) return undefined
  return Number(text)
}

async function hashBody (req: IncomingMessage): Promise<{ bytes: number, sha256: string }> {
  const hash = createHash('sha256')
  let bytes = 0
  for await (const chunk of req) {
    const buf = chunk as Buffer
    bytes += buf.length
    hash.update(buf)
  }
  return { bytes, sha256: hash.digest('hex') }
}

/** Resolves when the response can take more, or rejects if the client went away meanwhile. */
async function drained (res: ServerResponse): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const onDrain = (): void => { cleanup(); resolve() }
    const onClose = (): void => { cleanup(); reject(new Error('client closed the connection')) }
    const cleanup = (): void => { res.off('drain', onDrain); res.off('close', onClose) }
    res.on('drain', onDrain)
    res.on('close', onClose)
  })
}

async function streamBytes (res: ServerResponse, n: number, chunked: boolean): Promise<void> {
  const headers: Record<string, string | number> = { 'Content-Type': 'application/octet-stream' }
  if (!chunked) headers['Content-Length'] = n
  res.writeHead(200, headers)
  if (res.req.method === 'HEAD') { res.end(); return }
  let sent = 0
  while (sent < n) {
    if (res.destroyed) return
    const size = Math.min(PATTERN_BLOCK.length, n - sent)
    // Every block starts at a multiple of its length, so the pattern is continuous.
    const ok = res.write(size === PATTERN_BLOCK.length ? PATTERN_BLOCK : PATTERN_BLOCK.subarray(0, size))
    sent += size
    if (!ok) await drained(res)
  }
  res.end()
}

async function streamChunks (res: ServerResponse, n: number, intervalMs: number): Promise<void> {
  res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' })
  // Without this, Nagle's algorithm can glue small chunks together and hide the streaming.
  res.socket?.setNoDelay(true)
  if (res.req.method === 'HEAD') { res.end(); return }
  for (let i = 0; i < n; i++) {
    if (i > 0) await delay(intervalMs)
    if (res.destroyed) return
    res.write(`chunk ${i}\n`)
  }
  res.end()
}

/** A number from the environment within [min, max], or exit with one line naming it. */
function envNumber (name: string, min: number, max: number): number | undefined {
  const text = process.env[name]
  if (text === undefined || text === '') return undefined
  const value = Number(text)
  if (!Number.isFinite(value) || value < min || value > max) {
    process.stderr.write(`hello: invalid ${name} ${JSON.stringify(text)}: expected a number from ${min} to ${max}\n`)
    process.exit(2)
  }
  return value
}

async function main (): Promise<void> {
  const rawPort = process.env.PORT ?? '8080'
  const port = Number(rawPort)
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    process.stderr.write(`hello: invalid PORT ${JSON.stringify(rawPort)}\n`)
    process.exit(2)
  }
  const server = new HelloServer({
    host: process.env.HOST ?? '127.0.0.1',
    port,
    instance: process.env.INSTANCE === undefined || process.env.INSTANCE === '' ? undefined : process.env.INSTANCE,
    failureRate: envNumber('FAILURE_RATE', 0, 1),
    avgDelayMs: envNumber('AVG_DELAY_MS', 0, 600_000)
  })
  const actual = await server.start()
  process.stdout.write(`listening ${actual}\n`)

  let stopping = false
  const shutdown = (): void => {
    if (stopping) return
    stopping = true
    server.stop().then(() => process.exit(0), (err: unknown) => {
      process.stderr.write(`hello: ${String(err)}\n`)
      process.exit(1)
    })
  }
  process.on('SIGTERM', shutdown)
  process.on('SIGINT', shutdown)
}

function isEntryPoint (): boolean {
  const script = process.argv[1]
  if (script === undefined) return false
  try {
    return realpathSync(script) === realpathSync(fileURLToPath(import.meta.url))
  } catch {
    return false
  }
}

// Tests import HelloServer in-process; only `node server.js` should bind a port.
if (isEntryPoint()) {
  main().catch((err: unknown) => {
    process.stderr.write(`hello: ${err instanceof Error ? err.message : String(err)}\n`)
    process.exit(1)
  })
}
