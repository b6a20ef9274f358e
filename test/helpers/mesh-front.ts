import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { PeerId } from '@libp2p/interface'
import { sendError } from '../../proxy/errors.js'
import { MeshAgents } from '../../proxy/mesh-agents.js'
import { relay, RelayError, type RelayResult } from '../../proxy/relay.js'
import type { MeshNode } from '../../shared/node.js'

/** What one relayed request came to, as the front saw it. */
export interface FrontOutcome {
  result?: RelayResult
  error?: RelayError
  /** onResponseStart's argument: the answer came over a pooled stream. */
  reused?: boolean
  /** onRequestSent was called. */
  sent: boolean
}

/**
 * A client proxy's request path in small: an HTTP server on 127.0.0.1 that relays every
 * request to one peer with relay() over MeshAgents (no routing, no retry), answers a failure
 * before the response with a 502 and records how each request went.
 */
export class MeshFront {
  readonly agents: MeshAgents
  readonly outcomes: FrontOutcome[] = []
  private readonly server: Server
  port = 0

  constructor (node: MeshNode, private readonly peer: PeerId, opts: { reuseStreams?: boolean, responseTimeoutMs?: number } = {}) {
    this.agents = new MeshAgents(node, opts.reuseStreams ?? true)
    const handle = (req: IncomingMessage, res: ServerResponse): void => {
      const outcome: FrontOutcome = { sent: false }
      this.outcomes.push(outcome)
      relay(req, res, {
        agent: this.agents.for(this.peer),
        path: req.url ?? '/',
        forward: { forwardedFor: '127.0.0.1', forwardedPrefix: '/front' },
        responseTimeoutMs: opts.responseTimeoutMs,
        onRequestSent: () => { outcome.sent = true },
        onResponseStart: reused => { outcome.reused = reused }
      }).then(result => { outcome.result = result }, (err: RelayError) => {
        outcome.error = err
        if (err.phase !== 'response' && !err.clientGone) sendError(res, 502, 'instance_failed', err.message)
      })
    }
    this.server = createServer({ keepAliveTimeout: 5_000 })
    this.server.on('request', handle)
    this.server.on('checkContinue', handle)
  }

  async start (): Promise<this> {
    await new Promise<void>(resolve => this.server.listen(0, '127.0.0.1', resolve))
    this.port = (this.server.address() as { port: number }).port
    return this
  }

  get base (): string {
    return `http://127.0.0.1:${this.port}`
  }

  async stop (): Promise<void> {
    this.agents.stop()
    this.server.closeAllConnections()
    await new Promise(resolve => this.server.close(resolve))
  }
}
