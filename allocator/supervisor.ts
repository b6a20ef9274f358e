import { probeHealth, type ProbeResult } from '../shared/health.js'
import type { Logger } from '../shared/log.js'
import type { ServiceRecord } from '../shared/registry/record.js'
import { AllocationError } from '../shared/protocols/alloc-errors.js'
import type { InstanceExit, InstanceSpec, Runtime, RuntimeInstance } from './runtime.js'


/** The server-mode proxy beside an instance, as the supervisor needs it. */
export interface Sidecar {
  peerId: string
  multiaddrs: string[]
  /** Seconds since its instance last finished serving a request; undefined: no answer in time. */
  idle: (timeoutMs: number) => Promise<number | undefined>
  stop: () => Promise<void>
  /** Settles when it ended, for whatever reason. */
  exited: Promise<unknown>
}

/**
 * Starts a sidecar for the app and resolves once it is ready (it advertised the instance).
 * When the signal aborts, it should give up and leave nothing running.
 */
export type StartSidecar = (app: { host: string, port: number }, options: { signal: AbortSignal }) => Promise<Sidecar>

export type SupervisorState = 'starting' | 'healthy' | 'unhealthy' | 'relaunching' | 'stopped' | 'culled' | 'failed'

/**
 * started: start() succeeded · healthy: healthy again after a relaunch · unhealthy: declared
 * unhealthy (failed checks or exit) · relaunched: a new copy of the app runs · culled / failed /
 * stopped: the supervisor ended, and everything it ran is gone.
 */
export type SupervisorEvent = 'started' | 'healthy' | 'unhealthy' | 'relaunched' | 'culled' | 'failed' | 'stopped'

export interface BackoffConfig {
  initialMs: number
  maxMs: number
}

export interface SupervisorInit {
  runtime: Runtime
  spec: InstanceSpec
  startSidecar: StartSidecar
  log: Logger
  /** How often the health path (and the idle time) is checked once started. Default 1000 ms. */
  healthIntervalMs?: number
  /** Consecutive failed checks that make an instance unhealthy and relaunched. Default 3. */
  unhealthyAfter?: number
  /** Consecutive passed checks before a relaunched instance counts as healthy again. Default 2. */
  healthyAfter?: number
  /** Seconds without a serviced request after which the instance is culled. Default 60. */
  idleTimeoutS?: number
  /** How long start() may take, and how long a (re)launched app may take to first pass. Default 30000 ms. */
  startTimeoutMs?: number
  /** Delay before relaunching an app whose previous relaunch did not become healthy. Default 500 ms doubling to 30 s. */
  backoff?: Partial<BackoffConfig>
  /** How long the app gets to exit on its own when stopped. Default 5000 ms. */
  stopGraceMs?: number
  /** How long one health check may take. Default 2000 ms. */
  healthTimeoutMs?: number
  /** How often start() polls the health path. Default 75 ms. */
  startPollMs?: number
  /** Launches tried during start() while the app exits before its first health pass. Default 3. */
  startAttempts?: number
  /** Relaunches in a row that did not become healthy before the supervisor gives up ('failed'). Default: never. */
  maxFailedRelaunches?: number
  /** Asked on every idle check: false keeps the instance however idle (e.g. to keep minInstances warm). */
  cullable?: () => boolean
  onEvent?: (event: SupervisorEvent, supervisor: InstanceSupervisor) => void
  now?: () => number
}

const DEFAULTS = {
  healthIntervalMs: 1000,
  unhealthyAfter: 3,
  healthyAfter: 2,
  idleTimeoutS: 60,
  startTimeoutMs: 30_000,
  stopGraceMs: 5000,
  healthTimeoutMs: 2000,
  startPollMs: 75,
  backoff: { initialMs: 500, maxMs: 30_000 }
} as const

/** How long to wait before the attempt-th retry (1-based): doubling from initialMs, capped at maxMs. */
export function backoffDelay (attempt: number, backoff: BackoffConfig): number {
  if (attempt <= 0) return 0
  return Math.min(backoff.maxMs, backoff.initialMs * 2 ** Math.min(attempt - 1, 30))
}

/**
 * Owns one instance of a service: its app (through a runtime) and its sidecar proxy. Starts
 * them, keeps the app healthy by relaunching it on the same port (so the sidecar, which stays
 * up, need not change), culls the whole instance when it idles, and stops it on request.
 */
export class InstanceSupervisor {
  private current: SupervisorState = 'starting'
  private relaunchCount = 0
  private app?: RuntimeInstance
  /** Set when the current app exited; the next tick relaunches it. */
  private appExit?: InstanceExit
  /** Why the app must be relaunched, when its health checks said so; the next tick does it. */
  private relaunchDue?: string
  /** Where the app answers; the same across relaunches, which reuse the port. */
  private appAddress?: { host: string, port: number }
  /** The last lines of the last app that failed to start, for the error message. */
  private lastOutput: string[] = []
  private sidecar?: Sidecar
  private sidecarDown = false
  private sidecarRestart?: Promise<void>
  private sidecarFailures = 0
  private nextSidecarAttemptAt = 0
  private readonly lifetime = new AbortController()
  private starting?: Promise<unknown>
  private loop?: Promise<void>
  private ending?: Promise<void>
  private wake?: () => void
  private passes = 0
  private fails = 0
  /** Relaunches since the app last became healthy: drives the backoff. */
  private failedRelaunches = 0
  private launchedAt = 0
  private passedSinceLaunch = false
  private readonly log: Logger
  private readonly cfg: Required<Omit<SupervisorInit, 'runtime' | 'spec' | 'startSidecar' | 'log' | 'backoff' | 'cullable' | 'onEvent'>> & { backoff: BackoffConfig }
  private readonly finished: Promise<SupervisorState>
  private resolveFinished!: (state: SupervisorState) => void

  constructor (private readonly init: SupervisorInit) {
    this.log = init.log.child({ service: init.spec.record.name, instance: init.spec.instanceId, port: init.spec.hostPort })
    this.cfg = {
      healthIntervalMs: init.healthIntervalMs ?? DEFAULTS.healthIntervalMs,
      unhealthyAfter: init.unhealthyAfter ?? DEFAULTS.unhealthyAfter,
      healthyAfter: init.healthyAfter ?? DEFAULTS.healthyAfter,
      idleTimeoutS: init.idleTimeoutS ?? DEFAULTS.idleTimeoutS,
      startTimeoutMs: init.startTimeoutMs ?? DEFAULTS.startTimeoutMs,
      stopGraceMs: init.stopGraceMs ?? DEFAULTS.stopGraceMs,
      healthTimeoutMs: init.healthTimeoutMs ?? DEFAULTS.healthTimeoutMs,
      startPollMs: init.startPollMs ?? DEFAULTS.startPollMs,
      maxFailedRelaunches: init.maxFailedRelaunches ?? Infinity,
      startAttempts: init.startAttempts ?? 3,
      now: init.now ?? Date.now,
      backoff: { ...DEFAULTS.backoff, ...init.backoff }
    }
    this.finished = new Promise(resolve => { this.resolveFinished = resolve })
  }

  get state (): SupervisorState { return this.current }
  get relaunches (): number { return this.relaunchCount }
  get service (): string { return this.init.spec.record.name }
  get record (): ServiceRecord { return this.init.spec.record }
  get instanceId (): string { return this.init.spec.instanceId }
  get hostPort (): number { return this.init.spec.hostPort }
  /** The sidecar's identity; it changes if the sidecar had to be restarted. */
  get peerId (): string | undefined { return this.sidecar?.peerId }
  get multiaddrs (): string[] { return this.sidecar?.multiaddrs ?? [] }
  /** Settles with the final state once the supervisor ended (stopped, culled or failed) and left nothing running. */
  get done (): Promise<SupervisorState> { return this.finished }

  /**
   * Resolves once the app passed its health check and the sidecar advertises it. On failure
   * everything started is stopped and removed, and the AllocationError says why.
   */
  async start (): Promise<{ peerId: string, multiaddrs: string[] }> {
    if (this.starting != null) throw new Error('InstanceSupervisor.start() called twice')
    const run = this.runStart()
    this.starting = run
    return await run
  }

  /** Stops the sidecar, then the app. Idempotent; also cancels a start() in progress. */
  async stop (): Promise<void> {
    await this.end('stopped', 'stop requested', false)
  }

  // ---- start -------------------------------------------------------------------------------

  private async runStart (): Promise<{ peerId: string, multiaddrs: string[] }> {
    const begun = this.cfg.now()
    let sidecar: Sidecar
    try {
      sidecar = await this.startInstance(begun + this.cfg.startTimeoutMs)
    } catch (err) {
      const error = this.lifetime.signal.aborted
        ? new AllocationError('aborted', `instance of '${this.service}' was stopped while starting`)
        : toAllocationError(err)
      await this.teardown()
      if (!this.lifetime.signal.aborted) {
        this.lifetime.abort()
        this.log.info({ code: error.code, err: error.message, relaunches: this.relaunchCount }, 'instance failed to start')
        this.finish('failed')
      }
      throw error
    }
    this.current = 'healthy'
    this.log.info({ ms: this.cfg.now() - begun, peerId: sidecar.peerId, relaunches: this.relaunchCount }, 'instance started')
    this.emit('started')
    this.loop = this.supervise()
    return { peerId: sidecar.peerId, multiaddrs: sidecar.multiaddrs }
  }

  private async startInstance (deadline: number): Promise<Sidecar> {
    let attempt = 0
    let lastExit: InstanceExit | undefined
    for (;;) {
      if (attempt > 0) {
        const wait = backoffDelay(attempt, this.cfg.backoff)
        // An app that keeps exiting before its first health pass will not start: say so now
        // rather than hold the asking client until the start timeout.
        if (attempt >= this.cfg.startAttempts || this.cfg.now() + wait >= deadline) {
          throw new AllocationError('start_failed', `the app of '${this.service}' ${lastExit?.reason ?? 'exited'} before it became healthy (${attempt} attempts)${this.outputHint()}`)
        }
        await this.pause(wait)
        this.throwIfAborted()
      }
      const app = await this.launch()
      if (attempt > 0) this.countRelaunch(`start attempt ${attempt + 1}`)
      const first = await this.waitForFirstPass(app, deadline)
      if (first.kind === 'exited') {
        lastExit = first.exit
        this.lastOutput = app.recentOutput()
        this.log.debug({ reason: first.exit.reason, attempt: attempt + 1 }, 'app exited before it became healthy')
        await this.stopApp()
        attempt++
        continue
      }
      if (first.kind === 'timeout') {
        this.lastOutput = app.recentOutput()
        const health = this.init.spec.record.health
        if (first.last?.status != null) {
          throw new AllocationError('unhealthy', `the app of '${this.service}' answered ${health} with HTTP ${first.last.status} until the start timeout (${this.cfg.startTimeoutMs} ms)${this.outputHint()}`)
        }
        throw new AllocationError('timeout', `the app of '${this.service}' did not answer ${health} within ${this.cfg.startTimeoutMs} ms (${first.last?.error ?? 'no answer'})${this.outputHint()}`)
      }
      const sidecar = await this.startSidecarWhileAppRuns(app, deadline)
      if (sidecar != null) return sidecar
      // The app exited while the sidecar was starting: the same as an exit before the first pass.
      lastExit = this.appExit
      this.lastOutput = app.recentOutput()
      await this.stopApp()
      attempt++
    }
  }

  private outputHint (): string {
    const lines = this.lastOutput.filter(line => line.trim() !== '').slice(-3)
    return lines.length === 0 ? '' : `; last output: ${lines.join(' | ')}`
  }

  /** Polls the health path quickly until it passes, the app exits, or the deadline passes. */
  private async waitForFirstPass (app: RuntimeInstance, deadline: number): Promise<{ kind: 'passed' } | { kind: 'exited', exit: InstanceExit } | { kind: 'timeout', last?: ProbeResult }> {
    let last: ProbeResult | undefined
    for (;;) {
      this.throwIfAborted()
      if (this.appExit != null) return { kind: 'exited', exit: this.appExit }
      const remaining = deadline - this.cfg.now()
      if (remaining <= 0) return { kind: 'timeout', last }
      last = await this.probe(app, Math.min(this.cfg.healthTimeoutMs, remaining))
      if (last.ok) return { kind: 'passed' }
      // An exit is more telling than the refused connection that it caused.
      if (this.appExit != null) continue
      await this.pause(Math.min(this.cfg.startPollMs, Math.max(0, deadline - this.cfg.now())))
    }
  }

  /** Resolves with the ready sidecar, or undefined if the app exited meanwhile. */
  private async startSidecarWhileAppRuns (app: RuntimeInstance, deadline: number): Promise<Sidecar | undefined> {
    const cancel = new AbortController()
    const onAbort = (): void => { cancel.abort() }
    this.lifetime.signal.addEventListener('abort', onAbort, { once: true })
    const pending = this.init.startSidecar(app.app, { signal: cancel.signal })
    let timer: NodeJS.Timeout | undefined
    type Outcome = { kind: 'ready', sidecar: Sidecar } | { kind: 'error', err: unknown } | { kind: 'timeout' } | { kind: 'exited' } | { kind: 'aborted' }
    const outcome = await new Promise<Outcome>(resolve => {
      pending.then(sidecar => { resolve({ kind: 'ready', sidecar }) }, (err: unknown) => { resolve({ kind: 'error', err }) })
      timer = setTimeout(() => { resolve({ kind: 'timeout' }) }, Math.max(0, deadline - this.cfg.now()))
      void app.exited.then(() => { resolve({ kind: 'exited' }) })
      if (this.lifetime.signal.aborted) resolve({ kind: 'aborted' })
      this.lifetime.signal.addEventListener('abort', () => { resolve({ kind: 'aborted' }) }, { once: true })
    })
    clearTimeout(timer)
    this.lifetime.signal.removeEventListener('abort', onAbort)
    if (outcome.kind === 'ready') {
      this.attachSidecar(outcome.sidecar)
      return outcome.sidecar
    }
    cancel.abort()
    await this.discardLateSidecar(pending)
    if (outcome.kind === 'exited') return undefined
    this.throwIfAborted()
    if (outcome.kind === 'timeout') {
      throw new AllocationError('timeout', `the server proxy of '${this.service}' was not ready within the start timeout (${this.cfg.startTimeoutMs} ms)`)
    }
    const message = outcome.kind === 'error' && outcome.err instanceof Error ? outcome.err.message : String(outcome.kind === 'error' ? outcome.err : outcome.kind)
    throw new AllocationError('sidecar_failed', `the server proxy of '${this.service}' did not start: ${message}`, { cause: outcome.kind === 'error' ? outcome.err : undefined })
  }

  /** A sidecar that becomes ready after we gave up on it must not stay behind. */
  private async discardLateSidecar (pending: Promise<Sidecar>): Promise<void> {
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

  // ---- supervision -------------------------------------------------------------------------

  private async supervise (): Promise<void> {
    while (!this.lifetime.signal.aborted) {
      if (this.app != null && this.appExit == null && this.relaunchDue == null) await this.pause(this.cfg.healthIntervalMs)
      if (this.lifetime.signal.aborted) break
      try {
        await this.tick()
      } catch (err) {
        if (this.lifetime.signal.aborted) break
        // A bug here must not end supervision of a running instance; the next tick retries.
        this.log.error({ err: errorText(err) }, 'supervision step failed')
        await this.pause(this.cfg.healthIntervalMs)
      }
    }
  }

  private async tick (): Promise<void> {
    if (this.app == null || this.appExit != null || this.relaunchDue != null) {
      const reason = this.relaunchDue ?? (this.appExit != null ? `the app ${this.appExit.reason}` : 'the last relaunch did not start')
      this.relaunchDue = undefined
      await this.relaunch(reason)
      return
    }
    const app = this.app
    const result = await this.probe(app, this.cfg.healthTimeoutMs)
    if (this.lifetime.signal.aborted || this.app !== app) return
    if (this.appExit != null) return // handled on the next turn, without a pause
    if (result.ok) {
      this.onPass()
    } else {
      const why = result.status != null ? `HTTP ${result.status}` : result.error ?? 'no answer'
      if (this.onFail(why)) return
    }
    this.checkSidecar()
    await this.checkIdle()
  }

  private onPass (): void {
    this.fails = 0
    this.passedSinceLaunch = true
    if (this.current !== 'unhealthy') return
    this.passes++
    if (this.passes < this.cfg.healthyAfter) return
    this.current = 'healthy'
    this.failedRelaunches = 0
    this.log.info({ relaunches: this.relaunchCount, passes: this.passes }, 'instance healthy again')
    this.emit('healthy')
  }

  /** Records a failed check; returns true when it led to a relaunch. */
  private onFail (why: string): boolean {
    this.passes = 0
    // A relaunched app that has not answered yet may still be booting: it gets the start
    // timeout, as at the first start, rather than N intervals.
    if (this.current === 'unhealthy' && !this.passedSinceLaunch) {
      if (this.cfg.now() - this.launchedAt < this.cfg.startTimeoutMs) return false
      this.relaunchDue = `the relaunched app did not pass ${this.init.spec.record.health} within ${this.cfg.startTimeoutMs} ms (last: ${why})`
      return true
    }
    this.fails++
    this.log.debug({ fails: this.fails, why }, 'health check failed')
    if (this.fails < this.cfg.unhealthyAfter) return false
    this.relaunchDue = `${this.fails} health checks failed in a row (last: ${why})`
    return true
  }

  private async relaunch (why: string): Promise<void> {
    if (this.current === 'healthy') {
      this.log.info({ reason: why }, 'instance unhealthy: relaunching')
      this.emit('unhealthy')
    }
    this.current = 'relaunching'
    await this.stopApp()
    if (this.failedRelaunches >= this.cfg.maxFailedRelaunches) {
      await this.end('failed', `${this.failedRelaunches} relaunches in a row did not become healthy (last: ${why})`, true)
      return
    }
    if (this.failedRelaunches > 0) {
      const wait = backoffDelay(this.failedRelaunches, this.cfg.backoff)
      this.log.info({ reason: why, backoffMs: wait, failedRelaunches: this.failedRelaunches }, 'relaunch did not become healthy: backing off')
      await this.pause(wait)
      if (this.lifetime.signal.aborted) return
    }
    // Presumed failed until it passes healthyAfter checks, which resets the count.
    this.failedRelaunches++
    try {
      await this.launch()
    } catch (err) {
      if (this.lifetime.signal.aborted) return
      this.log.warn({ err: errorText(err), failedRelaunches: this.failedRelaunches }, 'relaunch failed to start the app')
      return
    }
    this.countRelaunch(why)
    this.current = 'unhealthy'
  }

  private countRelaunch (reason: string): void {
    this.relaunchCount++
    this.passes = 0
    this.fails = 0
    this.log.info({ relaunches: this.relaunchCount, reason }, 'instance relaunched')
    this.emit('relaunched')
  }

  private checkSidecar (): void {
    const app = this.appAddress
    if (!this.sidecarDown || this.sidecarRestart != null || this.cfg.now() < this.nextSidecarAttemptAt || app == null) return
    this.sidecarRestart = (async () => {
      try {
        const sidecar = await this.init.startSidecar(app, { signal: this.lifetime.signal })
        if (this.lifetime.signal.aborted) {
          await sidecar.stop().catch(() => {})
          return
        }
        this.attachSidecar(sidecar)
        this.sidecarFailures = 0
        this.log.info({ peerId: sidecar.peerId }, 'sidecar restarted')
      } catch (err) {
        if (this.lifetime.signal.aborted) return
        this.sidecarFailures++
        const wait = backoffDelay(this.sidecarFailures, this.cfg.backoff)
        this.nextSidecarAttemptAt = this.cfg.now() + wait
        this.log.warn({ err: errorText(err), retryInMs: wait }, 'sidecar restart failed')
      } finally {
        this.sidecarRestart = undefined
      }
    })()
  }

  private attachSidecar (sidecar: Sidecar): void {
    this.sidecar = sidecar
    this.sidecarDown = false
    void sidecar.exited.then(() => {
      if (this.sidecar !== sidecar || this.lifetime.signal.aborted) return
      this.sidecar = undefined
      this.sidecarDown = true
      this.log.warn({ peerId: sidecar.peerId }, 'sidecar exited unexpectedly: restarting it')
    })
  }

  private async checkIdle (): Promise<void> {
    const sidecar = this.sidecar
    if (sidecar == null || this.init.cullable?.() === false) return
    const idle = await sidecar.idle(this.cfg.healthTimeoutMs)
    if (idle === undefined || this.lifetime.signal.aborted || idle <= this.cfg.idleTimeoutS) return
    await this.end('culled', `idle for ${idle} s (timeout ${this.cfg.idleTimeoutS} s)`, true)
  }

  // ---- plumbing ----------------------------------------------------------------------------

  private async launch (): Promise<RuntimeInstance> {
    this.throwIfAborted()
    const app = await this.init.runtime.start(this.init.spec, { signal: this.lifetime.signal })
    if (this.lifetime.signal.aborted) {
      await this.init.runtime.stop(app, { graceMs: this.cfg.stopGraceMs }).catch(() => {})
      this.throwIfAborted()
    }
    this.app = app
    this.appAddress = app.app
    this.appExit = undefined
    this.relaunchDue = undefined
    this.launchedAt = this.cfg.now()
    this.passedSinceLaunch = false
    void app.exited.then(exit => {
      if (this.app !== app) return
      this.appExit = exit
      this.wake?.()
    })
    return app
  }

  private async stopApp (): Promise<void> {
    const app = this.app
    this.app = undefined
    this.appExit = undefined
    if (app == null) return
    try {
      await this.init.runtime.stop(app, { graceMs: this.cfg.stopGraceMs })
    } catch (err) {
      this.log.warn({ err: errorText(err) }, 'cannot stop the app')
    }
  }

  /** Stops the sidecar first, so it stops advertising before its app goes away. */
  private async teardown (): Promise<void> {
    await this.sidecarRestart
    const sidecar = this.sidecar
    this.sidecar = undefined
    if (sidecar != null) {
      try {
        await sidecar.stop()
      } catch (err) {
        this.log.warn({ err: errorText(err) }, 'cannot stop the sidecar')
      }
    }
    await this.stopApp()
  }

  /**
   * Ends the supervisor once, whoever asks first. `fromLoop`: called by the supervision loop
   * itself, which must then not wait for its own end.
   */
  private async end (final: 'stopped' | 'culled' | 'failed', reason: string, fromLoop: boolean): Promise<void> {
    this.ending ??= (async () => {
      this.lifetime.abort()
      this.wake?.()
      if (!fromLoop) {
        await this.starting?.catch(() => {})
        await this.loop
      }
      // A start that failed on its own has already torn down and reported 'failed'.
      if (this.current === 'failed') return
      await this.teardown()
      this.log.info({ reason, relaunches: this.relaunchCount }, `instance ${final}`)
      this.finish(final)
    })()
    await this.ending
  }

  private finish (final: SupervisorState): void {
    this.current = final
    this.resolveFinished(final)
    this.emit(final as SupervisorEvent)
  }

  private emit (event: SupervisorEvent): void {
    try {
      this.init.onEvent?.(event, this)
    } catch (err) {
      this.log.warn({ err: errorText(err), event }, 'event listener failed')
    }
  }

  /** Sleeps, but wakes early when the app exits or the supervisor ends. */
  private async pause (ms: number): Promise<void> {
    if (this.lifetime.signal.aborted || ms <= 0) return
    await new Promise<void>(resolve => {
      const done = (): void => {
        clearTimeout(timer)
        this.lifetime.signal.removeEventListener('abort', done)
        if (this.wake === done) this.wake = undefined
        resolve()
      }
      const timer = setTimeout(done, ms)
      this.lifetime.signal.addEventListener('abort', done, { once: true })
      this.wake = done
    })
  }

  private throwIfAborted (): void {
    if (this.lifetime.signal.aborted) throw new AllocationError('aborted', `instance of '${this.service}' was stopped while starting`)
  }

  private async probe (app: RuntimeInstance, timeoutMs: number): Promise<ProbeResult> {
    return await probeHealth(app.app.host, app.app.port, this.init.spec.record.health, timeoutMs)
  }
}

const LATE_SIDECAR_WAIT_MS = 5000

function toAllocationError (err: unknown): AllocationError {
  if (err instanceof AllocationError) return err
  return new AllocationError('start_failed', errorText(err), { cause: err })
}

function errorText (err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}
