import { Agent, createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { Duplex } from 'node:stream'
import type { Connection, Stream } from '@libp2p/interface'
import type { Logger } from '../shared/log.js'
import type { MeshNode } from '../shared/node.js'
import { answerClientError, sendError } from './errors.js'
import { HTTP_PROTOCOL, MAX_HTTP_STREAMS, SERVER_KEEP_ALIVE_MS } from '../shared/protocols/http.js'
import { hasNoBody, relay, RelayError } from './relay.js'
import { StreamSocket } from './stream-socket.js'

/**
 * What one untrusted peer, or all of them, may hold of this instance. Without these, a few
 * hundred streams that send half a request (or a body that never comes) pin every
 * connection to the app until the app times them out, if it ever does.
 */
export interface InstanceLimits {
  /** From a request's first byte to the end of its headers. */
  headersTimeoutMs: number
  /** Longest silence while a request body is arriving (not counting time the app is not reading). */
  bodyIdleTimeoutMs: number
  /** Requests being served at once, in all (each holds one connection to the app). */
  maxRequests: number
  /** Requests being served at once for one remote peer. */
  maxRequestsPerPeer: number
}

export const INSTANCE_LIMITS: InstanceLimits = { headersTimeoutMs: 10_000, bodyIdleTimeoutMs: 15_000, maxRequests: 256, maxRequestsPerPeer: 128 }

export interface InstanceServerInit {
  node: MeshNode
  /** The local app this proxy fronts. */
  app: { host: string, port: number }
  log: Logger
  /** Called as each request from the mesh starts and ends (with its status and duration), for idle tracking and metrics. */
  onRequest?: (event: 'start' | 'end', status?: number, durationMs?: number) => void
  limits?: Partial<InstanceLimits>
}

/** One stream being served, with its header deadline. */
interface Conn {
  socket: StreamSocket
  active: number
  headersTimer?: NodeJS.Timeout
}

/**
 * Serves `/http/1.1` streams from the mesh by forwarding them to the local app. Node's HTTP
 * server parses each stream, so both one-request streams (the libp2p HTTP spec) and pooled
 * keep-alive streams from hyphae peers work.
 */
export class InstanceServer {
  private readonly server: Server
  private readonly appAgent: Agent
  private readonly limits: InstanceLimits
  private readonly sockets = new Map<StreamSocket, Conn>()
  private readonly perPeer = new Map<string, number>()
  private readonly appHost: string
  private inFlight = 0
  private draining = false
  private idleWaiters: Array<() => void> = []

  constructor (private readonly init: InstanceServerInit) {
    this.limits = { ...INSTANCE_LIMITS, ...init.limits }
    this.appAgent = new Agent({ keepAlive: true, maxSockets: this.limits.maxRequests, maxFreeSockets: 64, scheduling: 'lifo' })
    this.appHost = `${init.app.host}:${init.app.port}`
    // Node's own header and request timeouts are checked by a timer that only a listening
    // server runs; ours is handed streams, so the deadlines are kept per stream below.
    // requireHostHeader: HTTP/1.0 requests may lack Host; one is supplied for the app.
    this.server = createServer({ keepAliveTimeout: SERVER_KEEP_ALIVE_MS, requestTimeout: 0, requireHostHeader: false })
    // A spec-style client half-closes after its request: answer it, then close.
    ;(this.server as Server & { httpAllowHalfOpen: boolean }).httpAllowHalfOpen = true
    this.server.on('request', this.onRequest)
    this.server.on('checkContinue', this.onRequest)
    // Protocol upgrades are not carried over the mesh. Without a listener Node neither answers
    // them nor reports a broken body behind one: the stream would hang until a deadline.
    this.server.on('upgrade', (_req: IncomingMessage, socket: Duplex) => {
      // Node has let go of the socket (its error listener too): a stream the peer resets now
      // would be an uncaught exception, the whole proxy down (found by the stream fuzzer).
      socket.on('error', (err: Error) => { init.log.debug({ err }, 'mesh stream failed after an upgrade request') })
      const body = JSON.stringify({ error: { code: 501, reason: 'upgrade_unsupported', message: 'protocol upgrades are not carried over the mesh' } })
      socket.end(`HTTP/1.1 501 Not Implemented\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`)
    })
    this.server.on('clientError', (err: Error, socket) => {
      init.log.debug({ err }, 'bad HTTP on a mesh stream')
      answerClientError(err, socket)
    })
  }

  get requestsInFlight (): number {
    return this.inFlight
  }

  async start (): Promise<void> {
    await this.init.node.handle(HTTP_PROTOCOL, this.onStream, { maxInboundStreams: MAX_HTTP_STREAMS, maxOutboundStreams: MAX_HTTP_STREAMS })
  }

  /**
   * Drains: takes no new streams, answers what is in flight (each answer asks the client to
   * close its stream, so pooled streams are not reused), then ends every stream cleanly so
   * the last bytes are flushed, and only then resets what is left.
   */
  async stop (drainMs = 10_000): Promise<void> {
    this.draining = true
    await this.init.node.unhandle(HTTP_PROTOCOL)
    if (this.inFlight > 0) {
      await new Promise<void>(resolve => {
        const timer = setTimeout(resolve, drainMs)
        this.idleWaiters.push(() => { clearTimeout(timer); resolve() })
      })
    }
    this.server.close()
    const closing = [...this.sockets.keys()].map(async socket => {
      socket.end()
      await new Promise<void>(resolve => {
        // Reset, not a quiet close: a client whose request crossed our end must learn it
        // will get no answer (and try elsewhere) rather than wait on a stream left half open.
        const timer = setTimeout(() => { socket.destroy(new Error('the instance is stopping')); resolve() }, 1000)
        socket.once('close', () => { clearTimeout(timer); resolve() })
      })
    })
    await Promise.all(closing)
    this.appAgent.destroy()
  }

  private readonly onStream = (stream: Stream, connection: Connection): void => {
    const socket = new StreamSocket(stream, connection.remotePeer.toString())
    const conn: Conn = { socket, active: 0 }
    this.sockets.set(socket, conn)
    // The first byte of a request starts its header deadline; the request event ends it.
    socket.onInbound = () => {
      if (conn.active === 0 && conn.headersTimer == null) {
        conn.headersTimer = setTimeout(() => {
          this.init.log.debug({ peer: socket.remotePeer }, 'request headers not complete in time: closing the stream')
          socket.destroy()
        }, this.limits.headersTimeoutMs)
        conn.headersTimer.unref()
      }
    }
    socket.once('close', () => {
      clearTimeout(conn.headersTimer)
      this.sockets.delete(socket)
    })
    this.server.emit('connection', socket)
  }

  private readonly onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    const socket = req.socket as unknown as StreamSocket
    const conn = this.sockets.get(socket)
    if (conn != null) {
      clearTimeout(conn.headersTimer)
      conn.headersTimer = undefined
    }
    const peer = socket.remotePeer
    const peerCount = this.perPeer.get(peer) ?? 0
    if (this.inFlight >= this.limits.maxRequests || peerCount >= this.limits.maxRequestsPerPeer) {
      // Fast, and the stream is not kept: its unread body must not hold anything.
      res.shouldKeepAlive = false
      sendError(res, 503, 'overloaded', this.inFlight >= this.limits.maxRequests
        ? `the instance is serving its maximum of ${this.limits.maxRequests} requests`
        : `the instance is serving its maximum of ${this.limits.maxRequestsPerPeer} requests for one peer`)
      return
    }
    this.inFlight++
    this.perPeer.set(peer, peerCount + 1)
    if (conn != null) conn.active++
    // Only a request with a body can stall in it: the rest pay for no timer.
    const stopBodyWatch = hasNoBody(req) ? undefined : this.watchBody(req, socket)
    // Draining: this answer is the stream's last, so the client opens a new one elsewhere.
    if (this.draining) res.shouldKeepAlive = false
    this.init.onRequest?.('start')
    const startedAt = performance.now()
    relay(req, res, {
      agent: this.appAgent,
      host: this.init.app.host,
      port: this.init.app.port,
      path: req.url ?? '/',
      forward: { peer, defaultHost: this.appHost }
    }).then(result => {
      this.finished(peer, conn, result.status, stopBodyWatch, startedAt)
    }, (err: RelayError) => {
      if (err.phase !== 'response' && !err.clientGone) {
        this.init.log.warn({ err, app: this.appHost }, 'app unreachable')
        sendError(res, 502, 'app_unreachable', `the instance's app did not answer: ${err.message}`)
      }
      this.finished(peer, conn, err.clientGone ? 499 : 502, stopBodyWatch, startedAt)
    })
  }

  /**
   * Ends a request whose body stops arriving: a peer may not hold a connection to the app
   * by sending a body slowly or not at all. Time the app spends not reading does not count.
   */
  private watchBody (req: IncomingMessage, socket: StreamSocket): () => void {
    const previous = socket.onInbound
    const timer = setTimeout(() => {
      if (socket.readingPaused) {
        timer.refresh()
        return
      }
      this.init.log.debug({ peer: socket.remotePeer }, 'request body stalled: closing the stream')
      socket.destroy()
    }, this.limits.bodyIdleTimeoutMs)
    timer.unref()
    const stop = (): void => {
      clearTimeout(timer)
      if (socket.onInbound === refresh) socket.onInbound = previous
    }
    const refresh = (): void => { timer.refresh(); previous?.() }
    socket.onInbound = refresh
    req.once('end', stop)
    req.once('close', stop)
    return stop
  }

  private finished (peer: string, conn: Conn | undefined, status: number, stopBodyWatch: (() => void) | undefined, startedAt: number): void {
    stopBodyWatch?.()
    this.inFlight--
    const left = (this.perPeer.get(peer) ?? 1) - 1
    if (left > 0) this.perPeer.set(peer, left)
    else this.perPeer.delete(peer)
    if (conn != null) conn.active--
    this.init.onRequest?.('end', status, performance.now() - startedAt)
    if (this.inFlight === 0) {
      for (const wake of this.idleWaiters.splice(0)) wake()
    }
  }
}
