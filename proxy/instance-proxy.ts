import { Counter, Gauge, type Registry as MetricsRegistry } from 'prom-client'
import { serviceCid } from '../shared/cids.js'
import { InstanceCounter } from '../shared/instance-count.js'
import type { Logger } from '../shared/log.js'
import type { MeshNode } from '../shared/node.js'
import { PeerFinder } from '../shared/peer-finder.js'
import type { RecordSource } from '../shared/registry/registry.js'
import { Advertiser } from './advertiser.js'
import { Autoscaler } from './autoscaler.js'
import { InstanceServer } from './instance-server.js'
import { RequestStats } from './request-stats.js'
import type { InstanceStats } from '../shared/protocols/status.js'

export interface InstanceProxyInit {
  node: MeshNode
  registry: RecordSource
  log: Logger
  /** Where its metrics go. */
  metrics: MetricsRegistry
  service: string
  app: { host: string, port: number }
  /** The config's Perf.TargetRps: records without their own targetRps autoscale on it. */
  defaultTargetRps?: number
  /** The config's Perf.HardReq, for records that name no hard RTT. */
  defaultHardRttMs: number
  healthIntervalMs?: number
  /** The sliding window the autoscaler measures the request rate over. Default 120 s. */
  scaleWindowMs?: number
  /** How long a stopping instance waits for requests in flight. */
  drainMs?: number
  finder?: PeerFinder
}

/**
 * The serving half of the mesh, for one local app instance: `/http/1.1` streams → the app
 * (instance server), its advertisement in the DHT while it answers its health path, and,
 * where the record asks for it, autoscaling.
 */
export class InstanceProxy {
  private server?: InstanceServer
  private advertiser?: Advertiser
  private autoscaler?: Autoscaler
  private readonly requests = new RequestStats()
  private readonly startedAt = Date.now()

  constructor (private readonly init: InstanceProxyInit) {}

  /** Time since the instance last finished serving a request, ms; 0 while one is in flight. */
  get idleMs (): number {
    return this.requests.idleMs
  }

  /** idleMs in whole seconds, as the `/` metrics route reports it. */
  get idleSeconds (): number {
    return Math.floor(this.idleMs / 1000)
  }

  get service (): string {
    return this.init.service
  }

  /** Seconds since this proxy started fronting the instance. */
  get ageS (): number {
    return Math.round((Date.now() - this.startedAt) / 1000)
  }

  get advertised (): boolean {
    return this.advertiser?.advertised === true
  }

  stats (): InstanceStats {
    return this.requests.snapshot()
  }

  async start (): Promise<void> {
    const { init } = this
    const record = await init.registry.resolve(init.service)
    if (record == null) throw new Error(`no registry record for service '${init.service}': publish one with 'hyphae registry put' or add it to Services in the config`)
    const registers = [init.metrics]
    const served = new Counter({ name: 'hyphae_instance_requests_total', help: 'Requests served to this instance from the mesh, by status', labelNames: ['status'], registers })
    const inFlight = new Gauge({ name: 'hyphae_instance_requests_in_flight', help: 'Requests from the mesh being served now', registers })
    const idleSeconds = (): number => this.idleSeconds
    const advertised = (): boolean => this.advertised
    new Gauge({ name: 'hyphae_instance_idle_seconds', help: 'Seconds since the last request was serviced', registers, collect () { this.set(idleSeconds()) } })
    new Gauge({ name: 'hyphae_instance_advertised', help: '1 while the instance is advertised in the DHT', registers, collect () { this.set(advertised() ? 1 : 0) } })

    this.server = new InstanceServer({
      node: init.node,
      app: init.app,
      log: init.log,
      onRequest: (event, status = 0, durationMs = 0) => {
        if (event === 'start') {
          inFlight.inc()
          this.requests.started()
          this.autoscaler?.recordRequest()
          return
        }
        inFlight.dec()
        served.inc({ status: String(status) })
        this.requests.finished(status, durationMs)
      }
    })
    await this.server.start()
    this.advertiser = new Advertiser({
      node: init.node,
      cid: await serviceCid(record),
      service: init.service,
      app: init.app,
      healthPath: record.health,
      log: init.log,
      healthIntervalMs: init.healthIntervalMs
    })
    this.advertiser.start()
    // Autoscaling is opt-in: the record's targetRps, else the config's Perf.TargetRps; and
    // a minInstances above one is kept warm.
    const targetRps = record.targetRps ?? init.defaultTargetRps
    if (targetRps != null || (record.minInstances ?? 0) > 1) {
      const finder = init.finder ?? new PeerFinder({ node: init.node, log: init.log })
      this.autoscaler = new Autoscaler({
        node: init.node,
        record,
        finder,
        instances: new InstanceCounter({ finder }),
        log: init.log,
        targetRps,
        hardRttMs: record.hardRttMs ?? init.defaultHardRttMs,
        windowMs: init.scaleWindowMs,
        metrics: init.metrics
      })
      this.autoscaler.start()
    }
  }

  /** Resolves once the instance is advertised (see Advertiser). */
  async whenAdvertised (maxWaitMs?: number): Promise<void> {
    await this.advertiser?.whenAdvertised(maxWaitMs)
  }

  /**
   * Stops advertising first, so clients stop choosing this instance, then finishes requests
   * in flight, then closes.
   */
  async stop (): Promise<void> {
    await this.autoscaler?.stop()
    await this.advertiser?.stop()
    await this.server?.stop(this.init.drainMs)
  }
}
