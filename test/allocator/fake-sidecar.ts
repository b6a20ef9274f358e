import { createServer, type Server } from 'node:http'
import type { Sidecar } from '../../allocator/supervisor.js'

/** A stand-in for the server proxy: its metrics port answers whatever idle time the test sets. */
export class FakeSidecar implements Sidecar {
  readonly peerId: string
  readonly multiaddrs: string[]
  idleSeconds = 0
  idleQueries = 0
  stopped = false
  readonly exited: Promise<void>
  private markExited!: () => void
  private readonly server: Server
  private port = 0

  constructor (readonly appHealthyAtStart: boolean, n: number) {
    this.peerId = `12D3KooWfake${n}`
    this.multiaddrs = [`/ip4/127.0.0.1/tcp/${4000 + n}/p2p/${this.peerId}`]
    this.exited = new Promise(resolve => { this.markExited = resolve })
    this.server = createServer((_req, res) => {
      this.idleQueries++
      res.end(`${this.idleSeconds}\n`)
    })
  }

  get metricsPort (): number { return this.port }

  async listen (): Promise<void> {
    await new Promise<void>(resolve => this.server.listen(0, '127.0.0.1', resolve))
    this.port = (this.server.address() as { port: number }).port
  }

  /** The proxy dying on its own. */
  async crash (): Promise<void> {
    await this.close()
    this.markExited()
  }

  async stop (): Promise<void> {
    this.stopped = true
    await this.close()
    this.markExited()
  }

  private async close (): Promise<void> {
    if (!this.server.listening) return
    await new Promise<void>(resolve => { this.server.close(() => { resolve() }); this.server.closeAllConnections() })
  }
}
