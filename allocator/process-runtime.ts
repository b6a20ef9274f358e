import { spawn, type ChildProcess } from 'node:child_process'
import { stat } from 'node:fs/promises'
import { setTimeout as delay } from 'node:timers/promises'
import type { Logger } from '../shared/log.js'
import { AllocationError } from '../shared/protocols/alloc-errors.js'
import { resolveAppUser, type AppUser } from './app-user.js'
import { InstanceDirs, removeWorkDir, removeWorkDirSync } from './instance-dir.js'
import { groupAlive, processCwd, processesWithEnv, readProcStat, signalGroup } from './proc.js'
import { AppOutput, instanceEnv, LineSplitter, type InstanceExit, type InstanceSpec, type Runtime, type RuntimeInstance } from './runtime.js'
import { ServiceDataDirs } from './service-data.js'

// Still importable from the runtime they were part of: the allocator and its tests use them.
export { resolveAppUser, type AppUser } from './app-user.js'
export { groupAlive, readProcStat } from './proc.js'

export interface ProcessRuntimeInit {
  log: Logger
  /** Runs `<shell> -c <command>`. Default /bin/sh. */
  shell?: string
  /**
   * The user apps run as: a name or a numeric uid. Default: `nobody` when the allocator runs
   * as root, else the allocator's own user (which is then the only one allowed). Never root.
   */
  runAs?: string
  /**
   * Where each instance gets its own working directory, `<workRoot>/<instanceId>` (0700, owned
   * by the app's user, removed when the instance stops). Made 0711 so that an app can reach
   * its own directory but not list the others. Default: `hyphae-instances-<uid>` in the OS
   * temporary directory.
   */
  workRoot?: string
  /**
   * Where each service keeps its data across instances, `<dataRoot>/<service>` (see
   * ServiceDataDirs). Default: `hyphae-data-<uid>` in the OS temporary directory.
   */
  dataRoot?: string
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
  /** The instance's working directory, removed once its processes are gone. */
  workDir: string
  stopping: boolean
  stopped?: Promise<void>
}

/**
 * Runs a record's command as a local process. Each app gets its own process group, so that
 * whatever it forks (a shell's children, worker processes) ends with it, and its own working
 * directory; it never runs as root (an allocator running as root runs it as `runAs`).
 */
export class ProcessRuntime implements Runtime {
  readonly kind = 'process' as const
  private readonly live = new Map<string, LiveProcess>()
  // Bound once, so the same function can be added to and removed from process 'exit'.
  private readonly killAllOnExit = (): void => {
    for (const proc of this.live.values()) signalGroup(proc.pgid, 'SIGKILL')
    for (const proc of this.live.values()) removeWorkDirSync(proc.workDir)
  }

  private readonly selfUid = process.getuid?.() ?? -1
  private readonly workDirs: InstanceDirs
  private readonly dataDirs: ServiceDataDirs
  private user?: Promise<AppUser>

  constructor (private readonly init: ProcessRuntimeInit) {
    this.workDirs = new InstanceDirs(init.workRoot, this.selfUid)
    this.dataDirs = new ServiceDataDirs(init.dataRoot, this.selfUid)
  }

  /** The user apps run as; rejects (every time) if runAs names no user, root, or one this allocator may not become. */
  async appUser (): Promise<AppUser> {
    this.user ??= resolveAppUser(this.init.runAs, this.selfUid)
    return await this.user
  }

  async available (): Promise<boolean> {
    return true
  }

  async proxyHost (): Promise<string> {
    return '127.0.0.1'
  }

  async start (spec: InstanceSpec, options: { signal?: AbortSignal } = {}): Promise<RuntimeInstance> {
    const { record } = spec
    if (record.command == null) {
      throw new AllocationError('start_failed', `service '${record.name}' has no command: the process runtime runs commands, not images`)
    }
    if (options.signal?.aborted === true) throw new AllocationError('aborted', `start of '${record.name}' was cancelled`)
    const log = this.init.log.child({ service: record.name, instance: spec.instanceId })
    let user: AppUser
    try {
      user = await this.appUser()
    } catch (err) {
      throw new AllocationError('start_failed', `cannot run '${record.name}': ${(err as Error).message}`, { cause: err })
    }
    // Dropping privileges: only root may (and must) switch to the app's user.
    const dropPrivileges = this.selfUid === 0
    const dataDir = await this.dataDirs.make(record.name, user, dropPrivileges)
    const workDir = await this.workDirs.make(spec.instanceId, user, dropPrivileges)

    const parentEnv = this.init.env ?? process.env
    const env: NodeJS.ProcessEnv = {}
    for (const name of this.init.inheritEnv ?? DEFAULT_INHERITED_ENV) {
      if (parentEnv[name] !== undefined) env[name] = parentEnv[name]
    }
    // Who the app is, not who the allocator is; a home that does not exist (nobody's
    // /nonexistent) is replaced by the instance's own directory.
    const home = user.home !== undefined && await isDirectory(user.home) ? user.home : workDir
    Object.assign(env, { HOME: home, USER: user.name, LOGNAME: user.name })
    // Last: the allocator publishes and health-checks this port, and finds its orphans by the
    // mark; the record can move neither.
    Object.assign(env, record.env, instanceEnv(spec, dataDir), { PORT: String(spec.hostPort), [ALLOCATOR_ENV]: spec.allocatorPeerId })

    const child = spawn(this.init.shell ?? '/bin/sh', ['-c', record.command], {
      cwd: workDir,
      env,
      // Also drops every supplementary group (libuv calls setgroups(0) when switching).
      ...(dropPrivileges ? { uid: user.uid, gid: user.gid } : {}),
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe']
    })
    try {
      await new Promise<void>((resolve, reject) => {
        child.once('spawn', resolve)
        child.once('error', err => {
          reject(new AllocationError('start_failed', `cannot run '${record.command ?? ''}' as ${user.name} in ${workDir}: ${err.message}`, { cause: err }))
        })
      })
    } catch (err) {
      await removeWorkDir(workDir, log)
      throw err
    }
    const pid = child.pid as number
    const proc: LiveProcess = { child, pgid: pid, workDir, stopping: false }
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
    log.debug({ pid, port: spec.hostPort, user: user.name, uid: user.uid, workDir }, 'process started')
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
    const workDirs = new Set<string>()
    for (const { pid, pgrp } of processesWithEnv(mark)) {
      if (ours.has(pgrp)) continue
      groups.add(pgrp)
      // Its instance's working directory, if it still works there (undefined: gone meanwhile).
      const cwd = processCwd(pid)
      if (cwd !== undefined && this.workDirs.isInstanceDir(cwd)) workDirs.add(cwd)
    }
    for (const pgid of groups) {
      this.init.log.info({ pgid }, 'removing an app process group an earlier run left')
      signalGroup(pgid, 'SIGKILL')
    }
    if (workDirs.size > 0) {
      const settle = Date.now() + KILL_SETTLE_MS
      while ([...groups].some(groupAlive) && Date.now() < settle) await delay(GROUP_POLL_MS)
      for (const dir of workDirs) await removeWorkDir(dir, this.init.log)
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
    await removeWorkDir(proc.workDir, this.init.log)
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

async function isDirectory (path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory()
  } catch {
    return false
  }
}
