import type { Logger } from '../shared/log.js'
import type { ServiceRecord } from '../shared/registry/record.js'
import { AllocationError } from '../shared/protocols/alloc-errors.js'
import type { InstanceStats } from '../shared/protocols/status.js'
import { AppSlot } from './app-slot.js'
import { backoffDelay, DEFAULT_BACKOFF, HealthVerdict, type BackoffConfig } from './health-verdict.js'
import type { InstanceExit, InstanceSpec, Runtime } from './runtime.js'
import { SidecarKeeper, type Sidecar, type StartSidecar } from './sidecar-keeper.js'

// Part of the supervisor's API since before these parts had modules of their own.
export { backoffDelay, type BackoffConfig } from './health-verdict.js'
export type { Sidecar, StartSidecar } from './sidecar-keeper.js'

/** stopping: being torn down (stopped, culled or failed), its sidecar first; not to be handed out. */
export type SupervisorState = 'starting' | 'healthy' | 'unhealthy' | 'relaunching' | 'stopping' | 'stopped' | 'culled' | 'failed'

/**
 * started: start() succeeded · healthy: healthy again after a relaunch · unhealthy: declared
 * unhealthy (failed checks or exit) · relaunched: a new copy of the app runs · culled / failed /
 * stopped: the supervisor ended, and everything it ran is gone.
 */
export type SupervisorEvent = 'started' | 'healthy' | 'unhealthy' | 'relaunched' | 'culled' | 'failed' | 'stopped'

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

/** Each instance's health checks, relaunches and culling, unless the allocator says otherwise. */
export const SUPERVISOR_DEFAULTS = {
  healthIntervalMs: 1000,
  unhealthyAfter: 3,
  healthyAfter: 2,
  idleTimeoutS: 60,
  startTimeoutMs: 30_000,
  stopGraceMs: 5000,
  healthTimeoutMs: 2000,
  startPollMs: 75,
  backoff: DEFAULT_BACKOFF
} as const

/**
 * Owns one instance of a service: its app (through a runtime) and its sidecar proxy. Starts
 * them, keeps the app healthy by relaunching it on the same port (so the sidecar, which stays
 * up, need not change), culls the whole instance when it idles, and stops it on request.
 */
export class InstanceSupervisor {
  /** Once running, the health verdict tells healthy, unhealthy or relaunching apart. */
  private lifecycle: 'starting' | 'running' | 'stopping' | 'stopped' | 'culled' | 'failed' = 'starting'
  private relaunchCount = 0
  /** Why the app must be relaunched, when its health checks said so; the next tick does it. */
  private relaunchDue?: string
  /** The last lines of the last app that failed to start, for the error message. */
  private lastOutput: string[] = []
  private readonly lifetime = new AbortController()
  private starting?: Promise<unknown>
  private loop?: Promise<void>
  private ending?: Promise<void>
  private readonly app: AppSlot
  private readonly health: HealthVerdict
  private readonly sidecars: SidecarKeeper
  private readonly log: Logger
  private readonly cfg: Required<Omit<SupervisorInit, 'runtime' | 'spec' | 'startSidecar' | 'log' | 'backoff' | 'cullable' | 'onEvent'>> & { backoff: BackoffConfig }
  private readonly finished: Promise<SupervisorState>
  private resolveFinished!: (state: SupervisorState) => void
  private readonly createdAt: number

  constructor (private readonly init: SupervisorInit) {
    this.log = init.log.child({ service: init.spec.record.name, instance: init.spec.instanceId, port: init.spec.hostPort })
    const cfg = this.cfg = {
      healthIntervalMs: init.healthIntervalMs ?? SUPERVISOR_DEFAULTS.healthIntervalMs,
      unhealthyAfter: init.unhealthyAfter ?? SUPERVISOR_DEFAULTS.unhealthyAfter,
      healthyAfter: init.healthyAfter ?? SUPERVISOR_DEFAULTS.healthyAfter,
      idleTimeoutS: init.idleTimeoutS ?? SUPERVISOR_DEFAULTS.idleTimeoutS,
      startTimeoutMs: init.startTimeoutMs ?? SUPERVISOR_DEFAULTS.startTimeoutMs,
      stopGraceMs: init.stopGraceMs ?? SUPERVISOR_DEFAULTS.stopGraceMs,
      healthTimeoutMs: init.healthTimeoutMs ?? SUPERVISOR_DEFAULTS.healthTimeoutMs,
      startPollMs: init.startPollMs ?? SUPERVISOR_DEFAULTS.startPollMs,
      maxFailedRelaunches: init.maxFailedRelaunches ?? Infinity,
      startAttempts: init.startAttempts ?? 3,
      now: init.now ?? Date.now,
      backoff: { ...SUPERVISOR_DEFAULTS.backoff, ...init.backoff }
    }
    this.app = new AppSlot({ ...cfg, runtime: init.runtime, spec: init.spec, log: this.log, signal: this.lifetime.signal })
    this.health = new HealthVerdict({ ...cfg, healthPath: init.spec.record.health })
    this.sidecars = new SidecarKeeper({ ...cfg, startSidecar: init.startSidecar, log: this.log, signal: this.lifetime.signal, service: init.spec.record.name })
    this.finished = new Promise(resolve => { this.resolveFinished = resolve })
    this.createdAt = cfg.now()
  }

  get state (): SupervisorState { return this.lifecycle === 'running' ? this.health.phase : this.lifecycle }
  get relaunches (): number { return this.relaunchCount }
  get service (): string { return this.init.spec.record.name }
  get record (): ServiceRecord { return this.init.spec.record }
  get instanceId (): string { return this.init.spec.instanceId }
  get hostPort (): number { return this.init.spec.hostPort }
  /** The sidecar's identity; it changes if the sidecar had to be restarted. */
  get peerId (): string | undefined { return this.sidecars.current?.peerId }
  get multiaddrs (): string[] { return this.sidecars.current?.multiaddrs ?? [] }
  /** Seconds since the allocator took the instance on. */
  get ageS (): number { return Math.round((this.cfg.now() - this.createdAt) / 1000) }
  /** What the instance has served, from its sidecar; undefined without one or without an answer in time. */
  async stats (timeoutMs: number): Promise<InstanceStats | undefined> { return await this.sidecars.current?.stats(timeoutMs) }
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
        this.log.info({ code: error.code, err: error, relaunches: this.relaunchCount }, 'instance failed to start')
        this.finish('failed')
      }
      throw error
    }
    this.lifecycle = 'running'
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
        await this.app.pause(wait)
        this.throwIfAborted()
      }
      const app = await this.app.launch()
      if (attempt > 0) this.countRelaunch(`start attempt ${attempt + 1}`)
      const first = await this.app.waitForFirstPass(app, deadline)
      if (first.kind === 'exited') {
        lastExit = first.exit
        this.lastOutput = app.recentOutput()
        this.log.debug({ reason: first.exit.reason, attempt: attempt + 1 }, 'app exited before it became healthy')
        await this.app.stop()
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
      const sidecar = await this.sidecars.start(app, deadline)
      if (sidecar != null) return sidecar
      this.throwIfAborted()
      // The app exited while the sidecar was starting: the same as an exit before the first pass.
      lastExit = this.app.exited
      this.lastOutput = app.recentOutput()
      await this.app.stop()
      attempt++
    }
  }

  private outputHint (): string {
    const lines = this.lastOutput.filter(line => line.trim() !== '').slice(-3)
    return lines.length === 0 ? '' : `; last output: ${lines.join(' | ')}`
  }

  // ---- supervision -------------------------------------------------------------------------

  private async supervise (): Promise<void> {
    while (!this.lifetime.signal.aborted) {
      if (this.app.current != null && this.app.exited == null && this.relaunchDue == null) await this.app.pause(this.cfg.healthIntervalMs)
      if (this.lifetime.signal.aborted) break
      try {
        await this.tick()
      } catch (err) {
        if (this.lifetime.signal.aborted) break
        // A bug here must not end supervision of a running instance; the next tick retries.
        this.log.error({ err }, 'supervision step failed')
        await this.app.pause(this.cfg.healthIntervalMs)
      }
    }
  }

  private async tick (): Promise<void> {
    const app = this.app.current
    const exit = this.app.exited
    if (app == null || exit != null || this.relaunchDue != null) {
      const reason = this.relaunchDue ?? (exit != null ? `the app ${exit.reason}` : 'the last relaunch did not start')
      this.relaunchDue = undefined
      await this.relaunch(reason)
      return
    }
    const result = await this.app.probe(app, this.cfg.healthTimeoutMs)
    if (this.lifetime.signal.aborted || this.app.current !== app) return
    if (this.app.exited != null) return // handled on the next turn, without a pause
    const verdict = this.health.judge(result)
    if ((verdict.kind === 'fail' || verdict.kind === 'relaunch') && verdict.fails > 0) this.log.debug({ fails: verdict.fails, why: verdict.why }, 'health check failed')
    if (verdict.kind === 'relaunch') {
      this.relaunchDue = verdict.reason
      return
    }
    if (verdict.kind === 'healthy') {
      this.log.info({ relaunches: this.relaunchCount, passes: verdict.passes }, 'instance healthy again')
      this.emit('healthy')
    }
    this.sidecars.restartIfDown(this.app.address)
    await this.checkIdle()
  }

  private async relaunch (why: string): Promise<void> {
    if (this.health.phase === 'healthy') {
      this.log.info({ reason: why }, 'instance unhealthy: relaunching')
      this.emit('unhealthy')
    }
    const plan = this.health.planRelaunch()
    await this.app.stop()
    if (plan.kind === 'give-up') {
      await this.end('failed', `${plan.failedRelaunches} relaunches in a row did not become healthy (last: ${why})`, true)
      return
    }
    if (plan.failedRelaunches > 0) {
      this.log.info({ reason: why, backoffMs: plan.backoffMs, failedRelaunches: plan.failedRelaunches }, 'relaunch did not become healthy: backing off')
      await this.app.pause(plan.backoffMs)
      if (this.lifetime.signal.aborted) return
    }
    try {
      await this.app.launch()
    } catch (err) {
      if (this.lifetime.signal.aborted) return
      // This relaunch counts among the failed ones already.
      this.log.warn({ err, failedRelaunches: plan.failedRelaunches + 1 }, 'relaunch failed to start the app')
      return
    }
    this.countRelaunch(why)
    this.health.relaunched()
  }

  private countRelaunch (reason: string): void {
    this.relaunchCount++
    this.log.info({ relaunches: this.relaunchCount, reason }, 'instance relaunched')
    this.emit('relaunched')
  }

  private async checkIdle (): Promise<void> {
    const sidecar = this.sidecars.current
    if (sidecar == null || this.init.cullable?.() === false) return
    const idle = await sidecar.idle(this.cfg.healthTimeoutMs)
    if (idle === undefined || this.lifetime.signal.aborted || idle <= this.cfg.idleTimeoutS) return
    await this.end('culled', `idle for ${idle} s (timeout ${this.cfg.idleTimeoutS} s)`, true)
  }

  // ---- plumbing ----------------------------------------------------------------------------

  /** Stops the sidecar first, so it stops advertising before its app goes away. */
  private async teardown (): Promise<void> {
    await this.sidecars.stop()
    await this.app.stop()
  }

  /**
   * Ends the supervisor once, whoever asks first. `fromLoop`: called by the supervision loop
   * itself, which must then not wait for its own end.
   */
  private async end (final: 'stopped' | 'culled' | 'failed', reason: string, fromLoop: boolean): Promise<void> {
    this.ending ??= (async () => {
      this.lifetime.abort()
      if (!fromLoop) {
        await this.starting?.catch(() => {})
        await this.loop
      }
      // A start that failed on its own has already torn down and reported 'failed'.
      if (this.lifecycle === 'failed') return
      this.lifecycle = 'stopping'
      await this.teardown()
      this.log.info({ reason, relaunches: this.relaunchCount }, `instance ${final}`)
      this.finish(final)
    })()
    await this.ending
  }

  private finish (final: 'stopped' | 'culled' | 'failed'): void {
    this.lifecycle = final
    this.resolveFinished(final)
    this.emit(final)
  }

  private emit (event: SupervisorEvent): void {
    try {
      this.init.onEvent?.(event, this)
    } catch (err) {
      this.log.warn({ err, event }, 'event listener failed')
    }
  }

  private throwIfAborted (): void {
    if (this.lifetime.signal.aborted) throw new AllocationError('aborted', `instance of '${this.service}' was stopped while starting`)
  }
}

function toAllocationError (err: unknown): AllocationError {
  if (err instanceof AllocationError) return err
  return new AllocationError('start_failed', err instanceof Error ? err.message : String(err), { cause: err })
}
