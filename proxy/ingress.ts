import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import { MeshError } from '../shared/errors.js'
import { listenOn, listenOnLoopback } from '../shared/listen.js'
import type { Logger } from '../shared/log.js'
import { SERVICE_NAME } from '../shared/registry/record.js'
import type { RecordSource } from '../shared/registry/registry.js'
import { answerClientError, sendError } from './errors.js'
import type { MeshAgents } from './mesh-agents.js'
import { mayRetry, relay, RelayError } from './relay.js'
import type { RetryBudget } from './retry-budget.js'
import type { Router } from './router.js'

/**
 * The metric label of requests for no known service: names come from clients, and a label per
 * made-up name would grow the metrics without bound.
 */
export const UNKNOWN_SERVICE = 'unknown'

/** Status recorded for a request whose client went away first (nginx's convention). */
export const CLIENT_CLOSED = 499

export interface RequestObserver {
  (service: string, status: number, startedAt: number, retried: boolean, from?: string): void
}

export interface PickObserver {
  (service: string, rttMs: number): void
}

export interface IngressInit {
  port: number
  /**
   * Where to listen: 127.0.0.1 unless a container's sidecar door, which must listen on the
   * container network's gateway and then admits only that container's address.
   */
  host?: string
  /** Whether a connection from this remote address may send; default: any (loopback only). */
  admit?: (remoteAddress: string) => boolean
  /** The service whose instance sends through this ingress, for metrics. */
  from?: string
  registry: RecordSource
  router: Router
  agents: MeshAgents
  log: Logger
  /** Time allowed for an instance to start answering a request. */
  responseTimeoutMs?: number
  /** Caps retries across all requests (a sick mesh is not flooded); none: one retry each. */
  retryBudget?: RetryBudget
  observe?: RequestObserver
  observePick?: PickObserver
}

/** Time allowed for an instance to start answering a request. */
export const DEFAULT_RESPONSE_TIMEOUT_MS = 30_000

/** Attempts per request: the first, and one retry on another instance (DESIGN.md). */
const MAX_ATTEMPTS = 2

export interface AppTarget {
  app: string
  /** The request target with the app prefix removed: `/hello/a/b?x=1` → `/a/b?x=1`. */
  path: string
}

/** Splits `/<app>/<rest>`; a MeshError 400 when there is no valid app name. */
export function parseAppTarget (url: string | undefined): AppTarget {
  let target = url ?? ''
  if (!target.startsWith('/')) {
    // Absolute form, as a client configured to use us as an HTTP proxy sends it.
    try {
      const parsed = new URL(target)
      target = parsed.pathname + parsed.search
    } catch {
      throw new MeshError(400, 'bad_target', 'the request target is not a path')
    }
  }
  const end = target.slice(1).search(/[/?]/)
  const app = end === -1 ? target.slice(1) : target.slice(1, end + 1)
  if (app === '') throw new MeshError(400, 'no_app', 'no app name: send requests to /<app-name>/<path>')
  if (!SERVICE_NAME.test(app)) throw new MeshError(400, 'bad_app', `'${app.slice(0, 80)}' is not a valid app name (^[a-z0-9][a-z0-9-]{0,62}$)`)
  const rest = end === -1 ? '' : target.slice(end + 1)
  return { app, path: rest.startsWith('/') ? rest : `/${rest}` }
}

/**
 * The client side of the request path: plain HTTP from the local app on 127.0.0.1 →
 * registry record → best instance → `/http/1.1` stream. Only loopback is ever bound.
 */
export class Ingress {
  private readonly server: Server
  private readonly responseTimeoutMs: number

  constructor (private readonly init: IngressInit) {
    this.responseTimeoutMs = init.responseTimeoutMs ?? DEFAULT_RESPONSE_TIMEOUT_MS
    this.server = createServer({ keepAliveTimeout: 5_000 })
    this.server.on('request', this.onRequest)
    this.server.on('checkContinue', this.onRequest)
    this.server.on('clientError', answerClientError)
    const admit = init.admit
    if (admit != null) {
      this.server.on('connection', (socket: Socket) => {
        if (!admit(socket.remoteAddress ?? '')) socket.destroy()
      })
    }
  }

  async start (): Promise<number> {
    const host = this.init.host ?? '127.0.0.1'
    if (host === '127.0.0.1') return await listenOnLoopback(this.server, this.init.port)
    if (this.init.admit == null) throw new Error(`an ingress on ${host} must admit only its own clients`)
    return await listenOn(this.server, host, this.init.port)
  }

  async stop (): Promise<void> {
    await new Promise<void>(resolve => {
      this.server.close(() => { resolve() })
      this.server.closeIdleConnections()
    })
  }

  private readonly onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    const startedAt = performance.now()
    this.handle(req, res).then(({ service, status, retried }) => {
      this.init.observe?.(service, status, startedAt, retried, this.init.from)
    }, (err: Error) => {
      this.init.log.error({ err }, 'request handling failed')
      sendError(res, 500, 'internal', 'internal proxy error')
    })
  }

  private async handle (req: IncomingMessage, res: ServerResponse): Promise<{ service: string, status: number, retried: boolean }> {
    let target: AppTarget
    try {
      target = parseAppTarget(req.url)
    } catch (err) {
      return this.fail(res, UNKNOWN_SERVICE, err as MeshError, false)
    }
    let record
    try {
      record = await this.init.registry.resolve(target.app)
    } catch (err) {
      if (err instanceof MeshError) return this.fail(res, UNKNOWN_SERVICE, err, false)
      throw err
    }
    if (record == null) {
      return this.fail(res, UNKNOWN_SERVICE, new MeshError(404, 'unknown_service', `no service named '${target.app}' in the registry`), false)
    }

    const { router, agents, retryBudget } = this.init
    retryBudget?.deposit()
    const tried = new Set<string>()
    for (let attempt = 1; ; attempt++) {
      let handle
      try {
        handle = await router.acquire(record, tried)
      } catch (err) {
        if (err instanceof MeshError) return this.fail(res, target.app, err, attempt > 1)
        throw err
      }
      const { peer } = handle
      this.init.observePick?.(target.app, peer.rttMs)
      try {
        const result = await relay(req, res, {
          agent: agents.for(peer.id),
          path: target.path,
          forward: { forwardedFor: req.socket.remoteAddress ?? '127.0.0.1', forwardedPrefix: `/${target.app}` },
          responseTimeoutMs: this.responseTimeoutMs,
          onRequestSent: () => { handle.sent() },
          onResponseStart: reused => { handle.responded(reused) }
        })
        handle.completed(result.status)
        return { service: target.app, status: result.status, retried: attempt > 1 }
      } catch (err) {
        if (!(err instanceof RelayError)) throw err
        // The client gave up: nothing to hold against the instance, no one to answer.
        if (err.clientGone) return { service: target.app, status: CLIENT_CLOSED, retried: attempt > 1 }
        tried.add(peer.key)
        handle.failed(err.phase === 'connect' ? 'unreachable' : err.reusedConnection ? 'stale_stream' : 'failed')
        this.init.log.warn({ service: target.app, peer: peer.key, phase: err.phase, err }, 'instance failed a request')
        if (attempt < MAX_ATTEMPTS && mayRetry(req, err) && (retryBudget?.tryWithdraw() ?? true)) continue
        if (err.timedOut) return this.fail(res, target.app, new MeshError(504, 'timeout', `the instance of '${target.app}' did not answer within ${this.responseTimeoutMs} ms`), attempt > 1)
        return this.fail(res, target.app, new MeshError(502, 'instance_failed', `the instance of '${target.app}' failed mid-request: ${err.message}`), attempt > 1)
      } finally {
        handle.release()
      }
    }
  }

  private fail (res: ServerResponse, service: string, err: MeshError, retried: boolean): { service: string, status: number, retried: boolean } {
    sendError(res, err.status, err.code, err.message)
    return { service, status: err.status, retried }
  }

}
