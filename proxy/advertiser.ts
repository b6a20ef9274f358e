import type { CID } from 'multiformats/cid'
import { Announcer } from '../shared/announcer.js'
import { probeHealth } from '../shared/health.js'
import type { Logger } from '../shared/log.js'
import type { MeshNode } from '../shared/node.js'

/** How often the app's health path is checked. */
export const DEFAULT_HEALTH_INTERVAL_MS = 1000

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
  reprovideMs?: number
}

/**
 * Advertises the instance as a provider of its service CID while the app answers its health
 * path, and stops advertising when it does not.
 */
export class Advertiser {
  private timer: NodeJS.Timeout | undefined
  private failures = 0
  private stopped = false
  /** Whether the current advertisement was logged (once per healthy period). */
  private reported = false
  private readonly announcer: Announcer
  private readonly firstAdvert = Promise.withResolvers<void>()
  /** Resolves when the app first passed its health check and announcing began. */
  private readonly firstHealthy = Promise.withResolvers<void>()
  private readonly healthIntervalMs: number
  private readonly unhealthyAfter: number

  constructor (private readonly init: AdvertiserInit) {
    this.healthIntervalMs = init.healthIntervalMs ?? DEFAULT_HEALTH_INTERVAL_MS
    this.unhealthyAfter = init.unhealthyAfter ?? 3
    this.announcer = new Announcer({ node: init.node, cid: init.cid, log: init.log, reprovideMs: init.reprovideMs })
  }

  get advertised (): boolean {
    return this.announcer.announced
  }

  /**
   * Resolves once the instance has first been advertised; with `maxWaitMs`, at the latest that
   * long after the app was found healthy. Putting the provider record waits for the DHT's
   * closest peers, and one hung peer holds that up for seconds: a cold start need not wait
   * for it (its requester is given the instance directly; the record follows).
   */
  async whenAdvertised (maxWaitMs?: number): Promise<void> {
    if (maxWaitMs == null) {
      await this.firstAdvert.promise
      return
    }
    let timer: NodeJS.Timeout | undefined
    const capped = this.firstHealthy.promise.then(async () => { await new Promise<void>(resolve => { timer = setTimeout(resolve, maxWaitMs) }) })
    await Promise.race([this.firstAdvert.promise, capped]).finally(() => { clearTimeout(timer) })
  }

  start (): void {
    this.stopped = false
    void this.tick()
  }

  async stop (): Promise<void> {
    this.stopped = true
    clearTimeout(this.timer)
    await this.announcer.withdraw()
  }

  private async tick (): Promise<void> {
    const { ok: healthy } = await probeHealth(this.init.app.host, this.init.app.port, this.init.healthPath, 2000)
    if (this.stopped) return
    try {
      if (healthy) {
        this.failures = 0
        this.firstHealthy.resolve()
        if (!this.announcer.announcing) await this.announcer.announce()
        if (this.stopped) return
        if (this.announcer.announced && !this.reported) {
          this.reported = true
          this.init.log.info({ service: this.init.service, cid: this.init.cid.toString() }, 'advertising instance')
          this.firstAdvert.resolve()
        }
      } else if (++this.failures >= this.unhealthyAfter && this.announcer.announcing) {
        this.reported = false
        await this.announcer.withdraw()
        this.init.log.warn({ service: this.init.service, failures: this.failures }, 'app unhealthy: stopped advertising')
      }
    } catch (err) {
      this.init.log.warn({ service: this.init.service, err }, 'advertising failed; will retry')
    }
    if (!this.stopped) this.timer = setTimeout(() => { void this.tick() }, this.healthIntervalMs)
  }
}
