import { request } from 'node:http'
import type { CID } from 'multiformats/cid'
import type { Logger } from '../shared/log.js'
import type { MeshNode } from '../shared/node.js'

export interface AdvertiserInit {
  node: MeshNode
  cid: CID
  service: string
  app: { host: string, port: number }
  healthPath: string
  log: Logger
  /** How often the app's health path is checked. */
  healthIntervalMs?: number
  /** Failed checks in a row after which the instance stops advertising. */
  unhealthyAfter?: number
  /** How often the provider record is put again while healthy: well before it expires. */
  reprovideMs?: number
}

const REJOIN_DEBOUNCE_MS = 300

/** One GET of the app's health path: healthy on any 2xx or 3xx within the timeout. */
export async function checkHealth (app: { host: string, port: number }, path: string, timeoutMs = 2000): Promise<boolean> {
  return await new Promise<boolean>(resolve => {
    const req = request({ host: app.host, port: app.port, path, method: 'GET', agent: false, timeout: timeoutMs }, res => {
      res.resume()
      resolve(res.statusCode != null && res.statusCode >= 200 && res.statusCode < 400)
    })
    req.on('timeout', () => { req.destroy(new Error('health check timed out')) })
    req.on('error', () => { resolve(false) })
    req.end()
  })
}

/**
 * Advertises the instance as a provider of its service CID while the app answers its health
 * path, and stops advertising when it does not.
 */
export class Advertiser {
  private timer: NodeJS.Timeout | undefined
  private rejoinTimer: NodeJS.Timeout | undefined
  private failures = 0
  private lastProvidedAt = 0
  private advertising = false
  private stopped = false
  private readonly firstAdvert = Promise.withResolvers<void>()
  private readonly healthIntervalMs: number
  private readonly unhealthyAfter: number
  private readonly reprovideMs: number

  constructor (private readonly init: AdvertiserInit) {
    this.healthIntervalMs = init.healthIntervalMs ?? 1000
    this.unhealthyAfter = init.unhealthyAfter ?? 3
    this.reprovideMs = init.reprovideMs ?? 3 * 60_000
  }

  get advertised (): boolean {
    return this.advertising
  }

  /** Resolves once the instance has first been advertised. */
  async whenAdvertised (): Promise<void> {
    await this.firstAdvert.promise
  }

  start (): void {
    this.stopped = false
    this.init.node.addEventListener('peer:identify', this.onPeerJoined)
    void this.tick()
  }

  /**
   * A peer that joins may be among the closest to our CID and not yet hold our provider
   * record: provide again soon (debounced), as Kademlia hands stored values to new neighbours.
   */
  private readonly onPeerJoined = (): void => {
    if (!this.advertising || this.rejoinTimer != null) return
    this.rejoinTimer = setTimeout(() => {
      this.rejoinTimer = undefined
      if (this.advertising && !this.stopped) this.provide().catch(err => { this.init.log.debug({ err: (err as Error).message }, 're-provide failed') })
    }, REJOIN_DEBOUNCE_MS)
  }

  /** Stops advertising: the node stops re-providing, so the record ages out of the DHT. */
  async stop (): Promise<void> {
    this.stopped = true
    clearTimeout(this.timer)
    clearTimeout(this.rejoinTimer)
    this.init.node.removeEventListener('peer:identify', this.onPeerJoined)
    if (this.advertising) {
      this.advertising = false
      await this.init.node.contentRouting.cancelReprovide(this.init.cid).catch(() => {})
    }
  }

  private async tick (): Promise<void> {
    const healthy = await checkHealth(this.init.app, this.init.healthPath)
    if (this.stopped) return
    try {
      if (healthy) {
        this.failures = 0
        if (!this.advertising || Date.now() - this.lastProvidedAt >= this.reprovideMs) await this.provide()
      } else if (++this.failures >= this.unhealthyAfter && this.advertising) {
        this.advertising = false
        await this.init.node.contentRouting.cancelReprovide(this.init.cid).catch(() => {})
        this.init.log.warn({ service: this.init.service, failures: this.failures }, 'app unhealthy: stopped advertising')
      }
    } catch (err) {
      this.init.log.warn({ service: this.init.service, err: (err as Error).message }, 'advertising failed; will retry')
    }
    if (!this.stopped) this.timer = setTimeout(() => { void this.tick() }, this.healthIntervalMs)
  }

  private async provide (): Promise<void> {
    const first = !this.advertising
    await this.init.node.contentRouting.provide(this.init.cid, { signal: AbortSignal.timeout(10_000) })
    if (this.stopped) return
    this.lastProvidedAt = Date.now()
    this.advertising = true
    if (first) {
      this.init.log.info({ service: this.init.service, cid: this.init.cid.toString() }, 'advertising instance')
      this.firstAdvert.resolve()
    }
  }
}
