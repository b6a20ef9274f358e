import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Readable } from 'node:stream'
import type { Stream } from '@libp2p/interface'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { InstanceServer } from '../../proxy/instance-server.js'
import { createLogger } from '../../shared/log.js'
import type { MeshNode } from '../../shared/node.js'
import { HTTP_PROTOCOL } from '../../shared/protocols/http.js'
import { http, json, rawHttp } from '../helpers/http.js'
import { MeshFront } from '../helpers/mesh-front.js'
import { startTestNode } from '../helpers/nodes.js'
import { waitFor } from '../helpers/wait-for.js'

const MB = 1024 * 1024

/** An app that answers as told by the path, and shows how far a stalled transfer got. */
class App {
  readonly server: Server
  port = 0
  /** Bytes the app wrote of /big, and since when its writes have waited for a drain. */
  written = 0
  waitingSince: number | undefined
  /** Lets /sink start reading its upload, once one arrived. */
  readSink: (() => void) | undefined
  /** /slow requests that arrived. */
  slow = 0

  constructor () {
    this.server = createServer((req: IncomingMessage, res: ServerResponse) => { this.handle(req, res) })
  }

  async start (): Promise<this> {
    await new Promise<void>(resolve => this.server.listen(0, '127.0.0.1', resolve))
    this.port = (this.server.address() as AddressInfo).port
    return this
  }

  private handle (req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://x')
    if (url.pathname === '/sink') {
      // Reads nothing until let: the upload has to wait.
      req.pause()
      this.readSink = () => {
        let bytes = 0
        req.on('data', (chunk: Buffer) => { bytes += chunk.length })
        req.on('end', () => { res.end(String(bytes)) })
        req.resume()
      }
      return
    }
    if (url.pathname === '/slow') {
      this.slow++
      return
    }
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => chunks.push(chunk))
    req.on('end', () => {
      const parts = url.pathname.split('/')
      switch (parts[1]) {
        case 'status':
          res.writeHead(Number(parts[2]), { 'X-Status': parts[2] })
          res.end()
          return
        case 'trailers':
          res.writeHead(200, { Trailer: 'X-Checksum' })
          res.write('abc')
          res.addTrailers({ 'X-Checksum': 'abc' })
          res.end('def')
          return
        case 'close':
          res.writeHead(200, { Connection: 'close', 'Content-Length': '2' })
          res.end('ok')
          return
        case 'big':
          this.big(res, Number(parts[2]))
          return
      }
      res.setHeader('Content-Type', 'application/json')
      res.end(JSON.stringify({ method: req.method, url: req.url, headers: req.headers, rawHeaders: req.rawHeaders, body: Buffer.concat(chunks).toString('latin1'), trailers: req.rawTrailers }))
    })
  }

  /** `size` bytes, chunked, written only as fast as they are read. */
  private big (res: ServerResponse, size: number): void {
    const block = Buffer.alloc(64 * 1024, 7)
    this.written = 0
    const write = (): void => {
      this.waitingSince = undefined
      while (this.written < size) {
        const n = Math.min(block.length, size - this.written)
        this.written += n
        if (!res.write(n === block.length ? block : block.subarray(0, n))) {
          this.waitingSince = performance.now()
          res.once('drain', write)
          return
        }
      }
      res.end()
    }
    write()
  }
}

/** How a raw instance answers its `index`-th `/http/1.1` stream: what a real instance would not do. */
type RawHandler = (stream: Stream, index: number) => void

describe('relay over the mesh (real libp2p, a real instance server)', () => {
  let app: App
  let serverNode: MeshNode
  let clientNode: MeshNode
  let instance: InstanceServer
  let front: MeshFront

  beforeAll(async () => {
    app = await new App().start()
    serverNode = await startTestNode()
    clientNode = await startTestNode()
    instance = new InstanceServer({ node: serverNode, app: { host: '127.0.0.1', port: app.port }, log: createLogger('test', 'silent') })
    await instance.start()
    await clientNode.peerStore.merge(serverNode.peerId, { multiaddrs: serverNode.getMultiaddrs() })
    front = await new MeshFront(clientNode, serverNode.peerId, { responseTimeoutMs: 1000 }).start()
  })

  afterAll(async () => {
    await front?.stop()
    await instance?.stop(0)
    await Promise.all([serverNode?.stop(), clientNode?.stop()])
    await new Promise(resolve => app?.server.close(resolve))
  })

  it('relays a request with its headers, and reuses the stream for the next', async () => {
    const before = front.outcomes.length
    const first = await http(`${front.base}/echo?x=1`, { headers: ['Host', 'x', 'X-Custom', 'Keep-Case', 'Connection', 'X-Hop', 'X-Hop', 'secret'] })
    const second = await http(`${front.base}/echo?x=2`)
    expect(first.status).toBe(200)
    expect(first.headers.via).toBe('1.1 hyphae, 1.1 hyphae')
    const echo = json<{ url: string, rawHeaders: string[], headers: Record<string, string> }>(first)
    expect(echo.url).toBe('/echo?x=1')
    expect(echo.rawHeaders).toContain('X-Custom')
    expect(echo.headers['x-hop']).toBeUndefined()
    expect(echo.headers['x-forwarded-prefix']).toBe('/front')
    expect(json<{ url: string }>(second).url).toBe('/echo?x=2')
    const outcomes = front.outcomes.slice(before)
    expect(outcomes.map(o => [o.result?.status, o.sent, o.error])).toEqual([[200, true, undefined], [200, true, undefined]])
    expect(outcomes[1].reused).toBe(true)
  })

  it('carries a Content-Length body, and a chunked body on GET with its trailers', async () => {
    const post = await http(`${front.base}/echo`, { method: 'POST', body: 'hello', headers: { 'Content-Length': '5' } })
    expect(json<{ body: string, headers: Record<string, string> }>(post)).toMatchObject({ body: 'hello', headers: { 'content-length': '5' } })
    const answer = await rawHttp(front.port, 'GET /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n')
    expect(answer).toMatch(/^HTTP\/1\.1 200 /)
    const text = answer.slice(answer.indexOf('\r\n\r\n') + 4)
    expect(text).toContain('"body":"abcde"')
    expect(text).toContain('"trailers":["X-T","1"]')
  })

  it('carries response trailers to an HTTP/1.1 client, and the data alone to an HTTP/1.0 one', async () => {
    const result = await http(`${front.base}/trailers`)
    expect(result.body.toString()).toBe('abcdef')
    expect(result.trailers['x-checksum']).toBe('abc')
    const old = await rawHttp(front.port, 'GET /trailers HTTP/1.0\r\n\r\n')
    expect(old).toMatch(/^HTTP\/1\.1 200 /)
    expect(old.slice(old.indexOf('\r\n\r\n') + 4)).toBe('abcdef')
  })

  it('answers HEAD, 204 and 304 without a body, and the stream serves on', async () => {
    const head = await http(`${front.base}/echo`, { method: 'HEAD' })
    expect(head.status).toBe(200)
    expect(head.body.length).toBe(0)
    for (const status of [204, 304]) {
      const result = await http(`${front.base}/status/${status}`)
      expect(result.status).toBe(status)
      expect(result.headers['x-status']).toBe(String(status))
      expect(result.body.length).toBe(0)
    }
    const before = front.outcomes.length
    expect((await http(`${front.base}/echo`)).status).toBe(200)
    expect(front.outcomes[before].reused).toBe(true)
  })

  it('relays 100 Continue to a client that waits for it before its body', async () => {
    const { status, sawContinue, body } = await new Promise<{ status: number, sawContinue: boolean, body: string }>((resolve, reject) => {
      let sawContinue = false
      const req = request(`${front.base}/echo`, { method: 'POST', headers: { Expect: '100-continue', 'Content-Length': '5' }, agent: false })
      req.on('continue', () => { sawContinue = true; req.end('hello') })
      req.on('response', res => {
        let body = ''
        res.on('data', (chunk: Buffer) => { body += chunk.toString() })
        res.on('end', () => { resolve({ status: res.statusCode ?? 0, sawContinue, body }) })
      })
      req.on('error', reject)
      req.flushHeaders()
    })
    expect(sawContinue).toBe(true)
    expect(status).toBe(200)
    expect(JSON.parse(body)).toMatchObject({ body: 'hello' })
  })

  it('holds the instance back while the client does not read, then delivers every byte', async () => {
    const size = 64 * MB
    let received = 0
    const res = await new Promise<IncomingMessage>((resolve, reject) => {
      request(`${front.base}/big/${size}`, { agent: false }, resolve).on('error', reject).end()
    })
    res.pause()
    // The app's writes wait for a drain that does not come while the client reads nothing.
    await waitFor(() => app.waitingSince != null && performance.now() - app.waitingSince > 500, 'the app held back', 20_000)
    expect(app.written).toBeLessThan(48 * MB)
    await new Promise<void>((resolve, reject) => {
      res.on('data', (chunk: Buffer) => { received += chunk.length })
      res.on('end', resolve)
      res.on('error', reject)
      res.resume()
    })
    expect(received).toBe(size)
  })

  it('holds the client\'s upload back while the app does not read, then delivers every byte', async () => {
    const size = 64 * MB
    let pushed = 0
    const block = Buffer.alloc(64 * 1024, 1)
    const body = new Readable({
      read () {
        if (pushed >= size) {
          this.push(null)
          return
        }
        pushed += block.length
        this.push(block)
      }
    })
    const answer = http(`${front.base}/sink`, { method: 'PUT', body, headers: { 'Content-Length': String(size) }, timeoutMs: 30_000 })
    await waitFor(() => app.readSink != null, 'the upload reaching the app')
    // Nothing is read: what the client has pushed stops growing.
    let last = -1
    await waitFor(async () => {
      const now = pushed
      if (now === last) return true
      last = now
      await new Promise(resolve => setTimeout(resolve, 300))
      return undefined
    }, 'the upload stalling', 20_000)
    expect(pushed).toBeLessThan(48 * MB)
    app.readSink?.()
    const result = await answer
    expect(result.body.toString()).toBe(String(size))
    app.readSink = undefined
  })

  it('times a response out only once the request is sent, and says so', async () => {
    const before = front.outcomes.length
    const result = await http(`${front.base}/slow`)
    expect(result.status).toBe(502)
    const { error, sent } = front.outcomes[before]
    expect(sent).toBe(true)
    expect(error).toMatchObject({ phase: 'request', timedOut: true, reusedConnection: false, clientGone: false })
  })

  it('tells a client that went away from an instance failure', async () => {
    const before = front.outcomes.length
    const slowBefore = app.slow
    const req = request(`${front.base}/slow`, { agent: false })
    req.on('error', () => {})
    req.end()
    await waitFor(() => app.slow > slowBefore, 'the request reaching the app')
    req.destroy()
    const outcome = await waitFor(() => front.outcomes[before]?.error, 'the relay failing')
    expect(outcome).toMatchObject({ clientGone: true, timedOut: false })
  })

  it('fails requests in flight at once when the peer is dropped with them', async () => {
    const before = front.outcomes.length
    const slowBefore = app.slow
    const answer = http(`${front.base}/slow`)
    await waitFor(() => app.slow > slowBefore, 'the request reaching the app')
    front.agents.drop(serverNode.peerId, { inFlight: true })
    expect((await answer).status).toBe(502)
    expect(front.outcomes[before].error).toMatchObject({ phase: 'request', timedOut: false, reusedConnection: false, clientGone: false })
    // A fresh agent serves the next one.
    expect((await http(`${front.base}/echo`)).status).toBe(200)
  })
})

describe('relay over the mesh (raw instance streams)', () => {
  const nodes: MeshNode[] = []
  const fronts: MeshFront[] = []
  afterEach(async () => {
    await Promise.all(fronts.splice(0).map(async f => { await f.stop() }))
    await Promise.all(nodes.splice(0).map(async n => { await n.stop() }))
  })

  /** A client node and a front relaying to a server node whose streams `handler` answers. */
  async function mesh (handler: RawHandler, opts: { reuseStreams?: boolean } = {}): Promise<{ front: MeshFront, streams: Stream[] }> {
    const client = await startTestNode()
    const server = await startTestNode()
    nodes.push(client, server)
    const streams: Stream[] = []
    await server.handle(HTTP_PROTOCOL, (stream: Stream) => {
      streams.push(stream)
      handler(stream, streams.length - 1)
    })
    await client.peerStore.merge(server.peerId, { multiaddrs: server.getMultiaddrs() })
    const front = await new MeshFront(client, server.peerId, opts).start()
    fronts.push(front)
    return { front, streams }
  }

  const OK = (body: string, extra = ''): Buffer => Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n${extra}\r\n${body}`)

  it('says a pooled stream reset before any answer byte is stale, and a new one is not', async () => {
    const { front } = await mesh((stream, index) => {
      let requests = 0
      stream.addEventListener('message', () => {
        // Stream 0 answers its first request, then is reset under the second; stream 1 is reset at once.
        if (index === 0 && requests++ === 0) stream.send(OK('one'))
        else stream.abort(new Error('gone'))
      })
    })
    expect((await http(`${front.base}/a`)).body.toString()).toBe('one')
    expect((await http(`${front.base}/b`)).status).toBe(502)
    expect((await http(`${front.base}/c`)).status).toBe(502)
    expect(front.outcomes.map(o => o.error?.reusedConnection)).toEqual([undefined, true, false])
    expect(front.outcomes.map(o => o.error?.phase)).toEqual([undefined, 'request', 'request'])
  })

  it('does not reuse a stream whose answer said Connection: close', async () => {
    const { front, streams } = await mesh(stream => {
      stream.addEventListener('message', () => {
        stream.send(OK('bye', 'Connection: close\r\n'))
        stream.close().catch(() => {})
      }, { once: true })
    })
    expect((await http(`${front.base}/a`)).body.toString()).toBe('bye')
    expect((await http(`${front.base}/b`)).body.toString()).toBe('bye')
    expect(streams).toHaveLength(2)
    expect(front.outcomes.map(o => o.reused)).toEqual([false, false])
  })

  it('drops a pooled stream on which the instance sends bytes unasked', async () => {
    const { front, streams } = await mesh(stream => {
      stream.addEventListener('message', () => {
        stream.send(OK('fine'))
        setImmediate(() => { stream.send(Buffer.from('HTTP/1.1 200 OK\r\n')) })
      }, { once: true })
    })
    expect((await http(`${front.base}/a`)).body.toString()).toBe('fine')
    // The client resets the stream it can no longer trust.
    await waitFor(() => streams[0].status === 'reset', 'the client resetting the first stream')
    expect((await http(`${front.base}/b`)).body.toString()).toBe('fine')
    expect(streams).toHaveLength(2)
    expect(front.outcomes.map(o => o.reused)).toEqual([false, false])
  })

  it('reads a body delimited by the close of the stream, and does not reuse it', async () => {
    const { front, streams } = await mesh(stream => {
      stream.addEventListener('message', () => {
        stream.send(Buffer.from('HTTP/1.1 200 OK\r\n\r\nuntil the end'))
        stream.close().catch(() => {})
      }, { once: true })
    })
    expect((await http(`${front.base}/a`)).body.toString()).toBe('until the end')
    expect((await http(`${front.base}/b`)).body.toString()).toBe('until the end')
    expect(streams).toHaveLength(2)
  })

  it('sends one request per stream and ends its side after it, without reuse (spec style)', async () => {
    const { front, streams } = await mesh(stream => {
      const chunks: Buffer[] = []
      stream.addEventListener('message', evt => { chunks.push(Buffer.from(evt.data instanceof Uint8Array ? evt.data : evt.data.subarray())) })
      // Answers only once the client has ended its side: the request is whole.
      stream.addEventListener('remoteCloseWrite', () => {
        const text = Buffer.concat(chunks).toString()
        stream.send(OK(text.slice(0, text.indexOf(' HTTP/1.1'))))
        stream.close().catch(() => {})
      })
    }, { reuseStreams: false })
    expect((await http(`${front.base}/a`)).body.toString()).toBe('GET /a')
    expect((await http(`${front.base}/b`, { method: 'POST', body: 'xyz', headers: { 'Content-Length': '3' } })).body.toString()).toBe('POST /b')
    expect(streams).toHaveLength(2)
  })

  it('answers a malformed response with a failure before the response, not a stale stream', async () => {
    const { front } = await mesh(stream => {
      stream.addEventListener('message', () => { stream.send(Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx')) }, { once: true })
    })
    expect((await http(`${front.base}/a`)).status).toBe(502)
    expect(front.outcomes[0].error).toMatchObject({ phase: 'request', reusedConnection: false })
  })

  it('resets the answer to the client when the stream breaks mid-response', async () => {
    const { front } = await mesh(stream => {
      stream.addEventListener('message', () => {
        stream.send(Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc'))
        setImmediate(() => { stream.abort(new Error('gone')) })
      }, { once: true })
    })
    await expect(http(`${front.base}/a`)).rejects.toThrow()
    const error = await waitFor(() => front.outcomes[0]?.error, 'the relay failing')
    expect(error).toMatchObject({ phase: 'response', reusedConnection: false })
  })

  it('fails with phase connect when no stream can be opened', async () => {
    const { front } = await mesh(() => {})
    await nodes[1].stop()
    expect((await http(`${front.base}/a`)).status).toBe(502)
    expect(front.outcomes[0].error).toMatchObject({ phase: 'connect', clientGone: false })
    expect(front.outcomes[0].sent).toBe(false)
  })
})
