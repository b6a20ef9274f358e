import { randomBytes } from 'node:crypto'
import { availableParallelism, totalmem } from 'node:os'
import { Counter, Gauge, Histogram, Registry as MetricsRegistry } from 'prom-client'
import { raceSignal } from '../shared/abort.js'
import { Announcer } from '../shared/announcer.js'
import { allocatorCid } from '../shared/cids.js'
import { InstanceCounter } from '../shared/instance-count.js'
import { PeerFinder } from '../shared/peer-finder.js'
import { MinInstancesGuard } from './min-instances.js'
import type { Logger } from '../shared/log.js'
import type { MeshNode } from '../shared/node.js'
import type { ServiceRecord } from '../shared/registry/record.js'
import type { OriginRecordSource } from '../shared/registry/registry.js'
import { normalizePeerIds } from '../shared/registry/signed-record.js'
import { registerInstanceMetrics } from './instance-metrics.js'
import { handleStatus, nodeFields, STATUS_PROTOCOL, type InstanceStatus, type NodeStatus, type ServiceCacheStatus } from '../shared/protocols/status.js'
import { checkTrust, instanceCap, PeerRateLimiter, type PeerRateLimiterInit } from './admission.js'
import { ALLOC_PROTOCOL, serveAllocStream, type AllocInstance, type AllocResponse } from '../shared/protocols/alloc.js'
import { AllocationError } from '../shared/protocols/alloc-errors.js'
import type { IngressDoor } from '../proxy/client-proxy.js'
import { freeLocalPort, type Runtime } from './runtime.js'
import { InstanceSupervisor, type Sidecar, type SupervisorEvent } from './supervisor.js'

export interface SidecarStarter {
  start: (service: string, app: { host: string, port: number }, signal?: AbortSignal) => Promise<Sidecar>
}

/**
 * Where the allocator opens each instance's own door into the mesh (its `HYPHAE_PROXY`): an
 * ingress sharing one client proxy's routing (see ClientProxy.openDoor).
 */
export interface InstanceDoors {
  openDoor: (from: string, host: string, admit?: (remoteAddress: string) => boolean) => Promise<IngressDoor>
  /** The routing cache behind the doors, for the status. */
  cacheStatus: () => ServiceCacheStatus[]
}

export interface AllocatorInit {
  node: MeshNode
  /** Gives every instance its own door into the mesh; none: instances get no HYPHAE_PROXY. */
  doors?: InstanceDoors
  /** Where its metrics go (the daemon's registry, with the process metrics); default: its own. */
  metrics?: MetricsRegistry
  registry: OriginRecordSource
  /** RegistryKeys: who may sign the DHT records this allocator runs (empty: static records only). */
  trustedSigners?: readonly string[]
  /** Perf.TargetRps: records without their own targetRps autoscale on it (so may have several instances here). */
  defaultTargetRps?: number
  /** Per requesting peer limits on allocation requests. */
  admission?: PeerRateLimiterInit
  runtime: Runtime
  sidecars: SidecarStarter
  log: Logger
  maxInstances?: number
  idleTimeoutS?: number
  healthIntervalMs?: number
  unhealthyAfter?: number
  healthyAfter?: number
  startTimeoutMs?: number
  /** What this host may give instances; defaults: every core, 90% of memory. */
  capacity?: { cpus: number, memoryMb: number }
}

type OpenDoor = IngressDoor & { admit: (address: string) => void }

/** Instances one allocator runs at once. */
export const DEFAULT_MAX_INSTANCES = 16

/** How long one round of asking the sidecars for their stats serves status requests and scrapes. */
const STATUS_FRESH_MS = 1000
/** A sidecar that has not told its stats in this long is listed without them. */
const SIDECAR_STATS_TIMEOUT_MS = 1000

/** Instance states that count against a service's instances here. */
const LIVE_STATES = new Set(['starting', 'healthy', 'unhealthy', 'relaunching'])
/** Instance states that hold a share of the host: a stopping one still does, until it is gone. */
const HOLDING_STATES = new Set([...LIVE_STATES, 'stopping'])

/**
 * The allocator: answers `/hyphae/alloc/1.0.0` by starting an instance of a service as its
 * signed registry record describes (never what the request says), plus a server proxy beside
 * it, and replies once the instance is healthy and advertised. Each instance is then watched
 * by its own supervisor (health, relaunch, culling).
 */
export class Allocator {
  readonly metrics: MetricsRegistry
  private readonly supervisors = new Set<InstanceSupervisor>()
  /** Holds culling back where a record's minInstances would be undercut mesh-wide. */
  private readonly floor: MinInstancesGuard
  private readonly instanceCounter: InstanceCounter
  private announcer?: Announcer
  /** Starts admitted but without a supervisor yet, by service: each counts once, here or as a supervisor. */
  private readonly reserved = new Map<string, number>()
  private readonly starts = new WeakMap<InstanceSupervisor, Promise<AllocInstance>>()
  /** A start admitted for a service before its supervisor exists, for requests to share meanwhile. */
  private readonly pendingStarts = new Map<string, Promise<AllocInstance>>()
  private readonly rateLimiter: PeerRateLimiter
  /** Each instance's door into the mesh, closed when the instance ends. */
  private readonly doors = new Map<InstanceSupervisor, OpenDoor>()
  /** Services whose untrusted record was logged, so a flood logs once per service. */
  private readonly untrustedLogged = new Set<string>()
  private stopping = false
  private readonly startedAt = performance.now()
  private statusCache?: { at: number, round: Promise<InstanceStatus[]> }
  private readonly capacity: { cpus: number, memoryMb: number }
  private readonly counters: {
    starts: Counter<'service'>
    relaunches: Counter<'service'>
    culls: Counter<'service'>
    failures: Counter<'service' | 'code'>
    latency: Histogram<'service'>
  }

  constructor (private readonly init: AllocatorInit) {
    this.capacity = init.capacity ?? { cpus: availableParallelism(), memoryMb: Math.floor(totalmem() / 1024 / 1024 * 0.9) }
    this.instanceCounter = new InstanceCounter({ finder: new PeerFinder({ node: init.node, log: init.log }) })
    this.floor = new MinInstancesGuard({ counter: this.instanceCounter, log: init.log })
    this.rateLimiter = new PeerRateLimiter(init.admission)
    this.metrics = init.metrics ?? new MetricsRegistry()
    const registers = [this.metrics]
    this.counters = {
      starts: new Counter({ name: 'hyphae_allocator_starts_total', help: 'Instances started on request', labelNames: ['service'], registers }),
      relaunches: new Counter({ name: 'hyphae_allocator_relaunches_total', help: 'Instances relaunched after failing health checks or exiting', labelNames: ['service'], registers }),
      culls: new Counter({ name: 'hyphae_allocator_culls_total', help: 'Instances stopped for being idle', labelNames: ['service'], registers }),
      failures: new Counter({ name: 'hyphae_allocator_failures_total', help: 'Allocation requests that failed, by error code', labelNames: ['service', 'code'], registers }),
      latency: new Histogram({ name: 'hyphae_allocator_allocation_duration_seconds', help: 'Time from an allocation request to the instance being healthy and advertised', labelNames: ['service'], buckets: [0.1, 0.25, 0.5, 1, 2, 5, 10, 30], registers })
    }
    const supervisors = this.supervisors
    new Gauge({
      name: 'hyphae_allocator_instances',
      help: 'Instances by service and state',
      labelNames: ['service', 'state'],
      registers,
      collect () {
        this.reset()
        for (const s of supervisors) this.inc({ service: s.service, state: s.state })
      }
    })
    registerInstanceMetrics(registers, async () => await this.instanceStatuses())
  }

  async start (): Promise<void> {
    const { node, runtime, log } = this.init
    const removed = await runtime.removeOrphans(node.peerId.toString())
    this.floor.start()
    if (removed > 0) log.info({ removed }, 'removed instances left by an earlier run')
    await node.handle(ALLOC_PROTOCOL, (stream, connection) => {
      const requester = connection.remotePeer.toString()
      void serveAllocStream(stream, async ({ service, minSeq }, signal) => await this.allocate(service, signal, requester, minSeq), { allocateTimeoutMs: (this.init.startTimeoutMs ?? 30_000) + 10_000 })
        .then(answer => {
          if (!answer.ok) log.debug({ code: answer.error.code, err: answer.error.message }, 'allocation refused')
        })
    }, { maxInboundStreams: 256 })
    await handleStatus(node, () => this.status())
    this.announcer = new Announcer({ node, cid: await allocatorCid(), log })
    await this.announcer.announce().catch(err => { log.warn({ err }, 'could not advertise the allocator yet; retrying') })
  }

  async stop (): Promise<void> {
    this.stopping = true
    this.floor.stop()
    await this.announcer?.withdraw()
    await this.init.node.unhandle(ALLOC_PROTOCOL).catch(() => {})
    await this.init.node.unhandle(STATUS_PROTOCOL).catch(() => {})
    await Promise.all([...this.supervisors].map(async s => { await s.stop() }))
    this.supervisors.clear()
  }

  /** Instances for the status route. */
  list (): Array<{ service: string, state: string, relaunches: number, peerId?: string }> {
    return [...this.supervisors].map(s => ({ service: s.service, state: s.state, relaunches: s.relaunches, peerId: s.peerId }))
  }

  /** What `/hyphae/status/1.0.0` answers: its instances with what each has served, asked of their sidecars. */
  async status (): Promise<NodeStatus> {
    const { node } = this.init
    return {
      role: 'allocator',
      ...nodeFields(node, this.startedAt),
      trustedSigners: [...normalizePeerIds(this.init.trustedSigners ?? [])],
      instances: await this.instanceStatuses(),
      ...(this.init.doors != null ? { services: this.init.doors.cacheStatus() } : {})
    }
  }

  /**
   * Every instance's status, its stats asked of its sidecar; asked at most once per
   * STATUS_FRESH_MS, so a scrape and a status request (or a flood of them) share one round.
   */
  private async instanceStatuses (): Promise<InstanceStatus[]> {
    const now = performance.now()
    if (this.statusCache == null || now - this.statusCache.at > STATUS_FRESH_MS) {
      const round = Promise.all([...this.supervisors].map(async s => ({
        service: s.service,
        instance: s.instanceId,
        state: s.state,
        ageS: s.ageS,
        relaunches: s.relaunches,
        ...(s.peerId != null ? { peerId: s.peerId } : {}),
        ...await s.stats(SIDECAR_STATS_TIMEOUT_MS).then(stats => stats != null ? { stats } : {}, () => ({}))
      })))
      this.statusCache = { at: now, round }
    }
    return await this.statusCache.round
  }

  /**
   * Starts an instance of SERVICE for REQUESTER (a peer ID; none: this process); resolves once
   * it is healthy and advertised. Where the service already has all the instances it may have
   * here, resolves with one of those instead.
   */
  async allocate (service: string, signal?: AbortSignal, requester?: string, minSeq?: number): Promise<AllocInstance> {
    const started = performance.now()
    // Metric label: names come from peers, so only a service this allocator may run has its own.
    let label = 'other'
    try {
      if (this.stopping) throw new AllocationError('shutting_down', 'the allocator is shutting down')
      if (requester != null && !this.rateLimiter.tryTake(requester)) throw new AllocationError('rate_limited', 'too many allocation requests from this peer: try again later')
      const record = await this.trustedRecord(service, signal, minSeq)
      label = service
      if (record.image != null && this.init.runtime.kind !== 'docker') throw new AllocationError('runtime_unavailable', `'${service}' runs a Docker image and this allocator runs the ${this.init.runtime.kind} runtime`)
      if (record.command != null && this.init.runtime.kind !== 'process') throw new AllocationError('runtime_unavailable', `'${service}' runs a command and this allocator runs the ${this.init.runtime.kind} runtime`)
      const existing = this.atCap(record)
      if (existing != null) return await raceSignal(existing, signal)
      this.checkCapacity(record)
      // From here until its supervisor exists the start holds a place, so concurrent requests
      // see it (once: the reservation ends as the supervisor is added).
      this.reserve(service, 1)
      let reserved = true
      const shared = Promise.withResolvers<AllocInstance>()
      shared.promise.catch(() => {})
      const sharing = !this.pendingStarts.has(service)
      if (sharing) this.pendingStarts.set(service, shared.promise)
      let supervisor: InstanceSupervisor | undefined
      let door: OpenDoor | undefined
      try {
        if (record.maxInstances != null) {
          // Mesh-wide, as far as the DHT shows: live providers of the service.
          const running = await this.instanceCounter.count(record, signal, 0)
          if (running >= record.maxInstances) throw new AllocationError('capacity', `'${service}' already runs its maxInstances of ${record.maxInstances} in the mesh`)
        }
        // The door first: it listens on a port of the OS's choosing, which could otherwise be
        // the one just found free for the app (CI saw the app fail with EADDRINUSE, relaunched
        // on that same port three times).
        door = await this.openDoor(service)
        const hostPort = await freeLocalPort()
        supervisor = new InstanceSupervisor({
          runtime: this.init.runtime,
          spec: {
            instanceId: `${service}-${randomBytes(4).toString('hex')}`,
            record,
            hostPort,
            allocatorPeerId: this.init.node.peerId.toString(),
            proxy: door != null ? { host: door.host, port: door.port, admit: door.admit } : undefined
          },
          startSidecar: async (app, options) => {
            const sidecar = await this.init.sidecars.start(service, app, options.signal)
            // The supervisor stops the sidecar first when it ends the instance: from then on
            // it must not count toward the service's minInstances.
            return { ...sidecar, stop: async () => { if (supervisor != null) this.floor.leaving(supervisor); await sidecar.stop() } }
          },
          log: this.init.log,
          healthIntervalMs: this.init.healthIntervalMs,
          unhealthyAfter: this.init.unhealthyAfter,
          healthyAfter: this.init.healthyAfter,
          idleTimeoutS: this.init.idleTimeoutS,
          startTimeoutMs: this.init.startTimeoutMs,
          cullable: () => supervisor == null || this.floor.cullable(supervisor),
          onEvent: event => { this.onEvent(service, event, supervisor) }
        })
        if (door != null) this.doors.set(supervisor, door)
        this.supervisors.add(supervisor)
        this.reserve(service, -1)
        reserved = false
        this.floor.add(supervisor, record)
        // Not the requester's signal: others may come to share this start, and a start the
        // first requester gave up on still ends in a usable instance (or a clean failure).
        const start = supervisor.start()
        this.starts.set(supervisor, start)
        shared.resolve(start)
        const instance = await raceSignal(start, signal)
        this.counters.starts.inc({ service })
        this.counters.latency.observe({ service }, (performance.now() - started) / 1000)
        this.init.log.info({ service, peer: instance.peerId, ms: Math.round(performance.now() - started) }, 'instance allocated')
        return instance
      } catch (err) {
        if (supervisor != null && supervisor.state === 'failed') this.forget(supervisor)
        if (supervisor == null) void door?.close()
        shared.reject(err)
        throw err
      } finally {
        if (reserved) this.reserve(service, -1)
        if (sharing && this.pendingStarts.get(service) === shared.promise) this.pendingStarts.delete(service)
      }
    } catch (err) {
      const coded = err instanceof AllocationError ? err : new AllocationError('internal', (err as Error).message, { cause: err })
      this.counters.failures.inc({ service: label, code: coded.code })
      this.init.log.warn({ service, code: coded.code, err: coded }, 'allocation failed')
      throw coded
    }
  }

  /** The record for SERVICE if this allocator may run it; an AllocationError saying why not. */
  private async trustedRecord (service: string, signal?: AbortSignal, minSeq?: number): Promise<ServiceRecord> {
    const resolved = await this.init.registry.resolveWithOrigin(service, { signal, minSeq })
    if (resolved == null) throw new AllocationError('unknown_service', `no valid registry record for '${service}'`)
    // A static record is the operator's and wins whatever its seq; a DHT one must be as new as asked.
    if (minSeq != null && resolved.origin.source !== 'static' && resolved.record.seq < minSeq) {
      throw new AllocationError('unknown_service', `this allocator finds seq ${resolved.record.seq} of '${service}' in the DHT, not yet seq ${minSeq}`)
    }
    const untrusted = checkTrust(resolved, this.init.trustedSigners ?? [])
    if (untrusted == null) return resolved.record
    if (!this.untrustedLogged.has(service)) {
      if (this.untrustedLogged.size >= 1024) this.untrustedLogged.clear()
      this.untrustedLogged.add(service)
      this.init.log.warn({ service, origin: resolved.origin, err: untrusted.message }, 'refusing to run an untrusted record')
    }
    throw untrusted
  }

  /**
   * When the service has all the instances it may have here: a start to share (one that is
   * healthy or starting), else a capacity error. Undefined while there is room.
   */
  private atCap (record: ServiceRecord): Promise<AllocInstance> | undefined {
    const cap = instanceCap(record, this.init.defaultTargetRps)
    const mine = [...this.supervisors].filter(s => s.service === record.name && LIVE_STATES.has(s.state))
    if (mine.length + (this.reserved.get(record.name) ?? 0) < cap) return undefined
    const usable = mine.find(s => s.state === 'healthy') ?? mine.find(s => s.state === 'starting')
    const start = usable != null ? this.starts.get(usable) : this.pendingStarts.get(record.name)
    if (start == null) throw new AllocationError('capacity', `'${record.name}' already runs the ${cap} instance${cap === 1 ? '' : 's'} it may have on this allocator`)
    return start
  }

  private reserve (service: string, delta: number): void {
    const count = (this.reserved.get(service) ?? 0) + delta
    if (count > 0) this.reserved.set(service, count)
    else this.reserved.delete(service)
  }

  private onEvent (service: string, event: SupervisorEvent, supervisor: InstanceSupervisor | undefined): void {
    if (event === 'relaunched') this.counters.relaunches.inc({ service })
    if (event === 'culled') this.counters.culls.inc({ service })
    if ((event === 'culled' || event === 'stopped' || event === 'failed') && supervisor != null) this.forget(supervisor)
  }

  private forget (supervisor: InstanceSupervisor): void {
    this.supervisors.delete(supervisor)
    this.floor.remove(supervisor)
    void this.doors.get(supervisor)?.close().catch(err => { this.init.log.debug({ err }, 'cannot close an instance\'s door') })
    this.doors.delete(supervisor)
  }

  /**
   * An instance's own door into the mesh, open before the app starts so its environment can
   * name it: 127.0.0.1 for a process; for a container, the gateway of its network, admitting
   * only the container's address once the runtime knows it (nothing before).
   */
  private async openDoor (service: string): Promise<OpenDoor | undefined> {
    const { doors, runtime } = this.init
    if (doors == null) return undefined
    const host = await runtime.proxyHost()
    if (host === '127.0.0.1') return { ...await doors.openDoor(service, host), admit: () => {} }
    let admitted: string | undefined
    const door = await doors.openDoor(service, host, remote => remote === admitted || remote === `::ffff:${admitted ?? ''}`)
    return { ...door, admit: address => { admitted = address } }
  }

  /**
   * Answers an allocation asked in this process (this node's own instances' doors): the same
   * path as a request from the mesh, as `/hyphae/alloc/1.0.0` would answer it.
   */
  async allocateLocally (service: string, signal: AbortSignal): Promise<AllocResponse> {
    try {
      return { ok: true, instance: await this.allocate(service, signal) }
    } catch (err) {
      const coded = err instanceof AllocationError ? err : new AllocationError('internal', (err as Error).message)
      return { ok: false, error: { code: coded.code, message: coded.message } }
    }
  }

  private checkCapacity (record: ServiceRecord): void {
    const live = [...this.supervisors].filter(s => HOLDING_STATES.has(s.state))
    const max = this.init.maxInstances ?? DEFAULT_MAX_INSTANCES
    let reserved = 0
    for (const count of this.reserved.values()) reserved += count
    if (live.length + reserved >= max) throw new AllocationError('capacity', `this allocator runs its maximum of ${max} instances`)
    const cpus = live.reduce((sum, s) => sum + (s.record.cpu ?? 0), 0)
    if ((record.cpu ?? 0) > this.capacity.cpus - cpus) throw new AllocationError('capacity', `not enough CPU left: '${record.name}' wants ${record.cpu}, ${Math.max(0, this.capacity.cpus - cpus)} of ${this.capacity.cpus} left`)
    const memory = live.reduce((sum, s) => sum + (s.record.memoryMb ?? 0), 0)
    if ((record.memoryMb ?? 0) > this.capacity.memoryMb - memory) throw new AllocationError('capacity', `not enough memory left: '${record.name}' wants ${record.memoryMb} MB, ${Math.max(0, this.capacity.memoryMb - memory)} MB left`)
  }
}
