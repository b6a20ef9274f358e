import type { Logger } from '../shared/log.js'
import type { InstanceStats } from '../shared/protocols/status.js'
import { AllocationError } from '../shared/protocols/alloc-errors.js'
import { backoffDelay, type BackoffConfig } from './health-verdict.js'
import type { RuntimeInstance } from './runtime.js'

/** The server-mode proxy beside an instance, as the supervisor needs it. */
export interface Sidecar {
  peerId: string
  multiaddrs: string[]
  /** Seconds since its instance last finished serving a request; undefined: no answer in time. */
  idle: (timeoutMs: number) => Promise<number | undefined>
  /** What the instance has served; undefined: no answer in time. */
  stats: (timeoutMs: number) => Promise<InstanceStats | undefined>
  stop: () => Promise<void>
  /** Settles when it ended, for whatever reason. */
  exited: Promise<unknown>
}

/**
 * Starts a sidecar for the app and resolves once it is ready (it advertised the instance).
 * When the signal aborts, it should give up and leave nothing running.
 */
export type StartSidecar = (app: { host: string, port: number }, options: { signal: AbortSignal }) => Promise<Sidecar>

export interface SidecarKeeperInit {
  startSidecar: StartSidecar
  log: Logger
  /** The supervisor's lifetime: once it aborts, no sidecar is started or kept. */
  signal: AbortSignal
  /** Between failed restarts. */
  backoff: BackoffConfig
  /** Only for the error messages. */
  service: string
  startTimeoutMs: number
  now: () => number
}

/**
 * Keeps the sidecar of one instance: starts it beside a freshly started app, and restarts it
 * (backing off while that fails) when it exits on its own. A restarted sidecar has a new
 * identity, but the app keeps running meanwhile.
 */
export class SidecarKeeper {
  private sidecar?: Sidecar
  private down = false
  private restarting?: Promise<void>
  private failures = 0
  private nextAttemptAt = 0

  constructor (private readonly init: SidecarKeeperInit) {}

  /** Undefined before the first start, and while a sidecar that exited is being replaced. */
  get current (): Sidecar | undefined { return this.sidecar }

  /**
   * Resolves with the ready sidecar, or undefined if the app exited or the supervisor ended
   * meanwhile. Throws an AllocationError when it failed or missed the deadline.
   */
  async start (app: RuntimeInstance, deadline: number): Promise<Sidecar | undefined> {
    const { signal } = this.init
    const cancel = new AbortController()
    const onAbort = (): void => { cancel.abort() }
    signal.addEventListener('abort', onAbort, { once: true })
    const pending = this.init.startSidecar(app.app, { signal: cancel.signal })
    let timer: NodeJS.Timeout | undefined
    type Outcome = { kind: 'ready', sidecar: Sidecar } | { kind: 'error', err: unknown } | { kind: 'timeout' } | { kind: 'exited' } | { kind: 'aborted' }
    const outcome = await new Promise<Outcome>(resolve => {
      pending.then(sidecar => { resolve({ kind: 'ready', sidecar }) }, (err: unknown) => { resolve({ kind: 'error', err }) })
      timer = setTimeout(() => { resolve({ kind: 'timeout' }) }, Math.max(0, deadline - this.init.now()))
      void app.exited.then(() => { resolve({ kind: 'exited' }) })
      if (signal.aborted) resolve({ kind: 'aborted' })
      signal.addEventListener('abort', () => { resolve({ kind: 'aborted' }) }, { once: true })
    })
    clearTimeout(timer)
    signal.removeEventListener('abort', onAbort)
    if (outcome.kind === 'ready') {
      this.attach(outcome.sidecar)
      return outcome.sidecar
    }
    cancel.abort()
    await this.discardLate(pending)
    if (outcome.kind === 'exited' || outcome.kind === 'aborted' || signal.aborted) return undefined
    if (outcome.kind === 'timeout') {
      throw new AllocationError('timeout', `the server proxy of '${this.init.service}' was not ready within the start timeout (${this.init.startTimeoutMs} ms)`)
    }
    const message = outcome.err instanceof Error ? outcome.err.message : String(outcome.err)
    throw new AllocationError('sidecar_failed', `the server proxy of '${this.init.service}' did not start: ${message}`, { cause: outcome.err })
  }

  /** Starts a replacement for a sidecar that exited, unless one is starting or the back-off holds. */
  restartIfDown (app: { host: string, port: number } | undefined): void {
    if (!this.down || this.restarting != null || this.init.now() < this.nextAttemptAt || app == null) return
    const { signal, log } = this.init
    this.restarting = (async () => {
      try {
        const sidecar = await this.init.startSidecar(app, { signal })
        if (signal.aborted) {
          await sidecar.stop().catch(() => {})
          return
        }
        this.attach(sidecar)
        this.failures = 0
        log.info({ peerId: sidecar.peerId }, 'sidecar restarted')
      } catch (err) {
        if (signal.aborted) return
        this.failures++
        const wait = backoffDelay(this.failures, this.init.backoff)
        this.nextAttemptAt = this.init.now() + wait
        log.warn({ err, retryInMs: wait }, 'sidecar restart failed')
      } finally {
        this.restarting = undefined
      }
    })()
  }

  /** Waits for a restart in progress, so that nothing it starts stays behind. */
  async stop (): Promise<void> {
    await this.restarting
    const sidecar = this.sidecar
    this.sidecar = undefined
    if (sidecar == null) return
    try {
      await sidecar.stop()
    } catch (err) {
      this.init.log.warn({ err }, 'cannot stop the sidecar')
    }
  }

  private attach (sidecar: Sidecar): void {
    this.sidecar = sidecar
    this.down = false
    void sidecar.exited.then(() => {
      if (this.sidecar !== sidecar || this.init.signal.aborted) return
      this.sidecar = undefined
      this.down = true
      this.init.log.warn({ peerId: sidecar.peerId }, 'sidecar exited unexpectedly: restarting it')
    })
  }

  /** A sidecar that becomes ready after we gave up on it must not stay behind. */
  private async discardLate (pending: Promise<Sidecar>): Promise<void> {
    let timer: NodeJS.Timeout | undefined
    const late = await Promise.race([
      pending.catch(() => undefined),
      new Promise<undefined>(resolve => { timer = setTimeout(() => { resolve(undefined) }, LATE_SIDECAR_WAIT_MS) })
    ])
    clearTimeout(timer)
    if (late != null) await late.stop().catch(() => {})
    // Past the wait it may still arrive: stop it then, whenever that is.
    else void pending.then(async sidecar => { await sidecar.stop() }).catch(() => {})
  }
}

const LATE_SIDECAR_WAIT_MS = 5000
