// What the three toy store services share: JSON in and out, upstream calls with a deadline,
// a group-commit queue, durable file writes and the environment a mesh instance is given
// (DESIGN.md, "What an instance is given"). Node built-ins only, like examples/hello.
import { once } from 'node:events'
import { open, rename } from 'node:fs/promises'
import { realpathSync } from 'node:fs'
import { request, type Agent, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

export const MAX_BODY_BYTES = 64 * 1024
export const UPSTREAM_TIMEOUT_MS = 10_000

/** An answer that ends a request early: becomes `{"error":{"code","message"}}`. */
export class HttpError extends Error {
  constructor (readonly status: number, message: string) { super(message) }
}

export function sendJson (res: ServerResponse, status: number, value: unknown): void {
  const text = JSON.stringify(value)
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) })
  res.end(text)
}

export function sendError (res: ServerResponse, status: number, message: string): void {
  sendJson(res, status, { error: { code: status, message } })
}

/**
 * Runs a route; an HttpError becomes its JSON answer, anything else a 500. A request whose
 * body was left unread closes its connection, so no stray bytes are parsed as the next request.
 */
export function serve (route: (req: IncomingMessage, res: ServerResponse) => Promise<void>) {
  return (req: IncomingMessage, res: ServerResponse): void => {
    route(req, res).catch((err: unknown) => {
      if (res.headersSent) { res.destroy(); return }
      if (!req.complete) { res.shouldKeepAlive = false; req.resume() }
      if (err instanceof HttpError) sendError(res, err.status, err.message)
      else sendError(res, 500, 'internal error')
    })
  }
}

/** The request body as JSON; 400 "invalid request" when it is not JSON or over 64 KiB. */
export async function readJson (req: IncomingMessage): Promise<unknown> {
  const invalid = new HttpError(400, 'invalid request')
  // Refused before reading a byte when the sender says up front that it is too big.
  if (Number(req.headers['content-length'] ?? 0) > MAX_BODY_BYTES) throw invalid
  const text = await new Promise<string>((resolve, reject) => {
    const chunks: Buffer[] = []
    let size = 0
    const onData = (chunk: Buffer): void => {
      size += chunk.length
      if (size <= MAX_BODY_BYTES) { chunks.push(chunk); return }
      // Not destroy(): that would take the socket, and the 400 with it. The rest is drained.
      req.off('data', onData)
      reject(invalid)
    }
    req.on('data', onData)
    req.once('end', () => { resolve(Buffer.concat(chunks).toString('utf8')) })
    req.once('error', reject)
  })
  try {
    return JSON.parse(text) as unknown
  } catch {
    throw invalid
  }
}

export interface OrderRequest { name: string, quantity: number }

/** `{"name","quantity"}` with a non-empty name and a positive integer quantity, else 400. */
export function parseOrderRequest (body: unknown): OrderRequest {
  const { name, quantity } = (typeof body === 'object' && body !== null ? body : {}) as Record<string, unknown>
  if (typeof name !== 'string' || name === '' || name.length > 200 ||
      typeof quantity !== 'number' || !Number.isSafeInteger(quantity) || quantity < 1) {
    throw new HttpError(400, 'invalid request')
  }
  return { name, quantity }
}

/** `/products/<name>` → the decoded name; undefined for another path or a bad escape. */
export function pathParam (path: string, prefix: string): string | undefined {
  if (!path.startsWith(prefix) || path.length === prefix.length) return undefined
  const raw = path.slice(prefix.length)
  if (raw.includes('/')) return undefined
  try {
    return decodeURIComponent(raw)
  } catch {
    return undefined
  }
}

export interface UpstreamReply {
  status: number
  body: unknown
  /** Set by a hyphae proxy on its own errors: the service behind it never answered. */
  meshError?: string
}

export class UpstreamError extends Error {
  constructor (readonly kind: 'timeout' | 'unreachable', message: string) { super(message) }
}

/**
 * One HTTP call with a deadline over the whole exchange (queueing for a socket included).
 * Never retried: a POST may have taken effect before the failure, and a retried buy would
 * sell twice. Rejects with UpstreamError on a timeout, a network error or a non-JSON answer.
 */
export async function callJson (url: string, opts: { method?: string, body?: unknown, agent?: Agent, timeoutMs?: number } = {}): Promise<UpstreamReply> {
  const payload = opts.body === undefined ? undefined : JSON.stringify(opts.body)
  const headers: Record<string, string | number> = { Accept: 'application/json' }
  if (payload !== undefined) {
    headers['Content-Type'] = 'application/json'
    headers['Content-Length'] = Buffer.byteLength(payload)
  }
  return await new Promise<UpstreamReply>((resolve, reject) => {
    const req = request(url, { method: opts.method ?? 'GET', headers, agent: opts.agent }, res => {
      const chunks: Buffer[] = []
      let size = 0
      res.on('data', (chunk: Buffer) => {
        size += chunk.length
        if (size > 16 * MAX_BODY_BYTES) { fail(new UpstreamError('unreachable', 'answer too large')); req.destroy(); return }
        chunks.push(chunk)
      })
      res.once('end', () => {
        clearTimeout(timer)
        const mesh = res.headers['x-hyphae-error']
        try {
          const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown
          resolve({ status: res.statusCode ?? 0, body, meshError: typeof mesh === 'string' ? mesh : undefined })
        } catch {
          reject(new UpstreamError('unreachable', `non-JSON answer ${res.statusCode ?? 0}`))
        }
      })
      res.once('error', fail)
      res.once('close', () => { if (!res.complete) fail(new Error('answer cut short')) })
    })
    const timeoutMs = opts.timeoutMs ?? UPSTREAM_TIMEOUT_MS
    let timedOut = false
    const timer = setTimeout(() => { timedOut = true; req.destroy() }, timeoutMs)
    // Once the answer has begun, a destroy surfaces as the answer's "aborted": hence the flag.
    function fail (err: Error): void {
      clearTimeout(timer)
      if (timedOut) reject(new UpstreamError('timeout', `no answer in ${timeoutMs} ms`))
      else reject(err instanceof UpstreamError ? err : new UpstreamError('unreachable', err.message))
    }
    req.once('error', fail)
    req.end(payload)
  })
}

/** True for `{"data":…}` or `{"error":{"code","message"}}`: an answer a service may pass on. */
export function isApiBody (body: unknown): boolean {
  if (typeof body !== 'object' || body === null) return false
  const { data, error } = body as { data?: unknown, error?: { code?: unknown, message?: unknown } }
  if (data !== undefined) return true
  return typeof error === 'object' && error !== null && typeof error.code === 'number' && typeof error.message === 'string'
}

/**
 * A queue whose items are handled one batch at a time, never two batches at once: `commit`
 * gets every item that arrived while the previous batch was being written, decides each in
 * arrival order, makes the lot durable with one fsync, and returns one result (or Error) per
 * item. Serial like a plain queue, but a burst of N buys costs one disk write, not N.
 */
export class GroupCommit<T, R> {
  private waiting: Array<{ item: T, resolve: (r: R) => void, reject: (e: unknown) => void }> = []
  private running: Promise<void> | undefined

  constructor (private readonly commit: (items: T[]) => Promise<Array<R | Error>>) {}

  async add (item: T): Promise<R> {
    const result = new Promise<R>((resolve, reject) => { this.waiting.push({ item, resolve, reject }) })
    this.running ??= this.drain()
    return await result
  }

  /** Resolves once every item added so far has been committed or refused. */
  async idle (): Promise<void> { await this.running }

  private async drain (): Promise<void> {
    while (this.waiting.length > 0) {
      const batch = this.waiting.splice(0)
      try {
        const results = await this.commit(batch.map(b => b.item))
        batch.forEach((b, i) => { const r = results[i]; if (r instanceof Error) b.reject(r); else b.resolve(r) })
      } catch (err) {
        for (const b of batch) b.reject(err)
      }
    }
    this.running = undefined
  }
}

/**
 * Replaces `path` as a whole: a temporary file in the same directory (so the rename stays
 * on one file system and is atomic), fsynced before the rename, and the directory fsynced
 * after it, so a crash leaves the old file or the new one, never a torn one.
 */
export async function writeFileAtomic (path: string, data: string): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`
  const file = await open(tmp, 'w')
  try {
    await file.writeFile(data)
    await file.sync()
  } finally {
    await file.close()
  }
  await rename(tmp, path)
  const dir = await open(dirname(path), 'r')
  try { await dir.sync() } finally { await dir.close() }
}

export async function listen (server: Server, host: string, port: number): Promise<number> {
  server.listen(port, host)
  await once(server, 'listening')
  const address = server.address()
  return typeof address === 'object' && address !== null ? address.port : port
}

export async function closeServer (server: Server): Promise<void> {
  if (!server.listening) return
  const closed = new Promise<void>(resolve => server.close(() => { resolve() }))
  // Idle keep-alive connections (from a proxy's pool) would otherwise hold close() open.
  server.closeAllConnections()
  await closed
}

export interface ServiceEnv { host: string, port: number, proxy?: string, dataDir: string }

/** PORT, HOST, HYPHAE_PROXY and HYPHAE_DATA_DIR; throws a one-line message when invalid. */
export function serviceEnv (service: string, defaultPort: number, needsProxy: boolean): ServiceEnv {
  const env = process.env
  const rawPort = env.PORT ?? String(defaultPort)
  const port = Number(rawPort)
  if (!/^\d{1,5}$/.test(rawPort) || port > 65535) throw new Error(`invalid PORT ${JSON.stringify(rawPort)}`)
  const proxy = env.HYPHAE_PROXY === '' ? undefined : env.HYPHAE_PROXY
  if (needsProxy) {
    if (proxy === undefined) throw new Error('HYPHAE_PROXY is not set (e.g. http://127.0.0.1:4321)')
    if (!URL.canParse(proxy)) throw new Error(`invalid HYPHAE_PROXY ${JSON.stringify(proxy)}`)
  }
  // Unset outside a mesh: a directory of our own under the temp dir, so it runs standalone.
  const dataDir = env.HYPHAE_DATA_DIR === undefined || env.HYPHAE_DATA_DIR === ''
    ? join(tmpdir(), `hyphae-toystore-${service}`)
    : env.HYPHAE_DATA_DIR
  return { host: env.HOST === undefined || env.HOST === '' ? '127.0.0.1' : env.HOST, port, proxy: proxy?.replace(/\/+$/, ''), dataDir }
}

/** True when this module is the program node runs, not an import (tests import the classes). */
export function isEntryPoint (moduleUrl: string): boolean {
  const script = process.argv[1]
  if (script === undefined) return false
  try {
    return realpathSync(script) === realpathSync(fileURLToPath(moduleUrl))
  } catch {
    return false
  }
}

/**
 * The program around a service: reads its environment (a bad one: one line, exit 2), starts
 * it, prints `listening <port>` (the line shared/ready.ts and `hyphae up` wait for), and
 * stops it on SIGTERM or SIGINT.
 */
export function runService (service: string, defaultPort: number, needsProxy: boolean,
  start: (env: ServiceEnv) => Promise<{ port: number, stop: () => Promise<void> }>): void {
  const die = (code: number) => (err: unknown): void => {
    process.stderr.write(`${service}: ${err instanceof Error ? err.message : String(err)}\n`)
    process.exit(code)
  }
  let env: ServiceEnv
  try {
    env = serviceEnv(service, defaultPort, needsProxy)
  } catch (err) {
    die(2)(err)
    return
  }
  start(env).then(running => {
    process.stdout.write(`listening ${running.port}\n`)
    let stopping = false
    const shutdown = (): void => {
      if (stopping) return
      stopping = true
      running.stop().then(() => process.exit(0), die(1))
    }
    process.on('SIGTERM', shutdown)
    process.on('SIGINT', shutdown)
  }, die(1))
}
