import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Stream } from '@libp2p/interface'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { InstanceServer } from '../../proxy/instance-server.js'
import { createLogger } from '../../shared/log.js'
import type { MeshNode } from '../../shared/node.js'
import { HTTP_PROTOCOL } from '../../shared/protocols/http.js'
import { startTestNode } from '../helpers/nodes.js'
import { waitFor } from '../helpers/wait-for.js'

/** A raw `/http/1.1` stream: what came back so far, and whether the server closed its end. */
interface Wire {
  stream: Stream
  text: () => string
  closed: Promise<void>
  /** Resolves once what came back matches. */
  until: (pattern: RegExp) => Promise<string>
}

describe('InstanceServer (raw streams, real libp2p)', () => {
  let serverNode: MeshNode
  let clientNode: MeshNode
  let app: Server
  let appPort: number
  let instance: InstanceServer
  const ends: Array<{ status?: number }> = []
  let releaseLate: (() => void) | undefined

  beforeAll(async () => {
    app = createServer((req: IncomingMessage, res: ServerResponse) => {
      const chunks: Buffer[] = []
      req.on('data', (chunk: Buffer) => chunks.push(chunk))
      req.on('end', () => {
        if (req.url === '/chunked') {
          res.write('abc')
          res.end('def')
          return
        }
        if (req.url === '/late') {
          releaseLate = () => { res.end('late done') }
          return
        }
        if (req.url === '/slow') {
          // Answers for ever: the peer goes first.
          res.flushHeaders()
          return
        }
        res.end(`${req.method} ${req.url} ${Buffer.concat(chunks).length} ${req.headers.via}`)
      })
    })
    await new Promise<void>(resolve => app.listen(0, '127.0.0.1', resolve))
    appPort = (app.address() as AddressInfo).port
    serverNode = await startTestNode()
    clientNode = await startTestNode()
    instance = new InstanceServer({
      node: serverNode,
      app: { host: '127.0.0.1', port: appPort },
      log: createLogger('instance-test', 'silent'),
      onRequest: (event, status) => { if (event === 'end') ends.push({ status }) }
    })
    await instance.start()
  })

  afterAll(async () => {
    await instance?.stop(1000)
    await clientNode?.stop()
    await serverNode?.stop()
    app?.closeAllConnections()
    await new Promise(resolve => app?.close(resolve))
  })

  async function open (): Promise<Wire> {
    const stream = await clientNode.dialProtocol(serverNode.getMultiaddrs()[0], HTTP_PROTOCOL, { signal: AbortSignal.timeout(5000) })
    let received = ''
    const waiters = new Set<() => void>()
    stream.addEventListener('message', evt => {
      received += Buffer.from(evt.data.subarray()).toString('latin1')
      for (const wake of waiters) wake()
    })
    const closed = new Promise<void>(resolve => {
      stream.addEventListener('remoteCloseWrite', () => { resolve() })
      stream.addEventListener('close', () => { resolve() })
    })
    const until = async (pattern: RegExp): Promise<string> => await new Promise<string>((resolve, reject) => {
      const check = (): void => {
        if (!pattern.test(received)) return
        waiters.delete(check)
        resolve(received)
      }
      waiters.add(check)
      check()
      closed.then(() => { if (waiters.delete(check)) reject(new Error(`closed with ${JSON.stringify(received)}`)) }, reject)
    })
    return { stream, text: () => received, closed, until }
  }

  const send = (wire: Wire, text: string): void => { wire.stream.send(Buffer.from(text, 'latin1')) }

  it('answers pipelined requests one at a time, in order', async () => {
    const wire = await open()
    send(wire, 'GET /one HTTP/1.1\r\nHost: a\r\n\r\nPOST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nxyzGET /three HTTP/1.1\r\nHost: a\r\n\r\n')
    const text = await wire.until(/GET \/three/)
    const bodies = [...text.matchAll(/(?:GET|POST) \/\w+ \d+/g)].map(m => m[0])
    expect(bodies).toEqual(['GET /one 0', 'POST /two 3', 'GET /three 0'])
    expect(text).toMatch(/^HTTP\/1\.1 200 OK\r\n/)
    expect(text).toContain('Via: 1.1 hyphae')
    wire.stream.abort(new Error('done'))
  })

  it('answers an HTTP/1.0 client without chunked framing, and closes after', async () => {
    const wire = await open()
    send(wire, 'GET /chunked HTTP/1.0\r\n\r\n')
    await wire.closed
    const text = wire.text()
    expect(text).toMatch(/^HTTP\/1\.1 200 OK\r\n/)
    expect(text.toLowerCase()).not.toContain('transfer-encoding')
    expect(text).toContain('Connection: close\r\n')
    expect(text.slice(text.indexOf('\r\n\r\n') + 4)).toBe('abcdef')
  })

  it('relays 100 Continue, then the final answer', async () => {
    const wire = await open()
    send(wire, 'PUT /upload HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n')
    await wire.until(/^HTTP\/1\.1 100 Continue\r\n/)
    send(wire, 'hello')
    const text = await wire.until(/PUT \/upload 5/)
    expect(text).toMatch(/^HTTP\/1\.1 100 Continue\r\n[^]*\r\n\r\nHTTP\/1\.1 200 OK\r\n/)
    wire.stream.abort(new Error('done'))
  })

  it('refuses a smuggling attempt with a 400 and closes, leaving the app untouched', async () => {
    const wire = await open()
    send(wire, 'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n')
    await wire.closed
    expect(wire.text()).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/)
    expect(wire.text()).toContain('Connection: close\r\n')
    expect(wire.text()).not.toContain('smuggled')
  })

  it('counts a peer that resets mid-response as gone (499), and closes its app connection', async () => {
    const wire = await open()
    const before = ends.length
    send(wire, 'GET /slow HTTP/1.1\r\nHost: a\r\n\r\n')
    await wire.until(/^HTTP\/1\.1 200 OK\r\n/)
    wire.stream.abort(new Error('gone'))
    await waitFor(() => ends.length > before, 'the request to end', 5000)
    expect(ends[ends.length - 1].status).toBe(499)
    expect(instance.requestsInFlight).toBe(0)
  })

  it('answers 502 app_unreachable when the app is down, and keeps the stream', async () => {
    const down = createServer()
    await new Promise<void>(resolve => down.listen(0, '127.0.0.1', resolve))
    const port = (down.address() as AddressInfo).port
    await new Promise(resolve => down.close(resolve))
    const node = await startTestNode()
    const other = new InstanceServer({ node, app: { host: '127.0.0.1', port }, log: createLogger('instance-test', 'silent') })
    await other.start()
    try {
      const stream = await clientNode.dialProtocol(node.getMultiaddrs()[0], HTTP_PROTOCOL, { signal: AbortSignal.timeout(5000) })
      let received = ''
      const answered = new Promise<void>(resolve => {
        stream.addEventListener('message', evt => {
          received += Buffer.from(evt.data.subarray()).toString('latin1')
          if (/"code":502/.test(received)) resolve()
        })
      })
      stream.send(Buffer.from('GET / HTTP/1.1\r\nHost: a\r\n\r\n'))
      await answered
      expect(received).toMatch(/^HTTP\/1\.1 502 Bad Gateway\r\n/)
      expect(received).toContain('X-Hyphae-Error: app_unreachable\r\n')
      expect(received).not.toContain('Connection: close')
      expect(stream.writeStatus).toBe('writable')
      stream.abort(new Error('done'))
    } finally {
      await other.stop(100)
      await node.stop()
    }
  })

  it('drains on stop: the answer in flight says Connection: close, then the stream closes', async () => {
    const node = await startTestNode()
    const draining = new InstanceServer({ node, app: { host: '127.0.0.1', port: appPort }, log: createLogger('instance-test', 'silent') })
    await draining.start()
    const stream = await clientNode.dialProtocol(node.getMultiaddrs()[0], HTTP_PROTOCOL, { signal: AbortSignal.timeout(5000) })
    let received = ''
    stream.addEventListener('message', evt => { received += Buffer.from(evt.data.subarray()).toString('latin1') })
    const closed = new Promise<void>(resolve => { stream.addEventListener('remoteCloseWrite', () => { resolve() }) })
    stream.send(Buffer.from('GET /late HTTP/1.1\r\nHost: a\r\n\r\n'))
    const release = await waitFor(() => releaseLate, 'the app to get the request', 5000)
    expect(draining.requestsInFlight).toBe(1)
    const stopped = draining.stop(5000)
    release()
    await stopped
    await closed
    expect(received).toMatch(/^HTTP\/1\.1 200 OK\r\n/)
    expect(received).toContain('Connection: close\r\n')
    expect(received).toContain('late done')
    expect(draining.requestsInFlight).toBe(0)
    await node.stop()
  })
})
