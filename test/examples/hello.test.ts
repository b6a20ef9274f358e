import { createHash, randomBytes } from 'node:crypto'
import { request, type IncomingHttpHeaders } from 'node:http'
import { resolve } from 'node:path'
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest'
import { REPO_ROOT, startProcess, stopAllDaemons, type StartedProcess } from '../helpers/daemon.js'
import { parseListeningLine } from '../../shared/ready.js'

const SERVER = resolve(REPO_ROOT, 'dist/examples/hello/server.js')

interface Reply {
  status: number
  headers: IncomingHttpHeaders
  trailers: Record<string, string | undefined>
  body: Buffer
  /** performance.now() of each body chunk as it arrived. */
  chunkTimes: number[]
  chunks: Buffer[]
}

async function call (port: number, method: string, path: string, body?: Buffer | string, headers: Record<string, string> = {}): Promise<Reply> {
  return await new Promise<Reply>((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, method, path, headers, agent: false }, res => {
      const chunks: Buffer[] = []
      const chunkTimes: number[] = []
      res.on('data', (chunk: Buffer) => { chunks.push(chunk); chunkTimes.push(performance.now()) })
      res.on('error', reject)
      res.on('end', () => {
        resolve({ status: res.statusCode ?? 0, headers: res.headers, trailers: res.trailers, body: Buffer.concat(chunks), chunkTimes, chunks })
      })
    })
    req.on('error', reject)
    req.end(body)
  })
}

function sha256 (data: Buffer): string {
  return createHash('sha256').update(data).digest('hex')
}

describe('examples/hello server', () => {
  let app: StartedProcess<number>
  let port: number

  beforeEach(async () => {
    app = await startProcess(SERVER, [], {
      env: { PORT: '0', INSTANCE: 'test-1' },
      isReady: parseListeningLine
    })
    port = app.ready
  })

  afterEach(async () => { await app.stop() })
  afterAll(async () => { await stopAllDaemons() })

  it('announces the real port when PORT=0 and says hello', async () => {
    expect(port).toBeGreaterThan(0)
    const reply = await call(port, 'GET', '/')
    expect(reply.status).toBe(200)
    expect(reply.body.toString()).toBe('hello from test-1\n')
    expect((await call(port, 'GET', '/healthz')).body.toString()).toBe('ok')
  })

  it('answers 500 to everything after a crash, health included', async () => {
    expect((await call(port, 'GET', '/healthz')).status).toBe(200)
    expect((await call(port, 'POST', '/api/v1/_crash')).status).toBe(200)
    for (const [method, path] of [['GET', '/healthz'], ['GET', '/'], ['POST', '/echo'], ['GET', '/stats'], ['POST', '/api/v1/_crash']]) {
      expect((await call(port, method, path)).status, `${method} ${path}`).toBe(500)
    }
  })

  it('streams /bytes/<n> with and without Content-Length, in the documented pattern', async () => {
    const n = 1_000_003
    const sized = await call(port, 'GET', `/bytes/${n}`)
    expect(sized.status).toBe(200)
    expect(sized.headers['content-length']).toBe(String(n))
    expect(sized.body.length).toBe(n)
    const expected = Buffer.alloc(n)
    for (let i = 0; i < n; i++) expected[i] = (i % 65536) % 251
    expect(sized.body.equals(expected)).toBe(true)

    const chunked = await call(port, 'GET', `/bytes/${n}?chunked=1`)
    expect(chunked.headers['content-length']).toBeUndefined()
    expect(chunked.headers['transfer-encoding']).toBe('chunked')
    expect(chunked.body.equals(expected)).toBe(true)

    const empty = await call(port, 'GET', '/bytes/0')
    expect(empty.body.length).toBe(0)
    const head = await call(port, 'HEAD', `/bytes/${n}`)
    expect(head.headers['content-length']).toBe(String(n))
    expect(head.body.length).toBe(0)
  })

  it('hashes uploads as they stream in', async () => {
    const data = randomBytes(3 * 1024 * 1024 + 5)
    for (const method of ['POST', 'PUT']) {
      const reply = await call(port, method, '/upload', data)
      expect(reply.status).toBe(200)
      expect(JSON.parse(reply.body.toString())).toEqual({ bytes: data.length, sha256: sha256(data) })
    }
  })

  it('echoes method, url, headers and a body digest for any /echo path', async () => {
    const body = Buffer.from('some body')
    const reply = await call(port, 'PATCH', '/echo/a/b?x=1', body, { 'X-Test': 'yes' })
    expect(reply.status).toBe(200)
    const echo = JSON.parse(reply.body.toString()) as Record<string, unknown>
    expect(echo.method).toBe('PATCH')
    expect(echo.url).toBe('/echo/a/b?x=1')
    expect((echo.headers as Record<string, string>)['x-test']).toBe('yes')
    expect(echo.rawHeaders).toContain('X-Test')
    expect(echo.bodyLength).toBe(body.length)
    expect(echo.bodySha256).toBe(sha256(body))
    expect(echo.trailers).toEqual({})
  })

  it('sends /stream chunk by chunk, spread over time', async () => {
    const n = 5
    const interval = 100
    const reply = await call(port, 'GET', `/stream?n=${n}&interval=${interval}`)
    expect(reply.status).toBe(200)
    expect(reply.headers['content-type']).toBe('text/event-stream')
    expect(reply.body.toString()).toBe(Array.from({ length: n }, (_, i) => `chunk ${i}\n`).join(''))
    // A buffered response would arrive in one piece at the end. Bounds are loose because a
    // busy test machine may read two lines in one go or read the first one late.
    expect(reply.chunks.length).toBeGreaterThanOrEqual(3)
    const spread = reply.chunkTimes[reply.chunkTimes.length - 1] - reply.chunkTimes[0]
    expect(spread).toBeGreaterThanOrEqual((n - 1) * interval / 2)
    expect(spread).toBeLessThan((n - 1) * interval + 1_000)
  })

  it('answers /status/<code>, without a body for 204 and 304', async () => {
    expect((await call(port, 'GET', '/status/418')).status).toBe(418)
    const created = await call(port, 'GET', '/status/201')
    expect(created.status).toBe(201)
    expect(created.body.length).toBeGreaterThan(0)
    for (const code of [204, 304]) {
      const reply = await call(port, 'GET', `/status/${code}`)
      expect(reply.status).toBe(code)
      expect(reply.body.length).toBe(0)
    }
    expect((await call(port, 'GET', '/nowhere')).status).toBe(404)
  })

  it('sends a declared trailer', async () => {
    const reply = await call(port, 'GET', '/trailers')
    expect(reply.status).toBe(200)
    expect(reply.headers.trailer).toBe('X-Checksum')
    expect(reply.trailers['x-checksum']).toBe('abc')
  })

  it('answers /slow after the requested time', async () => {
    const started = performance.now()
    const reply = await call(port, 'GET', '/slow?ms=150')
    expect(reply.status).toBe(200)
    expect(performance.now() - started).toBeGreaterThanOrEqual(148)
  })

  it('counts requests, failures and response times in /stats', async () => {
    const before = JSON.parse((await call(port, 'GET', '/stats')).body.toString()) as Record<string, unknown>
    expect(before.requests).toBe(1)
    expect(before.failures).toBe(0)
    expect(typeof before.startedAt).toBe('string')
    expect(Number.isNaN(Date.parse(before.startedAt as string))).toBe(false)

    await call(port, 'GET', '/')
    await call(port, 'GET', '/slow?ms=50')
    await call(port, 'GET', '/status/503')
    const after = JSON.parse((await call(port, 'GET', '/stats')).body.toString()) as Record<string, number>
    expect(after.requests).toBe(5)
    expect(after.failures).toBe(1)
    // Four requests had finished, one of them took >= 50 ms.
    expect(after.averageResponseMs).toBeGreaterThanOrEqual(50 / 4 - 1)
  })

  it('exits 0 on SIGTERM, even with a request in flight', async () => {
    const pending = call(port, 'GET', '/slow?ms=10000').catch((err: unknown) => err)
    // The request is in flight once /stats counted it (two: the /slow and this one).
    const deadline = Date.now() + 5_000
    for (;;) {
      const stats = JSON.parse((await call(port, 'GET', '/stats')).body.toString()) as { requests: number }
      if (stats.requests >= 2) break
      if (Date.now() > deadline) throw new Error('the /slow request never arrived')
      await new Promise(resolve => setTimeout(resolve, 10))
    }
    expect(await app.stop('SIGTERM')).toBe(0)
    expect(await pending).toBeInstanceOf(Error)
  })
})

describe('examples/hello failure injection', () => {
  afterAll(async () => { await stopAllDaemons() })

  it('answers FAILURE_RATE of requests 500 and waits around AVG_DELAY_MS, never on its health path', async () => {
    const app = await startProcess(SERVER, [], { env: { PORT: '0', FAILURE_RATE: '0.5', AVG_DELAY_MS: '20' }, isReady: parseListeningLine })
    try {
      const statuses = new Map<number, number>()
      const started = performance.now()
      for (let i = 0; i < 200; i++) {
        const { status } = await call(app.ready, 'GET', '/')
        statuses.set(status, (statuses.get(status) ?? 0) + 1)
      }
      const meanMs = (performance.now() - started) / 200
      // Binomial(200, 0.5): 100 ± 7 (1σ); outside 60–140 is a < 1e-8 chance.
      expect(statuses.get(500)).toBeGreaterThan(60)
      expect(statuses.get(500)).toBeLessThan(140)
      expect((statuses.get(200) ?? 0) + (statuses.get(500) ?? 0)).toBe(200)
      // Uniform in 0–40 ms: a mean of 20 ms, plus the request itself.
      expect(meanMs).toBeGreaterThan(12)
      expect(meanMs).toBeLessThan(60)
      for (let i = 0; i < 20; i++) expect((await call(app.ready, 'GET', '/healthz')).status).toBe(200)
    } finally {
      await app.stop()
    }
  })

  it('refuses a FAILURE_RATE out of range with one line', async () => {
    const app = startProcess(SERVER, [], { env: { PORT: '0', FAILURE_RATE: '2' }, isReady: parseListeningLine })
    await expect(app).rejects.toThrow(/invalid FAILURE_RATE "2": expected a number from 0 to 1/)
  })
})
