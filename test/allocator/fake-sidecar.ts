import type { Sidecar } from '../../allocator/supervisor.js'
import type { InstanceStats } from '../../shared/protocols/status.js'

/** A stand-in for the server proxy: it reports whatever idle time the test sets. */
export class FakeSidecar implements Sidecar {
  readonly peerId: string
  readonly multiaddrs: string[]
  idleSeconds = 0
  idleQueries = 0
  stopped = false
  /** When set, stop() waits for it: a sidecar slow to go away. */
  stopHeldUntil?: Promise<void>
  readonly exited: Promise<void>
  private markExited!: () => void
  private running = true

  constructor (readonly appHealthyAtStart: boolean, n: number) {
    this.peerId = `12D3KooWfake${n}`
    this.multiaddrs = [`/ip4/127.0.0.1/tcp/${4000 + n}/p2p/${this.peerId}`]
    this.exited = new Promise(resolve => { this.markExited = resolve })
  }

  async stats (): Promise<InstanceStats | undefined> {
    if (!this.running) return undefined
    return { ok: 0, failed: 0, total: 0, inFlight: 0, rps: 0, avgMs: null, p99Ms: null, idleS: this.idleSeconds }
  }

  async idle (): Promise<number | undefined> {
    if (!this.running) return undefined
    this.idleQueries++
    return this.idleSeconds
  }

  /** The proxy dying on its own. */
  async crash (): Promise<void> {
    this.running = false
    this.markExited()
  }

  async stop (): Promise<void> {
    this.stopped = true
    await this.stopHeldUntil
    this.running = false
    this.markExited()
  }
}
