import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { lstatSync, readdirSync, readFileSync, readlinkSync, rmdirSync, rmSync, type Stats } from 'node:fs'
import { chmod, chown, lstat, mkdir, readFile, rm, rmdir, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import { promisify } from 'node:util'
import type { Logger } from '../shared/log.js'
import { AllocationError } from '../shared/protocols/alloc-errors.js'
import { AppOutput, LineSplitter, type InstanceExit, type InstanceSpec, type Runtime, type RuntimeInstance } from './runtime.js'

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

/** Who apps run as. */
export interface AppUser {
  name: string
  uid: number
  gid: number
  /** From the password database; undefined for a numeric uid it does not know. */
  home?: string
}

const runFile = promisify(execFile)
/** POSIX portable user names (plus the `$` of machine accounts), and numeric uids. */
const USER_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]*\$?$/

/**
 * Resolves the user the apps of an allocator run as (see ProcessRuntimeInit.runAs). Rejects,
 * with a message fit for the user, a name nobody knows, root, and, unless the allocator runs
 * as root, any user other than its own.
 */
export async function resolveAppUser (runAs?: string, selfUid: number = process.getuid?.() ?? -1): Promise<AppUser> {
  const wanted = runAs ?? (selfUid === 0 ? 'nobody' : String(selfUid))
  if (!USER_NAME.test(wanted)) throw new Error(`'${wanted}' is not a user name or uid`)
  let user = await lookUpUser(wanted)
  if (user === undefined) {
    if (!/^\d+$/.test(wanted)) {
      throw new Error(runAs === undefined
        ? `there is no user '${wanted}' to run apps as (the default for an allocator running as root): name one`
        : `there is no user '${wanted}'`)
    }
    // A uid the password database does not know is still a user of its own; its group is
    // the same number (never the root group).
    user = { name: wanted, uid: Number(wanted), gid: Number(wanted) }
  }
  if (user.uid === 0) throw new Error(`refusing to run apps as root ('${wanted}' is uid 0): name an unprivileged user`)
  if (selfUid !== 0 && user.uid !== selfUid) {
    throw new Error(`only an allocator running as root can run apps as another user ('${wanted}' is uid ${user.uid}, this allocator runs as uid ${selfUid})`)
  }
  if (selfUid === 0 && user.gid === 0) throw new Error(`refusing to run apps in the root group ('${wanted}' has gid 0)`)
  return user
}

/** The password database entry of a name or uid (getent: /etc/passwd, NSS, LDAP …), or undefined. */
async function lookUpUser (nameOrUid: string): Promise<AppUser | undefined> {
  let entries: string
  try {
    entries = (await runFile('getent', ['passwd', nameOrUid], { timeout: 5000 })).stdout
  } catch (err) {
    const code = (err as { code?: unknown }).code
    // getent exits 2 for a key it does not know.
    if (code === 2) return undefined
    if (code !== 'ENOENT') throw new Error(`cannot look up user '${nameOrUid}': ${(err as Error).message}`, { cause: err })
    // No getent (a minimal image): the local file is all there is.
    entries = await readFile('/etc/passwd', 'utf8').catch(() => '')
  }
  for (const line of entries.split('\n')) {
    const [name, , uid, gid, , home] = line.split(':')
    if (uid === undefined || gid === undefined || !/^\d+$/.test(uid) || !/^\d+$/.test(gid)) continue
    if (name === nameOrUid || uid === nameOrUid) return { name, uid: Number(uid), gid: Number(gid), home: home === '' ? undefined : home }
  }
  return undefined
}

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
  private readonly workRoot: string
  private user?: Promise<AppUser>
  private workRootReady?: Promise<void>

  constructor (private readonly init: ProcessRuntimeInit) {
    this.workRoot = resolve(init.workRoot ?? join(tmpdir(), `hyphae-instances-${this.selfUid}`))
  }

  /** The user apps run as; rejects (every time) if runAs names no user, root, or one this allocator may not become. */
  async appUser (): Promise<AppUser> {
    this.user ??= resolveAppUser(this.init.runAs, this.selfUid)
    return await this.user
  }

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
    let user: AppUser
    try {
      user = await this.appUser()
    } catch (err) {
      throw new AllocationError('start_failed', `cannot run '${record.name}': ${(err as Error).message}`, { cause: err })
    }
    // Dropping privileges: only root may (and must) switch to the app's user.
    const dropPrivileges = this.selfUid === 0
    const workDir = await this.makeWorkDir(spec.instanceId, user, dropPrivileges)

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
    Object.assign(env, record.env, { PORT: String(spec.hostPort), [ALLOCATOR_ENV]: spec.allocatorPeerId })

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
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue
      let environ: string
      try {
        // Root reads other users' (the apps') too; a non-root allocator runs its apps as itself.
        environ = readFileSync(`/proc/${entry}/environ`, 'latin1')
      } catch {
        continue // gone, or another user's
      }
      if (!environ.split('\0').includes(mark)) continue
      const stat = readProcStat(Number(entry))
      if (stat == null || stat.state === 'Z' || ours.has(stat.pgrp)) continue
      groups.add(stat.pgrp)
      // Its instance's working directory, if it still works there.
      try {
        const cwd = readlinkSync(`/proc/${entry}/cwd`)
        if (dirname(cwd) === this.workRoot) workDirs.add(cwd)
      } catch {
        // Gone meanwhile.
      }
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

  /**
   * A fresh, empty `<workRoot>/<instanceId>`, 0700 and owned by the app's user. A relaunch
   * gets a fresh one too (its predecessor's was removed when it was stopped).
   */
  private async makeWorkDir (instanceId: string, user: AppUser, chownToUser: boolean): Promise<string> {
    this.workRootReady ??= this.prepareWorkRoot()
    try {
      await this.workRootReady
    } catch (err) {
      this.workRootReady = undefined // retry next time: it may be fixed meanwhile
      throw new AllocationError('start_failed', (err as Error).message, { cause: err })
    }
    // Instance ids are the allocator's own, but a path must never escape the root.
    const name = instanceId.replace(/[^A-Za-z0-9_.-]/g, '-').replace(/^\.+/, '_')
    const dir = join(this.workRoot, name === '' ? '_' : name)
    try {
      await rm(dir, { recursive: true, force: true })
      await mkdir(dir, { mode: 0o700 })
      await chmod(dir, 0o700) // whatever the umask
      if (chownToUser) await chown(dir, user.uid, user.gid)
    } catch (err) {
      await rm(dir, { recursive: true, force: true }).catch(() => {})
      throw new AllocationError('start_failed', `cannot make the working directory ${dir}: ${(err as Error).message}`, { cause: err })
    }
    return dir
  }

  /**
   * Creates the root of the working directories, and makes sure nobody else controls it: it
   * is in a shared place (/tmp) by default, where another user could have made it first.
   */
  private async prepareWorkRoot (): Promise<void> {
    const root = this.workRoot
    await mkdir(root, { recursive: true, mode: 0o711 })
    const info = await lstat(root)
    if (!info.isDirectory()) throw new Error(`the instances' working directory root ${root} is not a directory`)
    if (this.selfUid >= 0 && info.uid !== this.selfUid) {
      throw new Error(`the instances' working directory root ${root} belongs to uid ${info.uid}, not to this allocator (uid ${this.selfUid})`)
    }
    // Apps reach their own directory (x) but cannot list or create entries.
    if ((info.mode & 0o777) !== 0o711) await chmod(root, 0o711)
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

/**
 * Empties a working directory as the user who owns it, when that is not us: root must not
 * walk a tree another user controls (a process of the app that escaped its group could swap
 * a directory for a symlink mid-walk and have root delete files elsewhere). That user cannot
 * remove the directory itself (the root is ours); we remove it, empty, afterwards.
 */
function emptyAsOwner (dir: string, info: Stats): { command: string, args: string[], options: { uid: number, gid: number, stdio: 'ignore', timeout: number } } {
  return {
    command: '/bin/sh',
    args: ['-c', 'chmod -R u+rwx -- "$1" 2>/dev/null; rm -rf -- "$1"/* "$1"/.[!.]* "$1"/..?* 2>/dev/null; exit 0', 'sh', dir],
    options: { uid: info.uid, gid: info.gid, stdio: 'ignore', timeout: 30_000 }
  }
}

function ownedByAnother (info: Stats): boolean {
  return info.uid !== (process.getuid?.() ?? info.uid)
}

async function removeWorkDir (dir: string, log: Logger): Promise<void> {
  try {
    const info = await lstat(dir).catch(() => undefined)
    if (info === undefined) return
    if (!info.isDirectory() || !ownedByAnother(info)) {
      await rm(dir, { recursive: true, force: true, maxRetries: 2 })
      return
    }
    const { command, args, options } = emptyAsOwner(dir, info)
    await new Promise<void>(resolve => {
      const child = spawn(command, args, options)
      child.once('error', () => { resolve() })
      child.once('exit', () => { resolve() })
    })
    await rmdir(dir)
  } catch (err) {
    log.warn({ dir, err }, 'cannot remove an instance working directory')
  }
}

/** removeWorkDir() for the allocator's last moments (a process 'exit' hook), without logs. */
function removeWorkDirSync (dir: string): void {
  try {
    const info = lstatSync(dir)
    if (!info.isDirectory() || !ownedByAnother(info)) {
      rmSync(dir, { recursive: true, force: true })
      return
    }
    const { command, args, options } = emptyAsOwner(dir, info)
    spawnSync(command, args, options)
    rmdirSync(dir)
  } catch {
    // Exiting anyway: what is left is in the temporary directory.
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
