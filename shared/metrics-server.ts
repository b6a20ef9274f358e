import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { Registry } from 'prom-client'
import { listenOnLoopback } from './listen.js'

export type MetricsRoute = (req: IncomingMessage) => { type: 'text' | 'json', body: string } | Promise<{ type: 'text' | 'json', body: string }>

export interface MetricsServerInit {
  port: number
  registry: Registry
  /** Extra GET routes, by exact path. `/metrics` is always the Prometheus text. */
  routes?: Record<string, MetricsRoute>
  /** The option that chose the port, named when it is in use. Default `--metrics port`. */
  flag?: string
}

/** Prometheus metrics and small status routes, on loopback only. */
export class MetricsServer {
  private readonly server: Server

  constructor (private readonly init: MetricsServerInit) {
    this.server = createServer((req, res) => { void this.handle(req, res) })
  }

  async start (): Promise<number> {
    return await listenOnLoopback(this.server, this.init.port, this.init.flag ?? '--metrics port')
  }

  async stop (): Promise<void> {
    await new Promise<void>(resolve => {
      this.server.close(() => { resolve() })
      this.server.closeAllConnections()
    })
  }

  private async handle (req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0]
    try {
      if (path === '/metrics') {
        const body = await this.init.registry.metrics()
        res.writeHead(200, { 'Content-Type': this.init.registry.contentType })
        res.end(body)
        return
      }
      const route = this.init.routes?.[path]
      if (route == null) {
        res.writeHead(404, { 'Content-Type': 'application/json' })
        res.end(JSON.stringify({ error: { code: 404, message: `no route ${path}` } }))
        return
      }
      const out = await route(req)
      res.writeHead(200, { 'Content-Type': out.type === 'json' ? 'application/json' : 'text/plain; charset=utf-8' })
      res.end(out.body)
    } catch (err) {
      res.writeHead(500, { 'Content-Type': 'application/json' })
      res.end(JSON.stringify({ error: { code: 500, message: (err as Error).message } }))
    }
  }
}
