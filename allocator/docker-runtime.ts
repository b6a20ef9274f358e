import { Writable } from 'node:stream'
import Docker from 'dockerode'
import type { Logger } from '../shared/log.js'
import { AllocationError } from '../shared/protocols/alloc-errors.js'
import { AppOutput, instanceEnv, LineSplitter, type InstanceExit, type InstanceSpec, type Runtime, type RuntimeInstance } from './runtime.js'

export const LABEL_ALLOCATOR = 'hyphae.allocator'
export const LABEL_SERVICE = 'hyphae.service'
export const LABEL_INSTANCE = 'hyphae.instance'

/** Where a container finds its service's volume (`HYPHAE_DATA_DIR`). */
export const CONTAINER_DATA_DIR = '/data'

/** The container port when a record names none: the common default of web images. */
export const DEFAULT_CONTAINER_PORT = 8080

const EXIT_SETTLE_MS = 10_000

/** Most processes (threads included) a container may run, unless DockerRuntimeInit says otherwise: enough for any web app, not for a fork bomb. */
export const DEFAULT_PIDS_LIMIT = 256

export interface DockerRuntimeInit {
  log: Logger
  /** Default: the engine named by DOCKER_HOST, else the local socket. */
  docker?: Docker
  /** Used when stop() is given no grace. Default 5000 ms. */
  defaultGraceMs?: number
  /** How often pull progress is logged. Default 2000 ms. */
  pullLogIntervalMs?: number
  /** How long available() waits for the engine. Default 2000 ms. */
  pingTimeoutMs?: number
  /** Most processes and threads per container. Default DEFAULT_PIDS_LIMIT. */
  pidsLimit?: number
  /** Runs every container as this user (`name`, `uid`, `uid:gid`) instead of its image's. Default: the image's. */
  user?: string
}

interface LiveContainer {
  container: Docker.Container
  logs?: NodeJS.ReadableStream
  stopped?: Promise<void>
}

/** What dockerode rejects with: the engine's HTTP status and its JSON message. */
interface EngineError extends Error {
  statusCode?: number
  json?: { message?: string }
}

/** Runs a record's image as a Docker container, its port published on 127.0.0.1 only. */
export class DockerRuntime implements Runtime {
  readonly kind = 'docker' as const
  private readonly docker: Docker
  private readonly live = new Map<string, LiveContainer>()
  private gateway?: Promise<string>

  constructor (private readonly init: DockerRuntimeInit) {
    this.docker = init.docker ?? new Docker()
  }

  async available (): Promise<boolean> {
    const signal = AbortSignal.timeout(this.init.pingTimeoutMs ?? 2000)
    try {
      // dockerode takes an abortSignal here; its type definitions do not know it yet.
      const ping = this.docker.ping.bind(this.docker) as unknown as (opts: { abortSignal: AbortSignal }) => Promise<unknown>
      await ping({ abortSignal: signal })
      return true
    } catch {
      return false
    }
  }

  /**
   * The gateway of the default bridge network: the host's address as its containers see it,
   * where their doors into the mesh listen (admitting only their own container).
   */
  async proxyHost (): Promise<string> {
    this.gateway ??= this.docker.getNetwork('bridge').inspect().then((network: { IPAM?: { Config?: Array<{ Gateway?: string }> } }) => {
      const gateway = network.IPAM?.Config?.find(config => config.Gateway != null)?.Gateway
      if (gateway == null) throw new AllocationError('start_failed', 'the Docker bridge network has no gateway address for containers to reach their proxy on')
      return gateway
    })
    this.gateway.catch(() => { this.gateway = undefined })
    return await this.gateway
  }

  async start (spec: InstanceSpec, options: { signal?: AbortSignal } = {}): Promise<RuntimeInstance> {
    const { record } = spec
    const { signal } = options
    if (record.image == null) {
      throw new AllocationError('start_failed', `service '${record.name}' has no image: the docker runtime runs images, not commands`)
    }
    const image = record.image
    const log = this.init.log.child({ service: record.name, instance: spec.instanceId })
    const checkAborted = (): void => {
      if (signal?.aborted === true) throw new AllocationError('aborted', `start of '${record.name}' was cancelled`)
    }

    await this.ensureImage(image, log, signal)
    checkAborted()

    const containerPort = `${record.port ?? DEFAULT_CONTAINER_PORT}/tcp`
    const env = Object.entries({ ...record.env, ...instanceEnv(spec, CONTAINER_DATA_DIR), PORT: String(record.port ?? DEFAULT_CONTAINER_PORT) }).map(([k, v]) => `${k}=${v}`)
    const volume = await this.serviceVolume(record.name, spec.allocatorPeerId)
    const memory = record.memoryMb != null ? record.memoryMb * 1024 * 1024 : undefined
    let container: Docker.Container
    try {
      container = await this.docker.createContainer({
        name: containerName(record.name, spec.instanceId),
        Image: image,
        // PORT last: the port is published from the record, the record's env cannot move it.
        Env: env,
        ExposedPorts: { [containerPort]: {} },
        ...(this.init.user !== undefined ? { User: this.init.user } : {}),
        Labels: {
          [LABEL_ALLOCATOR]: spec.allocatorPeerId,
          [LABEL_SERVICE]: record.name,
          [LABEL_INSTANCE]: spec.instanceId
        },
        HostConfig: {
          // Loopback only: the mesh reaches the app through its proxy, never directly.
          PortBindings: { [containerPort]: [{ HostIp: '127.0.0.1', HostPort: String(spec.hostPort) }] },
          // Kept per service on this host: a relaunched or re-allocated instance finds its data.
          Mounts: [{ Type: 'volume', Source: volume, Target: CONTAINER_DATA_DIR }],
          ...(record.cpu != null ? { NanoCpus: Math.round(record.cpu * 1e9) } : {}),
          // Swap equal to the memory limit: none on top of it.
          ...(memory !== undefined ? { Memory: memory, MemorySwap: memory } : {}),
          // Least privilege whatever the image: no capabilities (binding a port above 1024 needs
          // none), no gaining privileges through setuid binaries, a bounded number of processes.
          CapDrop: ['ALL'],
          SecurityOpt: ['no-new-privileges'],
          PidsLimit: this.init.pidsLimit ?? DEFAULT_PIDS_LIMIT,
          // The supervisor decides about relaunches; the engine restarting it behind our back would confuse both.
          RestartPolicy: { Name: 'no' },
          // We remove it ourselves, after reading its exit status.
          AutoRemove: false
        }
      })
    } catch (err) {
      throw this.engineFailure(err, `cannot create a container of '${image}'`)
    }
    const live: LiveContainer = { container }
    this.live.set(container.id, live)
    const output = new AppOutput(log)

    try {
      checkAborted()
      await container.start()
      // Its door into the mesh opens to this container's address only, known from now on.
      if (spec.proxy != null) {
        const info = await container.inspect()
        const address = info.NetworkSettings.Networks.bridge?.IPAddress ?? ''
        if (address === '') throw new AllocationError('start_failed', `the container of '${record.name}' has no address on the bridge network to reach its proxy from`)
        spec.proxy.admit(address)
      }
      // From the start of the container's log, so nothing written before we attached is lost.
      live.logs = await this.followLogs(container, output)
    } catch (err) {
      await this.remove(container.id)
      if (err instanceof AllocationError) throw err
      throw this.engineFailure(err, `cannot start a container of '${image}'`)
    }
    log.debug({ container: container.id.slice(0, 12), image, port: spec.hostPort }, 'container started')

    const exited = this.waitForExit(container)
    return { id: container.id, app: { host: '127.0.0.1', port: spec.hostPort }, exited, recentOutput: () => output.recent() }
  }

  async stop (instance: RuntimeInstance, options: { graceMs?: number } = {}): Promise<void> {
    const live = this.live.get(instance.id)
    if (live == null) return
    live.stopped ??= (async () => {
      const graceMs = options.graceMs ?? this.init.defaultGraceMs ?? 5000
      try {
        await live.container.stop({ t: Math.ceil(graceMs / 1000) })
      } catch (err) {
        // 304: already stopped; 404: already gone. Both are what we wanted.
        if (!ignorable(err, [304, 404])) this.init.log.warn({ container: instance.id.slice(0, 12), err: message(err) }, 'cannot stop container: removing it by force')
      }
      await this.remove(instance.id)
      // The exit status should be settled before stop() returns, so callers can rely on it; but
      // an engine that lost the container must not hang the caller.
      let timer: NodeJS.Timeout | undefined
      await Promise.race([instance.exited, new Promise(resolve => { timer = setTimeout(resolve, EXIT_SETTLE_MS) })])
      clearTimeout(timer)
    })()
    await live.stopped
  }

  async removeOrphans (allocatorPeerId: string): Promise<number> {
    const leftovers = await this.docker.listContainers({ all: true, filters: { label: [`${LABEL_ALLOCATOR}=${allocatorPeerId}`] } })
    let removed = 0
    for (const info of leftovers) {
      try {
        await this.docker.getContainer(info.Id).remove({ force: true })
        removed++
        this.init.log.info({ container: info.Id.slice(0, 12), service: info.Labels[LABEL_SERVICE], state: info.State }, 'removed a container left by an earlier run')
      } catch (err) {
        if (ignorable(err, [404, 409])) continue
        this.init.log.warn({ container: info.Id.slice(0, 12), err: message(err) }, 'cannot remove a container left by an earlier run')
      }
    }
    return removed
  }

  /** The service's named volume, made (labelled) on first use; the engine keeps it across containers. */
  private async serviceVolume (service: string, allocatorPeerId: string): Promise<string> {
    const name = `hyphae-data-${service}`
    try {
      // Idempotent: an existing volume of that name is returned as it is.
      await this.docker.createVolume({ Name: name, Labels: { [LABEL_SERVICE]: service, [LABEL_ALLOCATOR]: allocatorPeerId } })
    } catch (err) {
      throw this.engineFailure(err, `cannot make the volume ${name}`)
    }
    return name
  }

  private async ensureImage (image: string, log: Logger, signal: AbortSignal | undefined): Promise<void> {
    try {
      await this.docker.getImage(image).inspect()
      return
    } catch (err) {
      if (!ignorable(err, [404])) throw this.engineFailure(err, `cannot inspect image '${image}'`)
    }
    log.info({ image }, 'image not present locally: pulling')
    const started = Date.now()
    let stream: NodeJS.ReadableStream
    try {
      stream = await this.docker.pull(image, { abortSignal: signal }) as NodeJS.ReadableStream
    } catch (err) {
      if (signal?.aborted === true) throw new AllocationError('aborted', `pull of '${image}' was cancelled`)
      throw new AllocationError('image_unavailable', `cannot pull image '${image}': ${message(err)}`, { cause: err })
    }
    const progress = new PullProgress(image, log, this.init.pullLogIntervalMs ?? 2000)
    const failure = await new Promise<string | undefined>(resolve => {
      this.docker.modem.followProgress(stream, err => {
        resolve(err != null ? message(err) : progress.error)
      }, (event: PullEvent) => { progress.update(event) })
    })
    if (signal?.aborted === true) throw new AllocationError('aborted', `pull of '${image}' was cancelled`)
    if (failure !== undefined) throw new AllocationError('image_unavailable', `cannot pull image '${image}': ${failure}`)
    log.info({ image, ms: Date.now() - started }, 'image pulled')
  }

  private async followLogs (container: Docker.Container, output: AppOutput): Promise<NodeJS.ReadableStream | undefined> {
    let stream: NodeJS.ReadableStream
    try {
      stream = await container.logs({ follow: true, stdout: true, stderr: true, since: 0 }) as unknown as NodeJS.ReadableStream
    } catch {
      // A logging driver without read support (e.g. "none"): the app runs, we just cannot echo it.
      return undefined
    }
    const sink = (name: 'stdout' | 'stderr'): Writable => {
      const splitter = new LineSplitter(line => { output.line(name, line) })
      return new Writable({
        write (chunk: Buffer, _encoding, callback) { splitter.write(chunk); callback() },
        final (callback) { splitter.end(); callback() }
      })
    }
    this.docker.modem.demuxStream(stream, sink('stdout'), sink('stderr'))
    stream.on('error', () => {})
    return stream
  }

  private async waitForExit (container: Docker.Container): Promise<InstanceExit> {
    try {
      const result = await container.wait() as { StatusCode?: number }
      const code = result.StatusCode ?? null
      let reason = `exited with code ${String(code)}`
      try {
        const state = (await container.inspect()).State
        if (state.OOMKilled) reason = `was killed for exceeding its memory limit (exit code ${String(code)})`
      } catch {
        // Removed meanwhile: the status code is all we know.
      }
      return { code, reason }
    } catch (err) {
      return { code: null, reason: ignorable(err, [404]) ? 'was removed' : `could not be watched: ${message(err)}` }
    }
  }

  private async remove (id: string): Promise<void> {
    const live = this.live.get(id)
    try {
      await (live?.container ?? this.docker.getContainer(id)).remove({ force: true })
    } catch (err) {
      // 409: a removal is already in progress.
      if (!ignorable(err, [404, 409])) this.init.log.warn({ container: id.slice(0, 12), err: message(err) }, 'cannot remove container')
    }
    const logs = live?.logs as (NodeJS.ReadableStream & { destroy?: () => void }) | undefined
    logs?.destroy?.()
    this.live.delete(id)
  }

  /** The engine not answering at all is a different failure from the engine refusing a request. */
  private engineFailure (err: unknown, what: string): AllocationError {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ECONNREFUSED' || code === 'ENOENT' || code === 'EACCES') {
      return new AllocationError('runtime_unavailable', `${what}: the Docker Engine does not answer (${message(err)})`, { cause: err })
    }
    return new AllocationError('start_failed', `${what}: ${message(err)}`, { cause: err })
  }
}

interface PullEvent {
  id?: string
  status?: string
  progressDetail?: { current?: number, total?: number }
  error?: string
  errorDetail?: { message?: string }
}

/** Summarises a pull's event stream into one log line every interval, not one per layer event. */
class PullProgress {
  error: string | undefined
  private readonly layers = new Map<string, { status: string, current: number, total: number }>()
  private lastLog = Date.now()

  constructor (private readonly image: string, private readonly log: Logger, private readonly intervalMs: number) {}

  update (event: PullEvent): void {
    if (event.error != null || event.errorDetail?.message != null) {
      this.error = event.errorDetail?.message ?? event.error
      return
    }
    if (event.id != null && event.status != null) {
      const layer = this.layers.get(event.id) ?? { status: '', current: 0, total: 0 }
      layer.status = event.status
      if (event.progressDetail?.total != null) {
        layer.current = event.progressDetail.current ?? layer.current
        layer.total = event.progressDetail.total
      }
      this.layers.set(event.id, layer)
    }
    const now = Date.now()
    if (now - this.lastLog < this.intervalMs) return
    this.lastLog = now
    let current = 0
    let total = 0
    let done = 0
    for (const layer of this.layers.values()) {
      current += layer.current
      total += layer.total
      if (/complete|already exists/i.test(layer.status)) done++
    }
    this.log.info({ image: this.image, layers: this.layers.size, layersDone: done, mb: Math.round(current / 1e6), ofMb: Math.round(total / 1e6) }, 'pulling image')
  }
}

/** Container names must match [a-zA-Z0-9][a-zA-Z0-9_.-]*; a readable one helps `docker ps`. */
function containerName (service: string, instanceId: string): string {
  return `hyphae-${service}-${instanceId}`.replace(/[^a-zA-Z0-9_.-]/g, '-')
}

function ignorable (err: unknown, statuses: number[]): boolean {
  const status = (err as EngineError).statusCode
  return status !== undefined && statuses.includes(status)
}

function message (err: unknown): string {
  const engine = err as EngineError
  const text = engine.json?.message ?? (err instanceof Error ? err.message : String(err))
  return text.trim()
}
