import { Counter, Gauge, Histogram, type Registry as MetricsRegistry } from 'prom-client'
import type { Logger } from '../shared/log.js'
import type { MeshNode } from '../shared/node.js'
import type { ServiceCacheStatus } from '../shared/protocols/status.js'
import { PeerFinder } from '../shared/peer-finder.js'
import type { RecordSource } from '../shared/registry/registry.js'
import { Allocations, type LocalAllocator } from './allocations.js'
import { Ingress, type IngressInit } from './ingress.js'
import { MeshAgents } from './mesh-agents.js'
import { LEVELS, type RttLimits } from './peer-cache.js'
import { RetryBudget } from './retry-budget.js'
import { Router } from './router.js'

export interface ClientProxyInit {
  node: MeshNode
  registry: RecordSource
  log: Logger
  /** Where its metrics go (the daemon's registry). */
  metrics: MetricsRegistry
  /** The config's Perf defaults, for records that name no RTTs. */
  defaults: RttLimits
  /** HTTP ingress port on 127.0.0.1 (0: any free port); none: only doors opened later. */
  port?: number
  finder?: PeerFinder
  responseTimeoutMs?: number
  /** One libp2p stream per request instead of pooled keep-alive streams. */
  streamPerRequest?: boolean
  /** How long requests wait for a cold start before a 504. */
  coldStartTimeoutMs?: number
  /** This node's own allocator, asked in-process: a node cannot dial itself. */
  localAllocator?: LocalAllocator
}

/** A door of an instance: its own ingress, whose requests count as that instance's outbound traffic. */
export interface IngressDoor {
  host: string
  port: number
  close: () => Promise<void>
}

/**
 * The sending half of the mesh: plain HTTP from local apps on 127.0.0.1 → the registry
 * record → the best instance (router, peer cache) → a pooled libp2p stream (mesh agents).
 */
export class ClientProxy {
  private readonly agents: MeshAgents
  private readonly ingress?: Ingress
  private readonly router: Router
  private readonly doors = new Set<Ingress>()
  private readonly ingressInit: Omit<IngressInit, 'port'>
  private port = 0

  constructor (init: ClientProxyInit) {
    const registers = [init.metrics]
    // `from`: the calling service, on an allocator's doors for its instances (bounded by the records it runs).
    const requests = new Counter({ name: 'hyphae_proxy_requests_total', help: 'Requests sent into the mesh, by service and status (and calling service, from an instance)', labelNames: ['service', 'status', 'from'], registers })
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
    const agents = new MeshAgents(init.node, init.streamPerRequest !== true, init.log)
    const finder = init.finder ?? new PeerFinder({ node: init.node, log: init.log })
    const router = new Router({
      finder,
      allocations: new Allocations({ node: init.node, finder, log: init.log, coldStartTimeoutMs: init.coldStartTimeoutMs, local: init.localAllocator }),
      defaults: init.defaults,
      log: init.log,
      onPeerGone: (peer, options) => { agents.drop(peer, options) }
    })
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
    this.ingressInit = {
      registry: init.registry,
      router,
      agents,
      log: init.log,
      responseTimeoutMs: init.responseTimeoutMs,
      retryBudget: new RetryBudget(),
      observe: (service, status, startedAt, retried, from) => {
        const labels = from != null ? { service, status, from } : { service, status }
        requests.inc(labels)
        latency.observe({ service, status }, (performance.now() - startedAt) / 1000)
        if (retried) retries.inc({ service })
      },
      observePick: (service, rttMs) => { chosenRtt.observe({ service }, rttMs) }
    }
    if (init.port != null) this.ingress = new Ingress({ ...this.ingressInit, port: init.port })
    this.agents = agents
    this.router = router
  }

  /** The ingress port on 127.0.0.1, once started. */
  get httpPort (): number {
    return this.port
  }

  async start (): Promise<void> {
    this.router.start()
    if (this.ingress != null) this.port = await this.ingress.start()
  }

  /**
   * An ingress of its own for one instance (its `HYPHAE_PROXY`), sharing this proxy's routing:
   * on 127.0.0.1 for a process, on the container network's gateway for a container (then
   * `admit` lets in only that container's address).
   */
  async openDoor (from: string, host: string, admit?: (remoteAddress: string) => boolean): Promise<IngressDoor> {
    const door = new Ingress({ ...this.ingressInit, port: 0, host, admit, from })
    const port = await door.start()
    this.doors.add(door)
    return {
      host,
      port,
      close: async () => {
        this.doors.delete(door)
        await door.stop()
      }
    }
  }

  async stop (): Promise<void> {
    await Promise.all([this.ingress, ...this.doors].map(async ingress => await ingress?.stop()))
    this.doors.clear()
    this.router.stop()
    this.agents.stop()
  }

  /** The peer cache, for `/peers`. */
  peers (): ReturnType<Router['snapshot']> {
    return this.router.snapshot()
  }

  /** The peer cache as the status protocol gives it. */
  cacheStatus (): ServiceCacheStatus[] {
    return this.router.snapshot().map(({ service, limits, peers }) => ({
      service,
      limits: { softMs: limits.softRttMs, hardMs: limits.hardRttMs },
      peers: peers.map(({ peer, level, rttMs, inflight }) => ({ peer, level, rttMs, inflight }))
    }))
  }
}
