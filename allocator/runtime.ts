import { createServer } from 'node:net'
import type { Logger } from '../shared/log.js'
import type { ServiceRecord } from '../shared/registry/record.js'

/** What one instance of a service is to run as. */
export interface InstanceSpec {
  /** Unique per instance on this host: names containers and tags logs. */
  instanceId: string
  record: ServiceRecord
  /** The 127.0.0.1 port the app answers on; a relaunch reuses it, so the sidecar need not change. */
  hostPort: number
  /** Labels containers, so that a later run of the same allocator finds what this one left. */
  allocatorPeerId: string
  /**
   * The instance's own door into the mesh (its sidecar ingress, `HYPHAE_PROXY`), open before
   * the app starts. A container's runtime admits the container's address once it knows it.
   */
  proxy?: { host: string, port: number, admit: (address: string) => void }
}

/**
 * What every app is told besides the record's env (DESIGN.md, "What an instance is given"):
 * who it is, where its data lives, and where to send requests for other services. Applied
 * after the record's env, which cannot move them.
 */
export function instanceEnv (spec: InstanceSpec, dataDir: string): Record<string, string> {
  const env: Record<string, string> = { HYPHAE_SERVICE: spec.record.name, HYPHAE_DATA_DIR: dataDir }
  if (spec.proxy != null) {
    Object.assign(env, {
      HYPHAE_PROXY: `http://${spec.proxy.host}:${spec.proxy.port}`,
      // The names the Go original gave its containers.
      PROXY_IP: spec.proxy.host,
      PROXY_PORT: String(spec.proxy.port)
    })
  }
  return env
}

export interface InstanceExit {
  /** Exit status; null when a signal ended it or the status is unknown (container removed). */
  code: number | null
  /** Completes "the app …" in logs and errors: "exited with code 3", "was killed by SIGKILL". */
  reason: string
}

export interface RuntimeInstance {
  readonly id: string
  /** Where the app answers HTTP, from this host. */
  readonly app: { host: string, port: number }
  /** Settles (never rejects) when the app ended, whether it crashed or was stopped. */
  readonly exited: Promise<InstanceExit>
  /** The last lines the app wrote (bounded), so a start failure can say why. */
  recentOutput: () => string[]
}

export interface Runtime {
  readonly kind: 'process' | 'docker'
  /** Starts the app; resolves once it is running, not once it is healthy. */
  start: (spec: InstanceSpec, options?: { signal?: AbortSignal }) => Promise<RuntimeInstance>
  /** Asks the app to end, forces it after the grace period, and removes what is left of it. Idempotent. */
  stop: (instance: RuntimeInstance, options?: { graceMs?: number }) => Promise<void>
  /** Removes instances an earlier run of this allocator left behind; resolves with how many. */
  removeOrphans: (allocatorPeerId: string) => Promise<number>
  /** Whether this runtime can start anything on this host right now. */
  available: () => Promise<boolean>
  /** The address its apps reach this host on: where their doors into the mesh listen. */
  proxyHost: () => Promise<string>
}

/**
 * A TCP port on 127.0.0.1 that was free a moment ago. Another process may take it before the
 * app binds it; the window is short and a failed bind shows up as a failed start.
 */
export async function freeLocalPort (): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => { resolve() })
  })
  const address = server.address()
  const port = typeof address === 'object' && address !== null ? address.port : 0
  await new Promise<void>(resolve => server.close(() => { resolve() }))
  if (port === 0) throw new Error('the OS gave no free port on 127.0.0.1')
  return port
}

/**
 * An app's output: logged at debug with a per-second budget, so a chatty app cannot flood the
 * allocator's log, and its last lines kept (each cut short) for error messages.
 */
export class AppOutput {
  private readonly lines: string[] = []
  private windowStart = 0
  private inWindow = 0
  private suppressed = 0

  constructor (
    private readonly log: Logger,
    private readonly opts: { maxLines?: number, maxLineLength?: number, maxLogLinesPerSecond?: number, now?: () => number } = {}
  ) {}

  line (stream: 'stdout' | 'stderr', text: string): void {
    const maxLength = this.opts.maxLineLength ?? 2048
    const cut = text.length > maxLength ? `${text.slice(0, maxLength)}…` : text
    this.lines.push(cut)
    if (this.lines.length > (this.opts.maxLines ?? 20)) this.lines.shift()

    const now = (this.opts.now ?? Date.now)()
    if (now - this.windowStart >= 1000) {
      if (this.suppressed > 0) this.log.debug({ suppressed: this.suppressed }, 'app output lines not logged (rate limit)')
      this.windowStart = now
      this.inWindow = 0
      this.suppressed = 0
    }
    if (this.inWindow >= (this.opts.maxLogLinesPerSecond ?? 100)) {
      this.suppressed++
      return
    }
    this.inWindow++
    this.log.debug({ stream, line: cut }, 'app output')
  }

  recent (): string[] {
    return [...this.lines]
  }
}

/** Splits a byte stream into lines without letting one endless line grow without bound. */
export class LineSplitter {
  private partial = ''

  constructor (private readonly onLine: (line: string) => void, private readonly maxBuffered = 8192) {}

  write (chunk: Buffer | string): void {
    this.partial += typeof chunk === 'string' ? chunk : chunk.toString('utf8')
    let newline = this.partial.indexOf('\n')
    while (newline >= 0) {
      this.onLine(this.partial.slice(0, newline).replace(/\r$/, ''))
      this.partial = this.partial.slice(newline + 1)
      newline = this.partial.indexOf('\n')
    }
    if (this.partial.length > this.maxBuffered) {
      this.onLine(this.partial)
      this.partial = ''
    }
  }

  end (): void {
    if (this.partial !== '') this.onLine(this.partial)
    this.partial = ''
  }
}
