import { createHash } from 'node:crypto'
import { request } from 'node:http'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { PATTERN_BLOCK } from '../../examples/hello/server.js'
import { stopAllDaemons, type Daemon } from '../helpers/daemon.js'
import { http, json, rawHttp, patternStream, sha256OfStream } from '../helpers/http.js'
import { multiaddr } from '@multiformats/multiaddr'
import { startTestNode } from '../helpers/nodes.js'
import { rssOf, startClientProxy, startHelloApp, startServerProxy, writeTestConfig, type App, type TestConfig } from '../helpers/mesh.js'

/**
 * The mesh core end to end: a bootstrap, the example app, a server proxy beside it and a
 * client proxy, all real processes on 127.0.0.1.
 */
describe('mesh core end to end', () => {
  let config: TestConfig
  let bootstrap: Daemon
  let app: App
  let server: Daemon
  let client: Daemon
  let base: string

  beforeAll(async () => {
    config = await writeTestConfig({
      hello: { command: 'node hello.js', health: '/healthz' },
      ghost: { command: 'node ghost.js', health: '/healthz' }
    })
    bootstrap = await startClientProxy(config, undefined)
    app = await startHelloApp('one')
    server = await startServerProxy(config, bootstrap, 'hello', app.port)
    client = await startClientProxy(config, bootstrap, ['--response-timeout', '1500'])
    base = client.ready.http as string
  })

  afterAll(async () => {
    await stopAllDaemons()
    await config?.cleanup()
  })

  it('returns exactly what the app returns directly', async () => {
    const direct = await http(`http://127.0.0.1:${app.port}/`)
    const meshed = await http(`${base}/hello/`)
    expect(meshed.status).toBe(200)
    expect(meshed.body.toString()).toBe(direct.body.toString())
    expect(meshed.body.toString()).toBe('hello from one\n')
    expect(meshed.headers.via).toBe('1.1 hyphae, 1.1 hyphae')
  })

  it.each(['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'])('carries %s with its query string, headers and body', async method => {
    const body = method === 'GET' || method === 'OPTIONS' ? undefined : `payload for ${method}`
    const result = await http(`${base}/hello/echo/a/b?x=1&y=%20z`, {
      method,
      headers: [
        'Host', new URL(base).host, 'X-Custom-Header', 'Keep-Case', 'x-lower', 'v', 'X-Forwarded-For', '10.1.2.3',
        // Hop-by-hop: never forwarded, nor what Connection names.
        'Connection', 'X-Hop', 'X-Hop', 'secret', 'Proxy-Authorization', 'Basic eA==',
        ...(body != null ? ['Content-Type', 'text/plain', 'Content-Length', String(body.length)] : [])
      ],
      body
    })
    expect(result.status).toBe(200)
    const echo = json<{ method: string, url: string, rawHeaders: string[], bodyLength: number, headers: Record<string, string> }>(result)
    expect(echo.method).toBe(method)
    expect(echo.url).toBe('/echo/a/b?x=1&y=%20z')
    expect(echo.bodyLength).toBe(body?.length ?? 0)
    // Names keep their case and order; the proxies add Via, X-Forwarded-Prefix and, for
    // where it came from, only what the server proxy knows: the client proxy's peer ID.
    const names = echo.rawHeaders.filter((_, i) => i % 2 === 0)
    expect(names).toContain('X-Custom-Header')
    expect(names).toContain('x-lower')
    expect(echo.headers['x-custom-header']).toBe('Keep-Case')
    expect(echo.headers['x-forwarded-for']).toBeUndefined()
    expect(echo.headers.forwarded).toBe(`for="_${client.ready.peerId}"`)
    expect(echo.headers['x-forwarded-prefix']).toBe('/hello')
    expect(echo.headers.via).toBe('1.1 hyphae, 1.1 hyphae')
    expect(echo.headers['x-hop']).toBeUndefined()
    expect(echo.headers['proxy-authorization']).toBeUndefined()
  })

  it('serves HTTP/1.0 without Host, and passes on no claim of origin a peer makes', async () => {
    const answer = await rawHttp(Number(new URL(base).port), 'GET /hello/echo/old HTTP/1.0\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n')
    expect(answer).toMatch(/^HTTP\/1\.1 200 /)
    const echo = JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4)) as { url: string, headers: Record<string, string> }
    expect(echo.url).toBe('/echo/old')
    expect(echo.headers.host).toBe(`127.0.0.1:${app.port}`)
    expect(echo.headers.forwarded).toBe(`for="_${client.ready.peerId}"`)
    expect(echo.headers['x-real-ip']).toBeUndefined()
    expect(echo.headers['x-forwarded-for']).toBeUndefined()
  })

  // Found by the fuzz suite: a Trailer header on a request that is not chunked made Node
  // refuse the forwarded request (500 at the client proxy, 502 at the server proxy).
  it('carries a request that announces trailers but has a Content-Length', async () => {
    // (Node's own client will not send this: raw bytes.)
    const answer = await rawHttp(Number(new URL(base).port), 'GET /hello/echo/t HTTP/1.1\r\nHost: x\r\nTrailer: X-T\r\nContent-Length: 0\r\nConnection: close\r\n\r\n')
    expect(answer).toMatch(/^HTTP\/1\.1 200 /)
    expect(answer.toLowerCase()).not.toContain('"trailer"')
  })

  // Found by the fuzz suite: a GET's chunked body went on unframed (Node's client chunks only
  // some methods), and the app read it as the start of another request.
  it('carries a chunked body on any method, framed', async () => {
    const answer = await rawHttp(Number(new URL(base).port), 'GET /hello/echo/c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n')
    expect(answer).toMatch(/^HTTP\/1\.1 200 /)
    expect(JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4).replace(/^[0-9a-f]+\r\n/, '').replace(/\r\n0\r\n\r\n$/, '')) as { bodyLength: number }).toMatchObject({ bodyLength: 3 })
  })

  it('answers HEAD with headers and no body, and 204/304 without a body', async () => {
    const head = await http(`${base}/hello/bytes/1000`, { method: 'HEAD' })
    expect(head.status).toBe(200)
    expect(head.headers['content-length']).toBe('1000')
    expect(head.body.length).toBe(0)
    for (const status of [204, 304]) {
      const result = await http(`${base}/hello/status/${status}`)
      expect(result.status).toBe(status)
      expect(result.body.length).toBe(0)
    }
  })

  it('carries response trailers', async () => {
    const result = await http(`${base}/hello/trailers`)
    expect(result.status).toBe(200)
    expect(result.trailers['x-checksum']).toBe('abc')
  })

  it('honours Expect: 100-continue end to end', async () => {
    const { status, sawContinue } = await new Promise<{ status: number, sawContinue: boolean }>((resolve, reject) => {
      let sawContinue = false
      const req = request(`${base}/hello/upload`, { method: 'POST', headers: { Expect: '100-continue', 'Content-Length': '5' }, agent: false })
      req.on('continue', () => { sawContinue = true; req.end('hello') })
      req.on('response', res => { res.resume(); res.on('end', () => { resolve({ status: res.statusCode ?? 0, sawContinue }) }) })
      req.on('error', reject)
      req.flushHeaders()
    })
    expect(sawContinue).toBe(true)
    expect(status).toBe(200)
  })

  it('uploads and downloads 100 MB intact (sha256) without buffering in the proxies', async () => {
    const size = 100 * 1024 * 1024
    const rssBefore = await Promise.all([rssOf(client.pid), rssOf(server.pid)])

    const expected = await sha256OfStream(patternStream(size))
    const upload = await http(`${base}/hello/upload`, { method: 'PUT', body: patternStream(size), headers: { 'Content-Type': 'application/octet-stream' }, timeoutMs: 120_000 })
    expect(upload.status).toBe(200)
    expect(json(upload)).toEqual({ bytes: size, sha256: expected.sha256 })

    const want = createHash('sha256')
    for (let sent = 0; sent < size; sent += PATTERN_BLOCK.length) want.update(PATTERN_BLOCK.subarray(0, Math.min(PATTERN_BLOCK.length, size - sent)))
    const got = await new Promise<{ sha256: string, bytes: number }>((resolve, reject) => {
      request(`${base}/hello/bytes/${size}`, { agent: false }, res => { sha256OfStream(res).then(resolve, reject) }).on('error', reject).end()
    })
    expect(got).toEqual({ sha256: want.digest('hex'), bytes: size })

    const rssAfter = await Promise.all([rssOf(client.pid), rssOf(server.pid)])
    // The bound is "~50 MB" for a 1 GB transfer (BENCHMARKS.md measures that: 24–37 MB).
    // RSS also holds garbage not yet collected, which a busy neighbour test inflates, hence the
    // slack; without backpressure the same transfers took hundreds of MB.
    for (let i = 0; i < 2; i++) expect(rssAfter[i] - rssBefore[i]).toBeLessThan(64 * 1024 * 1024)
  })

  it('delivers a slow server-sent stream chunk by chunk', async () => {
    const arrivals = await new Promise<number[]>((resolve, reject) => {
      const times: number[] = []
      request(`${base}/hello/stream?n=4&interval=200`, { agent: false }, res => {
        res.on('data', () => times.push(performance.now()))
        res.on('end', () => { resolve(times) })
      }).on('error', reject).end()
    })
    expect(arrivals.length).toBeGreaterThanOrEqual(4)
    // Were the body buffered, every chunk would land at once at the end.
    expect(arrivals[arrivals.length - 1] - arrivals[0]).toBeGreaterThan(450)
  })

  it('answers the documented error statuses with JSON bodies', async () => {
    const noApp = await http(`${base}/`)
    expect(noApp.status).toBe(400)
    expect(json(noApp)).toMatchObject({ error: { code: 400 } })
    const badApp = await http(`${base}/Not_Valid/x`)
    expect(badApp.status).toBe(400)
    const unknown = await http(`${base}/nosuch/x`)
    expect(unknown.status).toBe(404)
    expect(json(unknown)).toMatchObject({ error: { code: 404 } })
    const noInstance = await http(`${base}/ghost/x`)
    expect(noInstance.status).toBe(503)
    expect(json(noInstance)).toMatchObject({ error: { code: 503 } })
    const reset = await http(`${base}/hello/reset`)
    expect(reset.status).toBe(502)
    expect(json(reset)).toMatchObject({ error: { code: 502 } })
    const slow = await http(`${base}/hello/slow?ms=4000`)
    expect(slow.status).toBe(504)
    expect(json(slow)).toMatchObject({ error: { code: 504 } })
  })

  it('answers a huge header with 431 JSON and keeps serving', async () => {
    const result = await http(`${base}/hello/`, { headers: { 'X-Huge': 'a'.repeat(64 * 1024) } })
    expect(result.status).toBe(431)
    expect(json(result)).toMatchObject({ error: { code: 431 } })
    expect((await http(`${base}/hello/`)).status).toBe(200)
  })

  it('reports idle seconds and Prometheus metrics on the server proxy', async () => {
    const metricsBase = `http://127.0.0.1:${server.ready.metrics as number}`
    const idle = await http(`${metricsBase}/`)
    expect(idle.body.toString()).toMatch(/^\d+\n$/)
    const metrics = await http(`${metricsBase}/metrics`)
    expect(metrics.body.toString()).toMatch(/hyphae_instance_requests_total\{status="200"\} \d+/)
    expect(metrics.body.toString()).toContain('hyphae_instance_advertised 1')
  })

  it('serves a one-request stream from a plain libp2p HTTP client (spec style)', async () => {
    const node = await startTestNode()
    try {
      const stream = await node.dialProtocol(multiaddr(server.ready.multiaddrs[0]), '/http/1.1', { signal: AbortSignal.timeout(5000) })
      stream.send(new TextEncoder().encode('GET /echo/spec?q=1 HTTP/1.1\r\nHost: example\r\nX-Spec: yes\r\n\r\n'))
      await stream.close()
      const chunks: Uint8Array[] = []
      for await (const chunk of stream) chunks.push(chunk instanceof Uint8Array ? chunk : chunk.subarray())
      const text = Buffer.concat(chunks).toString('utf8')
      expect(text).toMatch(/^HTTP\/1\.1 200 OK\r\n/)
      const body = JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4).replace(/^[0-9a-f]+\r\n|\r\n0\r\n\r\n$/g, '')) as { url: string, headers: Record<string, string> }
      expect(body.url).toBe('/echo/spec?q=1')
      expect(body.headers['x-spec']).toBe('yes')
    } finally {
      await node.stop()
    }
  })

  it('answers a garbled mesh stream with a 400 and keeps serving', async () => {
    const node = await startTestNode()
    try {
      const stream = await node.dialProtocol(multiaddr(server.ready.multiaddrs[0]), '/http/1.1', { signal: AbortSignal.timeout(5000) })
      stream.send(new Uint8Array([0x16, 0x03, 0x01, 0xff, 0x00, 0x0d, 0x0a, 0x0d, 0x0a, 0x47, 0x45]))
      const chunks: Uint8Array[] = []
      for await (const chunk of stream) chunks.push(chunk instanceof Uint8Array ? chunk : chunk.subarray())
      expect(Buffer.concat(chunks).toString('utf8')).toMatch(/^HTTP\/1\.1 400 /)
    } finally {
      await node.stop()
    }
    expect((await http(`${base}/hello/`)).status).toBe(200)
  })
})
