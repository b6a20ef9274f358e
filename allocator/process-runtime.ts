import { spawn, type ChildProcess } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { setTimeout as delay } from 'node:timers/promises'
import type { Logger } from '../shared/log.js'
import { AllocationError } from './errors.js'
import { AppOutput, LineSplitter, type InstanceExit, type InstanceSpec, type Runtime, type RuntimeInstance } from './runtime.js'

export interface ProcessRuntimeInit {
  log: Logger
  /** Runs `<shell> -c <command>`. Default /bin/sh. */
  shell?: string
  /** Working directory of the apps. Default: the allocator's. */
  cwd?: string
  /**
   * Variables of the allocator's environment that apps inherit. Not all of it: the allocator's
   * environment can hold secrets (P2P_PSK) that an app must not see.
   */
  inheritEnv?: readonly string[]
  /** Used when stop() is given no grace. Default 5000 ms. */
  defaultGraceMs?: number
  /** The allocator's environment, for tests. Default process.env. */
  env?: NodeJS.ProcessEnv
}

export const DEFAULT_INHERITED_ENV = ['PATH', 'HOME', 'USER', 'LOGNAME', 'LANG', 'LC_ALL', 'TZ', 'TMPDIR'] as const

/**
 * Marks an app's processes with the allocator that started them (its children inherit it), so
 * that a later run of that allocator can find what a SIGKILLed one left: the process runtime's
 * counterpart of the docker runtime's container labels.
 */
export const ALLOCATOR_ENV = 'HYPHAE_ALLOCATOR'

const GROUP_POLL_MS = 50
/** After SIGKILL the kernel needs a moment to tear the group down; waiting longer means something is wrong. */
const KILL_SETTLE_MS = 2000

interface LiveProcess {
  child: ChildProcess
  /** The process group: the leader's pid, since it was spawned detached. */
  pgid: number
  stopping: boolean
  stopped?: Promise<void>
}

/**
 * Runs a record's command as a local process. Each app gets its own process group, so that
 * whatever it forks (a shell's children, worker processes) ends with it.
 */
export class ProcessRuntime implements Runtime {
  readonly kind = 'process' as const
  private readonly live = new Map<string, LiveProcess>()
  // Bound once, so the same function can be added to and removed from process 'exit'.
  private readonly killAllOnExit = (): void => {
    for (const proc of this.live.values()) signalGroup(proc.pgid, 'SIGKILL')
  }

  constructor (private readonly init: ProcessRuntimeInit) {}

  async available (): Promise<boolean> {
    return true
  }

  async start (spec: InstanceSpec, options: { signal?: AbortSignal } = {}): Promise<RuntimeInstance> {
    const { record } = spec
    if (record.command == null) {
      throw new AllocationError('start_failed', `service '${record.name}' has no command: the process runtime runs commands, not images`)
    }
    if (options.signal?.aborted === true) throw new AllocationError('aborted', `start of '${record.name}' was cancelled`)
    const log = this.init.log.child({ service: record.name, instance: spec.instanceId })
    const parentEnv = this.init.env ?? process.env
    const env: NodeJS.ProcessEnv = {}
    for (const name of this.init.inheritEnv ?? DEFAULT_INHERITED_ENV) {
      if (parentEnv[name] !== undefined) env[name] = parentEnv[name]
    }
    // Last: the allocator publishes and health-checks this port, and finds its orphans by the
    // mark; the record can move neither.
    Object.assign(env, record.env, { PORT: String(spec.hostPort), [ALLOCATOR_ENV]: spec.allocatorPeerId })

    const child = spawn(this.init.shell ?? '/bin/sh', ['-c', record.command], {
      cwd: this.init.cwd,
      env,
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe']
    })
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', resolve)
      child.once('error', err => { reject(new AllocationError('start_failed', `cannot run '${record.command ?? ''}': ${err.message}`, { cause: err })) })
    })
    const pid = child.pid as number
    const proc: LiveProcess = { child, pgid: pid, stopping: false }
    this.track(String(pid), proc)

    const output = new AppOutput(log)
    for (const stream of ['stdout', 'stderr'] as const) {
      const splitter = new LineSplitter(line => { output.line(stream, line) })
      child[stream]?.on('data', (chunk: Buffer) => { splitter.write(chunk) })
      child[stream]?.on('end', () => { splitter.end() })
    }

    const exited = new Promise<InstanceExit>(resolve => {
      child.once('exit', (code, signal) => {
        // An app that died on its own may leave children holding its port; a relaunch needs it.
        if (!proc.stopping) signalGroup(proc.pgid, 'SIGKILL')
        resolve({ code, reason: code !== null ? `exited with code ${code}` : `was killed by ${signal ?? 'a signal'}` })
      })
    })
    log.debug({ pid, port: spec.hostPort }, 'process started')
    return { id: String(pid), app: { host: '127.0.0.1', port: spec.hostPort }, exited, recentOutput: () => output.recent() }
  }

  async stop (instance: RuntimeInstance, options: { graceMs?: number } = {}): Promise<void> {
    const proc = this.live.get(instance.id)
    if (proc == null) return
    proc.stopped ??= this.terminate(proc, instance, options.graceMs ?? this.init.defaultGraceMs ?? 5000)
    await proc.stopped
  }

  /**
   * Kills the process groups an earlier run of this allocator left (it was SIGKILLed, so
   * neither stop() nor the exit hook ran): every group with a process marked with its peer ID,
   * other than those this run started. Resolves with how many groups.
   */
  async removeOrphans (allocatorPeerId: string): Promise<number> {
    if (process.platform !== 'linux') return 0
    const mark = `${ALLOCATOR_ENV}=${allocatorPeerId}`
    // Never our own group (an allocator may itself run under an app's environment).
    const ours = new Set([...this.live.values()].map(proc => proc.pgid).concat(readProcStat(process.pid)?.pgrp ?? []))
    const groups = new Set<number>()
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue
      let environ: string
      try {
        environ = readFileSync(`/proc/${entry}/environ`, 'latin1')
      } catch {
        continue // gone, or another user's
      }
      if (!environ.split('\0').includes(mark)) continue
      const stat = readProcStat(Number(entry))
      if (stat != null && stat.state !== 'Z' && !ours.has(stat.pgrp)) groups.add(stat.pgrp)
    }
    for (const pgid of groups) {
      this.init.log.info({ pgid }, 'removing an app process group an earlier run left')
      signalGroup(pgid, 'SIGKILL')
    }
    return groups.size
  }

  private async terminate (proc: LiveProcess, instance: RuntimeInstance, graceMs: number): Promise<void> {
    proc.stopping = true
    // Once the group is empty its id may, in time, name another group: signal only a live one.
    if (groupAlive(proc.pgid)) signalGroup(proc.pgid, 'SIGTERM')
    const deadline = Date.now() + graceMs
    while (groupAlive(proc.pgid) && Date.now() < deadline) await delay(GROUP_POLL_MS)
    if (groupAlive(proc.pgid)) {
      this.init.log.debug({ pgid: proc.pgid, graceMs }, 'process group outlived its grace: SIGKILL')
      signalGroup(proc.pgid, 'SIGKILL')
    }
    await instance.exited
    const settle = Date.now() + KILL_SETTLE_MS
    while (groupAlive(proc.pgid) && Date.now() < settle) await delay(GROUP_POLL_MS)
    this.untrack(instance.id)
  }

  private track (id: string, proc: LiveProcess): void {
    if (this.live.size === 0) process.on('exit', this.killAllOnExit)
    this.live.set(id, proc)
  }

  private untrack (id: string): void {
    if (this.live.delete(id) && this.live.size === 0) process.off('exit', this.killAllOnExit)
  }
}

function signalGroup (pgid: number, signal: NodeJS.Signals): void {
  try {
    // Negative pid: every process of the group, the leader's descendants included.
    process.kill(-pgid, signal)
  } catch {
    // ESRCH: the group is already empty.
  }
}

/** Whether any process of the group is still running (zombies waiting to be reaped do not count). */
export function groupAlive (pgid: number): boolean {
  try {
    process.kill(-pgid, 0)
  } catch (err) {
    // EPERM means a member exists that we may not signal: still alive.
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
  if (process.platform !== 'linux') return true
  // kill(0) also succeeds for zombies, which hold nothing (no port, no memory) but can linger
  // until their new parent reaps them; /proc tells them apart.
  try {
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue
      const stat = readProcStat(Number(entry))
      if (stat != null && stat.pgrp === pgid && stat.state !== 'Z') return true
    }
    return false
  } catch {
    return true
  }
}

/** State and process group of a pid from /proc/<pid>/stat, or undefined if it is gone. */
export function readProcStat (pid: number): { state: string, pgrp: number } | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // The command name is in parentheses and may itself contain spaces or parentheses.
    const rest = text.slice(text.lastIndexOf(')') + 2).split(' ')
    return { state: rest[0], pgrp: Number(rest[2]) }
  } catch {
    return undefined
  }
}
