import { Agent, createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { Connection, Stream } from '@libp2p/interface'
import type { Logger } from '../shared/log.js'
import type { MeshNode } from '../shared/node.js'
import { answerClientError, sendError } from './errors.js'
import { HTTP_PROTOCOL, MAX_HTTP_STREAMS, SERVER_KEEP_ALIVE_MS } from './mesh-agents.js'
import { relay, RelayError } from './relay.js'
import { StreamSocket } from './stream-socket.js'

export interface InstanceServerInit {
  node: MeshNode
  /** The local app this proxy fronts. */
  app: { host: string, port: number }
  log: Logger
  /** Called as each request from the mesh starts and ends, for idle tracking and metrics. */
  onRequest?: (event: 'start' | 'end', status?: number) => void
}

/**
 * Serves `/http/1.1` streams from the mesh by forwarding them to the local app. Node's HTTP
 * server parses each stream, so both one-request streams (the libp2p HTTP spec) and pooled
 * keep-alive streams from hyphae peers work.
 */
export class InstanceServer {
  private readonly server: Server
  private readonly appAgent = new Agent({ keepAlive: true, maxSockets: 256, maxFreeSockets: 64, scheduling: 'lifo' })
  private readonly sockets = new Set<StreamSocket>()
  private inFlight = 0
  private draining = false
  private idleWaiters: Array<() => void> = []

  constructor (private readonly init: InstanceServerInit) {
    this.server = createServer({ keepAliveTimeout: SERVER_KEEP_ALIVE_MS, requestTimeout: 0 })
    // A spec-style client half-closes after its request: answer it, then close.
    ;(this.server as Server & { httpAllowHalfOpen: boolean }).httpAllowHalfOpen = true
    this.server.on('request', this.onRequest)
    this.server.on('checkContinue', this.onRequest)
    this.server.on('clientError', (err: Error, socket) => {
      init.log.debug({ err: err.message }, 'bad HTTP on a mesh stream')
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
    const closing = [...this.sockets].map(async socket => {
      socket.end()
      await new Promise<void>(resolve => {
        const timer = setTimeout(() => { socket.destroy(); resolve() }, 1000)
        socket.once('close', () => { clearTimeout(timer); resolve() })
      })
    })
    await Promise.all(closing)
    this.appAgent.destroy()
  }

  private readonly onStream = (stream: Stream, connection: Connection): void => {
    const socket = new StreamSocket(stream, connection.remotePeer.toString())
    this.sockets.add(socket)
    socket.once('close', () => this.sockets.delete(socket))
    this.server.emit('connection', socket)
  }

  private readonly onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    this.inFlight++
    // Draining: this answer is the stream's last, so the client opens a new one elsewhere.
    if (this.draining) res.shouldKeepAlive = false
    this.init.onRequest?.('start')
    relay(req, res, {
      agent: this.appAgent,
      host: this.init.app.host,
      port: this.init.app.port,
      path: req.url ?? '/'
    }).then(result => {
      this.finished(result.status)
    }, (err: RelayError) => {
      if (err.phase !== 'response') {
        this.init.log.warn({ err: err.message, app: `${this.init.app.host}:${this.init.app.port}` }, 'app unreachable')
        sendError(res, 502, 'app_unreachable', `the instance's app did not answer: ${err.message}`)
      }
      this.finished(502)
    })
  }

  private finished (status: number): void {
    this.inFlight--
    this.init.onRequest?.('end', status)
    if (this.inFlight === 0) {
      for (const wake of this.idleWaiters.splice(0)) wake()
    }
  }
}
