import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { afterEach, describe, expect, it } from 'vitest'
import { AppPool, type AppHandler, type AppLease } from '../../proxy/app-pool.js'
import { findHeadEnd, parseResponseHead } from '../../proxy/http1-head.js'
import { waitFor } from '../helpers/wait-for.js'

/** A node:http app; answers `<remote port of the connection> <request number on it>`. */
interface App {
  port: number
  server: Server
  /** Connections the app accepted, in order. */
  connections: Socket[]
  requests: number
}

const apps: App[] = []
const pools: AppPool[] = []

async function startApp (handle?: (req: IncomingMessage, res: ServerResponse, nth: number) => void): Promise<App> {
  const perSocket = new WeakMap<Socket, number>()
  const app: App = { port: 0, server: createServer(), connections: [], requests: 0 }
  app.server.on('connection', (socket: Socket) => { app.connections.push(socket) })
  app.server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    app.requests++
    const nth = (perSocket.get(req.socket) ?? 0) + 1
    perSocket.set(req.socket, nth)
    req.resume()
    req.on('end', () => {
      if (handle != null) {
        handle(req, res, nth)
        return
      }
      res.end(`${req.socket.remotePort} ${nth}`)
    })
  })
  await new Promise<void>(resolve => app.server.listen(0, '127.0.0.1', resolve))
  app.port = (app.server.address() as AddressInfo).port
  apps.push(app)
  return app
}

function poolFor (app: { port: number }, opts: { max?: number, idleMs?: number } = {}): AppPool {
  const pool = new AppPool({ host: '127.0.0.1', port: app.port, max: opts.max ?? 8, idleMs: opts.idleMs })
  pools.push(pool)
  return pool
}

interface Outcome {
  lease: AppLease
  /** The response body, once whole; rejects with what the handler was told on failure. */
  body: Promise<string>
}

/** Sends a GET (or a POST with a body) and collects the response, without releasing the lease. */
function send (pool: AppPool, opts: { body?: string, replayable?: boolean } = {}): Outcome {
  let resolve: (body: string) => void = () => {}
  let reject: (err: Error) => void = () => {}
  const body = new Promise<string>((res, rej) => { resolve = res; reject = rej })
  let received = Buffer.alloc(0)
  const handler: AppHandler = {
    onData: chunk => {
      received = Buffer.concat([received, chunk])
      const end = findHeadEnd(received)
      if (end === -1) return
      const length = parseResponseHead(received, end).contentLength ?? 0
      if (received.length >= end + length) resolve(received.subarray(end, end + length).toString())
    },
    onEnd: () => { reject(new Error('ended')) },
    onError: err => { reject(err) },
    onDrain: () => {}
  }
  const head = opts.body == null
    ? 'GET / HTTP/1.1\r\nHost: app\r\n\r\n'
    : `POST / HTTP/1.1\r\nHost: app\r\nContent-Length: ${opts.body.length}\r\n\r\n`
  const lease = pool.request(Buffer.from(head), handler, opts.replayable ?? opts.body == null)
  if (lease == null) throw new Error('no connection')
  if (opts.body != null) lease.write(Buffer.from(opts.body))
  return { lease, body }
}

async function roundTrip (pool: AppPool): Promise<{ port: number, nth: number, reused: boolean }> {
  const { lease, body } = send(pool)
  const [port, nth] = (await body).split(' ').map(Number)
  const reused = lease.wasReused
  lease.release(true)
  return { port, nth, reused }
}

afterEach(async () => {
  for (const pool of pools.splice(0)) pool.destroy()
  await Promise.all(apps.splice(0).map(async app => {
    app.server.closeAllConnections()
    await new Promise(resolve => app.server.close(resolve))
  }))
})

describe('AppPool', () => {
  it('reuses the connection released last first', async () => {
    const app = await startApp()
    const pool = poolFor(app)
    const a = send(pool)
    const b = send(pool)
    const [portA, portB] = await Promise.all([a.body, b.body].map(async body => Number((await body).split(' ')[0])))
    expect(portA).not.toBe(portB)
    a.lease.release(true)
    b.lease.release(true)
    expect(pool.idleCount).toBe(2)
    const next = await roundTrip(pool)
    expect(next).toEqual({ port: portB, nth: 2, reused: true })
    expect(app.connections).toHaveLength(2)
  })

  it('opens no more than its cap, and frees a place when a lease is released', async () => {
    const app = await startApp()
    const pool = poolFor(app, { max: 1 })
    const first = send(pool)
    await first.body
    expect(pool.request(Buffer.from('GET / HTTP/1.1\r\n\r\n'), { onData () {}, onEnd () {}, onError () {}, onDrain () {} }, true)).toBeUndefined()
    first.lease.release(true)
    expect(await roundTrip(pool)).toMatchObject({ nth: 2, reused: true })
    expect(pool.size).toBe(1)
  })

  it('closes a connection that is not reusable instead of keeping it', async () => {
    const app = await startApp()
    const pool = poolFor(app)
    const { lease, body } = send(pool)
    await body
    lease.release(false)
    expect(pool.size).toBe(0)
    expect(await roundTrip(pool)).toMatchObject({ nth: 1, reused: false })
    expect(app.connections).toHaveLength(2)
  })

  it('closes idle connections after idleMs (or the app\'s shorter Keep-Alive)', async () => {
    const app = await startApp()
    const pool = poolFor(app, { idleMs: 150 })
    await roundTrip(pool)
    const releasedAt = performance.now()
    await new Promise(resolve => app.connections[0].once('close', resolve))
    expect(performance.now() - releasedAt).toBeGreaterThanOrEqual(140)
    expect(pool.size).toBe(0)
    expect(pool.idleCount).toBe(0)

    const { lease, body } = send(pool)
    await body
    // The app said it keeps idle connections 1 s: a hint of 0 ms left closes it at once.
    lease.release(true, 0)
    expect(pool.size).toBe(0)
  })

  it('lets go of a connection the app closes while it is idle', async () => {
    const app = await startApp()
    const pool = poolFor(app)
    await roundTrip(pool)
    expect(pool.idleCount).toBe(1)
    app.connections[0].destroy()
    await waitFor(() => pool.size === 0, 'the pool to see the close', 5000)
    expect(pool.idleCount).toBe(0)
    expect(await roundTrip(pool)).toMatchObject({ nth: 1, reused: false })
  })

  it('sends a bodiless request again, once, on a new connection when a reused one fails before any answer', async () => {
    // The app drops each connection at its second request, as one closing an idle connection
    // just as a request goes out on it would.
    const app = await startApp((req, res, nth) => {
      if (nth === 2) req.socket.destroy()
      else res.end(`${req.socket.remotePort} ${nth}`)
    })
    const pool = poolFor(app)
    const first = await roundTrip(pool)
    const second = await roundTrip(pool)
    expect(second.port).not.toBe(first.port)
    expect(second.nth).toBe(1)
    expect(app.requests).toBe(3)
    expect(app.connections).toHaveLength(2)
  })

  it('does not send a request with a body again', async () => {
    const app = await startApp((req, res, nth) => {
      if (nth === 2) req.socket.destroy()
      else res.end(`${req.socket.remotePort} ${nth}`)
    })
    const pool = poolFor(app)
    await roundTrip(pool)
    const { body } = send(pool, { body: 'payload' })
    await expect(body).rejects.toThrow()
    expect(app.requests).toBe(2)
    expect(app.connections).toHaveLength(1)
  })

  it('does not send a request again when a new connection fails, nor when the answer had started', async () => {
    const app = await startApp((req, res, nth) => {
      if (nth === 1) req.socket.destroy()
    })
    const pool = poolFor(app)
    await expect(send(pool).body).rejects.toThrow()
    expect(app.requests).toBe(1)

    // An answer cut short on a reused connection: the request was read, it is not sent again.
    const cut = await startApp((req, res, nth) => {
      if (nth === 1) {
        res.end('1')
        return
      }
      res.writeHead(200, { 'Content-Length': 100 })
      res.write('partial')
      setImmediate(() => req.socket.destroy())
    })
    const cutPool = poolFor(cut)
    const warm = send(cutPool)
    await warm.body
    warm.lease.release(true)
    await expect(send(cutPool).body).rejects.toThrow()
    expect(cut.requests).toBe(2)
  })

  it('reports an app that is not listening', async () => {
    const app = await startApp()
    const port = app.port
    await new Promise(resolve => app.server.close(resolve))
    const pool = poolFor({ port })
    await expect(send(pool).body).rejects.toThrow(/ECONNREFUSED/)
    expect(pool.size).toBe(0)
  })

  it('closes everything when destroyed, and takes no more requests', async () => {
    const app = await startApp()
    const pool = poolFor(app)
    await roundTrip(pool)
    const busy = send(pool)
    await busy.body
    pool.destroy()
    await waitFor(() => app.connections.every(c => c.destroyed), 'the app to see both connections close', 5000)
    expect(pool.request(Buffer.from('GET / HTTP/1.1\r\n\r\n'), { onData () {}, onEnd () {}, onError () {}, onDrain () {} }, true)).toBeUndefined()
  })
})
