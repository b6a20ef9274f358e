import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry as MetricsRegistry } from 'prom-client'
import { serviceCid } from '../shared/cids.js'
import type { MeshConfig } from '../shared/config.js'
import type { Logger } from '../shared/log.js'
import { MetricsServer } from '../shared/metrics-server.js'
import { InstanceCounter } from '../shared/instance-count.js'
import type { MeshNode } from '../shared/node.js'
import type { ServiceRecord } from '../shared/registry/record.js'
import { Advertiser } from './advertiser.js'
import { Autoscaler } from './autoscaler.js'
import { Allocations } from './allocations.js'
import { Ingress } from './ingress.js'
import type { RecordSource } from '../shared/registry/registry.js'
import { InstanceServer } from './instance-server.js'
import { MeshAgents } from './mesh-agents.js'
import { LEVELS } from './peer-cache.js'
import { PeerFinder } from './peer-finder.js'
import { RetryBudget } from './retry-budget.js'
import { Router } from './router.js'

export interface ServerModeInit {
  service: string
  app: { host: string, port: number }
  healthIntervalMs?: number
  /** The sliding window the autoscaler measures the request rate over. Default 120 s. */
  scaleWindowMs?: number
}

export interface ProxyInit {
  node: MeshNode
  registry: RecordSource
  config: MeshConfig
  log: Logger
  /** HTTP ingress port on 127.0.0.1 (0: any free port). */
  port: number
  /** Server mode: the local app instance this proxy fronts and advertises. */
  server?: ServerModeInit
  /** Metrics port on 127.0.0.1; omitted: no metrics endpoint. */
  metricsPort?: number
  responseTimeoutMs?: number
  /** How long a stopping server proxy waits for requests in flight. */
  drainMs?: number
  /** One libp2p stream per request instead of pooled keep-alive streams. */
  streamPerRequest?: boolean
  /** How long requests wait for a cold start before a 504. */
  coldStartTimeoutMs?: number
}

/**
 * A hyphae proxy: always the client side (ingress → router → mesh stream); in server mode
 * also the instance side (mesh stream → local app) and its advertisement.
 */
export class Proxy {
  readonly metrics = new MetricsRegistry()
  private readonly agents: MeshAgents
  private readonly ingress: Ingress
  private readonly router: Router
  private readonly finder: PeerFinder
  private instance?: InstanceServer
  private advertiser?: Advertiser
  private autoscaler?: Autoscaler
  private metricsServer?: MetricsServer
  private lastServicedAt = Date.now()
  private ports: { http: number, metrics?: number } = { http: 0 }

  constructor (private readonly init: ProxyInit) {
    collectDefaultMetrics({ register: this.metrics, prefix: 'hyphae_proxy_' })
    const registers = [this.metrics]
    const requests = new Counter({ name: 'hyphae_proxy_requests_total', help: 'Requests sent into the mesh, by service and status', labelNames: ['service', 'status'], registers })
    const latency = new Histogram({
      name: 'hyphae_proxy_request_duration_seconds',
      help: 'Time from request to complete response through the mesh, by service and status',
      labelNames: ['service', 'status'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers
    })
    const retries = new Counter({ name: 'hyphae_proxy_retries_total', help: 'Requests retried on another instance', labelNames: ['service'], registers })
    const chosenRtt = new Histogram({
      name: 'hyphae_proxy_chosen_instance_rtt_ms',
      help: 'Smoothed RTT of the instance each request went to, by service',
      labelNames: ['service'],
      buckets: [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000],
      registers
    })
    this.agents = new MeshAgents(init.node, init.streamPerRequest !== true)
    const finder = new PeerFinder({ node: init.node, log: init.log })
    this.finder = finder
    const router = new Router({
      finder,
      allocations: new Allocations({ node: init.node, finder, log: init.log, coldStartTimeoutMs: init.coldStartTimeoutMs }),
      defaults: { softRttMs: init.config.softRttMs, hardRttMs: init.config.hardRttMs },
      log: init.log,
      onPeerGone: peer => { this.agents.drop(peer, { inFlight: true }) }
    })
    this.router = router
    new Gauge({
      name: 'hyphae_proxy_cached_instances',
      help: 'Instances in the peer cache, by service and level',
      labelNames: ['service', 'level'],
      registers,
      collect () {
        this.reset()
        for (const { service, counts } of router.levelCounts()) {
          for (const level of LEVELS) this.set({ service, level }, counts[level])
        }
      }
    })
    this.ingress = new Ingress({
      port: init.port,
      registry: init.registry,
      router,
      agents: this.agents,
      log: init.log,
      responseTimeoutMs: init.responseTimeoutMs,
      retryBudget: new RetryBudget(),
      observe: (service, status, startedAt, retried) => {
        requests.inc({ service, status })
        latency.observe({ service, status }, (performance.now() - startedAt) / 1000)
        if (retried) retries.inc({ service })
      },
      observePick: (service, rttMs) => { chosenRtt.observe({ service }, rttMs) }
    })
  }

  get httpPort (): number {
    return this.ports.http
  }

  get metricsPort (): number | undefined {
    return this.ports.metrics
  }

  /** Seconds since the instance last finished serving a request (server mode). */
  get idleSeconds (): number {
    if (this.instance != null && this.instance.requestsInFlight > 0) return 0
    return Math.floor((Date.now() - this.lastServicedAt) / 1000)
  }

  async start (): Promise<void> {
    const { init } = this
    if (init.server != null) await this.startServerMode(init.server)
    this.router.start()
    this.ports.http = await this.ingress.start()
    if (init.metricsPort != null) {
      this.metricsServer = new MetricsServer({
        port: init.metricsPort,
        registry: this.metrics,
        routes: {
          '/': () => ({ type: 'text', body: `${this.idleSeconds}\n` }),
          '/peers': () => ({ type: 'json', body: JSON.stringify(this.router.snapshot(), null, 2) })
        }
      })
      this.ports.metrics = await this.metricsServer.start()
    }
  }

  /** Resolves once a server proxy has advertised its instance (at once in client mode); see Advertiser. */
  async whenAdvertised (maxWaitMs?: number): Promise<void> {
    await this.advertiser?.whenAdvertised(maxWaitMs)
  }

  /**
   * Stops advertising first, so clients stop choosing this instance, then finishes requests
   * in flight, then closes everything.
   */
  async stop (): Promise<void> {
    await this.autoscaler?.stop()
    await this.advertiser?.stop()
    await this.ingress.stop()
    await this.instance?.stop(this.init.drainMs)
    await this.metricsServer?.stop()
    this.router.stop()
    this.agents.stop()
  }

  private async startServerMode (server: ServerModeInit): Promise<void> {
    const { init } = this
    const record: ServiceRecord | undefined = await init.registry.resolve(server.service)
    if (record == null) throw new Error(`no registry record for service '${server.service}': publish one with 'hyphae registry put' or add it to Services in the config`)
    const served = new Counter({ name: 'hyphae_instance_requests_total', help: 'Requests served to this instance from the mesh, by status', labelNames: ['status'], registers: [this.metrics] })
    const inFlight = new Gauge({ name: 'hyphae_instance_requests_in_flight', help: 'Requests from the mesh being served now', registers: [this.metrics] })
    const idleSeconds = (): number => this.idleSeconds
    const advertised = (): boolean => this.advertiser?.advertised === true
    new Gauge({ name: 'hyphae_instance_idle_seconds', help: 'Seconds since the last request was serviced', registers: [this.metrics], collect () { this.set(idleSeconds()) } })
    new Gauge({ name: 'hyphae_instance_advertised', help: '1 while the instance is advertised in the DHT', registers: [this.metrics], collect () { this.set(advertised() ? 1 : 0) } })

    this.instance = new InstanceServer({
      node: init.node,
      app: server.app,
      log: init.log,
      onRequest: (event, status) => {
        if (event === 'start') {
          inFlight.inc()
          this.autoscaler?.recordRequest()
          return
        }
        inFlight.dec()
        served.inc({ status: String(status) })
        this.lastServicedAt = Date.now()
      }
    })
    await this.instance.start()
    this.advertiser = new Advertiser({
      node: init.node,
      cid: await serviceCid(record),
      service: server.service,
      app: server.app,
      healthPath: record.health,
      log: init.log,
      healthIntervalMs: server.healthIntervalMs
    })
    this.advertiser.start()
    // Autoscaling is opt-in: the record's targetRps, else the config's Perf.TargetRps; and
    // a minInstances above one is kept warm.
    const targetRps = record.targetRps ?? init.config.targetRps
    if (targetRps != null || (record.minInstances ?? 0) > 1) {
      this.autoscaler = new Autoscaler({
        node: init.node,
        record,
        finder: this.finder,
        instances: new InstanceCounter({ node: init.node, log: init.log }),
        log: init.log,
        targetRps,
        hardRttMs: record.hardRttMs ?? init.config.hardRttMs,
        windowMs: server.scaleWindowMs,
        metrics: this.metrics
      })
      this.autoscaler.start()
    }
  }
}
