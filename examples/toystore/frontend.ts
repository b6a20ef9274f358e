#!/usr/bin/env node
// Toy store, service `frontend`: the only one clients talk to. It implements nothing itself:
// queries go to catalog, orders to order, both through the mesh ($HYPHAE_PROXY/<service>/...).
import { Agent, createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import {
  callJson, closeServer, HttpError, isApiBody, isEntryPoint, listen, parseOrderRequest, pathParam,
  readJson, runService, sendError, sendJson, serve, UpstreamError
} from './http-util.js'

export interface FrontendOptions {
  host?: string
  port: number
  /** Base URL of the mesh ($HYPHAE_PROXY). */
  proxy: string
  timeoutMs?: number
}

export class FrontendServer {
  private readonly server: Server
  // Reused connections to the local proxy: a new TCP connection per request would cost more
  // than the toy store's own work. Bounded, so a burst queues instead of opening thousands.
  private readonly agent = new Agent({ keepAlive: true, maxSockets: 128 })

  constructor (private readonly opts: FrontendOptions) {
    this.server = createServer(serve(async (req, res) => { await this.route(req, res) }))
  }

  async start (): Promise<number> {
    return await listen(this.server, this.opts.host ?? '127.0.0.1', this.opts.port)
  }

  async stop (): Promise<void> {
    await closeServer(this.server)
    this.agent.destroy()
  }

  private async route (req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = new URL(req.url ?? '/', 'http://localhost').pathname
    const method = req.method ?? 'GET'
    if (path === '/orders' && method === 'POST') {
      // Checked here as well, so that a bad request costs no trip through the mesh.
      const order = parseOrderRequest(await readJson(req))
      await this.forward(res, 'order', '/orders', 'POST', order)
      return
    }
    req.resume()
    if (method === 'GET') {
      const name = pathParam(path, '/products/')
      if (name !== undefined) { await this.forward(res, 'catalog', `/products/${encodeURIComponent(name)}`, 'GET'); return }
      const number = pathParam(path, '/orders/')
      if (number !== undefined) { await this.forward(res, 'order', `/orders/${encodeURIComponent(number)}`, 'GET'); return }
      if (path === '/healthz') { sendJson(res, 200, { data: { status: 'ok' } }); return }
    }
    sendError(res, 404, 'not found')
  }

  /**
   * Passes the service's own answer on as it came; the mesh's errors (it could not reach the
   * service), a failed call or a body of another shape become 502, a timeout 504. Never
   * retried, POST above all: a buy that timed out may have been made.
   */
  private async forward (res: ServerResponse, service: string, path: string, method: string, body?: unknown): Promise<void> {
    try {
      const reply = await callJson(`${this.opts.proxy}/${service}${path}`, { method, body, agent: this.agent, timeoutMs: this.opts.timeoutMs })
      if (reply.meshError === undefined && isApiBody(reply.body)) { sendJson(res, reply.status, reply.body); return }
      if (reply.meshError !== undefined && reply.status === 504) throw new HttpError(504, `${service} timed out`)
    } catch (err) {
      if (err instanceof HttpError) throw err
      if (err instanceof UpstreamError && err.kind === 'timeout') throw new HttpError(504, `${service} timed out`)
    }
    throw new HttpError(502, `${service} unavailable`)
  }
}

if (isEntryPoint(import.meta.url)) {
  runService('frontend', 8080, true, async env => {
    const frontend = new FrontendServer({ ...env, proxy: env.proxy ?? '' })
    return { port: await frontend.start(), stop: async () => { await frontend.stop() } }
  })
}
