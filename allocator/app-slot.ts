import { probeHealth, type ProbeResult } from '../shared/health.js'
import type { Logger } from '../shared/log.js'
import type { InstanceExit, InstanceSpec, Runtime, RuntimeInstance } from './runtime.js'

export interface AppSlotInit {
  runtime: Runtime
  spec: InstanceSpec
  log: Logger
  /**
   * The supervisor's lifetime. Once it aborts, launching and waiting throw its reason: the
   * supervisor then reports the end its own way.
   */
  signal: AbortSignal
  stopGraceMs: number
  healthTimeoutMs: number
  startPollMs: number
  now: () => number
}

export type FirstPass = { kind: 'passed' } | { kind: 'exited', exit: InstanceExit } | { kind: 'timeout', last?: ProbeResult }

/**
 * The one copy of an instance's app that runs at a time, through the runtime: launches it,
 * notices when it exits, probes its health path and stops it. A relaunch puts a new copy in
 * the same slot, on the same port.
 */
export class AppSlot {
  private app?: RuntimeInstance
  private exit?: InstanceExit
  /** Where the app answers; kept while no copy runs, since relaunches reuse the port. */
  private where?: { host: string, port: number }
  private wake?: () => void

  constructor (private readonly init: AppSlotInit) {}

  get current (): RuntimeInstance | undefined { return this.app }
  /** Why the current app exited; undefined while it runs, and once it was stopped or replaced. */
  get exited (): InstanceExit | undefined { return this.exit }
  get address (): { host: string, port: number } | undefined { return this.where }

  async launch (): Promise<RuntimeInstance> {
    const { runtime, spec, signal } = this.init
    signal.throwIfAborted()
    const app = await runtime.start(spec, { signal })
    if (signal.aborted) {
      await runtime.stop(app, { graceMs: this.init.stopGraceMs }).catch(() => {})
      signal.throwIfAborted()
    }
    this.app = app
    this.where = app.app
    this.exit = undefined
    void app.exited.then(exit => {
      if (this.app !== app) return
      this.exit = exit
      this.wake?.()
    })
    return app
  }

  async stop (): Promise<void> {
    const app = this.app
    this.app = undefined
    this.exit = undefined
    if (app == null) return
    try {
      await this.init.runtime.stop(app, { graceMs: this.init.stopGraceMs })
    } catch (err) {
      this.init.log.warn({ err }, 'cannot stop the app')
    }
  }

  async probe (app: RuntimeInstance, timeoutMs: number): Promise<ProbeResult> {
    return await probeHealth(app.app.host, app.app.port, this.init.spec.record.health, timeoutMs)
  }

  /** Polls the health path quickly until it passes, the app exits, or the deadline passes. */
  async waitForFirstPass (app: RuntimeInstance, deadline: number): Promise<FirstPass> {
    const { signal, now } = this.init
    let last: ProbeResult | undefined
    for (;;) {
      signal.throwIfAborted()
      if (this.exit != null) return { kind: 'exited', exit: this.exit }
      const remaining = deadline - now()
      if (remaining <= 0) return { kind: 'timeout', last }
      last = await this.probe(app, Math.min(this.init.healthTimeoutMs, remaining))
      if (last.ok) return { kind: 'passed' }
      // An exit is more telling than the refused connection that it caused.
      if (this.exit != null) continue
      await this.pause(Math.min(this.init.startPollMs, Math.max(0, deadline - now())))
    }
  }

  /** Sleeps, but wakes early when the app exits or the signal aborts. */
  async pause (ms: number): Promise<void> {
    const { signal } = this.init
    if (signal.aborted || ms <= 0) return
    await new Promise<void>(resolve => {
      const done = (): void => {
        clearTimeout(timer)
        signal.removeEventListener('abort', done)
        if (this.wake === done) this.wake = undefined
        resolve()
      }
      const timer = setTimeout(done, ms)
      signal.addEventListener('abort', done, { once: true })
      this.wake = done
    })
  }
}
