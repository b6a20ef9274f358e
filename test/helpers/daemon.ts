import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { DAEMON_NODE_FLAGS } from '../../shared/node-flags.js'
import { parseReadyLine, untilReady, type ReadyLine } from '../../shared/ready.js'

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..')

export type BinName = 'hyphae-proxy' | 'hyphae-allocator' | 'hyphae'

/** What every daemon prints on its `ready` line (DESIGN.md): peerId, multiaddrs, http and more fields. */
export type DaemonReady = ReadyLine

export interface SpawnOptions {
  /** Added to (and overriding) the test process's environment. */
  env?: Record<string, string | undefined>
  /** How long to wait for readiness (or, for runCli, for the exit). Default 20 s. */
  timeoutMs?: number
  cwd?: string
  /** Runs it inside this network namespace (a host of test/helpers/netns.ts). */
  netns?: string
}

export interface StartedProcess<R> {
  proc: ChildProcess
  pid: number
  /** What the readiness line carried: the parsed JSON for daemons. */
  ready: R
  /** Every stdout line so far, the readiness line included; keeps growing. */
  stdoutLines: string[]
  /** Everything written to stderr so far (its last 4 MiB). */
  readonly stderr: string
  /** Resolves once a stdout line matches, looking at earlier lines too. */
  waitForStdout: (pattern: RegExp, timeoutMs?: number) => Promise<string>
  /** Signals the process, SIGKILLs its process group after 5 s, resolves with the exit code (null: killed by a signal). */
  stop: (signal?: NodeJS.Signals) => Promise<number | null>
}

export type Daemon = StartedProcess<DaemonReady>

export interface CliResult {
  code: number | null
  stdout: string
  stderr: string
}

const DEFAULT_TIMEOUT_MS = 20_000
const KILL_AFTER_MS = 5_000
const STDERR_KEEP = 4 * 1024 * 1024

/**
 * Processes started by this module and not yet stopped, so that an afterAll can end what a
 * failed test left behind. This and `dataDirs` are the module's state: vitest gives every test file
 * its own module instance, which is exactly the scope an afterAll cleans.
 */
const live = new Set<StartedProcess<unknown>>()

/** Resolves a package.json bin name to the absolute path of its built script. */
export function binPath (bin: BinName): string {
  const pkg = JSON.parse(readFileSync(resolve(REPO_ROOT, 'package.json'), 'utf8')) as { bin?: Record<string, string> }
  const rel = pkg.bin?.[bin]
  if (rel === undefined) throw new Error(`package.json has no bin ${bin}`)
  return resolve(REPO_ROOT, rel)
}

/**
 * An allocator keeps its state in a data dir, locked while it runs, with a per-user default
 * that every allocator of a test run would share: one given none gets a temp dir of its own,
 * removed once it exited. Not when the test passes --data-dir, or sets HOME or
 * XDG_STATE_HOME (it is testing the default).
 */
function withDataDir (bin: BinName, args: string[], opts: SpawnOptions): { args: string[], cleanup?: () => Promise<void> } {
  if (bin !== 'hyphae-allocator') return { args }
  if (args.some(arg => arg === '--data-dir' || arg.startsWith('--data-dir='))) return { args }
  if (opts.env?.HOME !== undefined || opts.env?.XDG_STATE_HOME !== undefined) return { args }
  const dir = mkdtempSync(join(tmpdir(), 'hyphae-allocator-data-'))
  dataDirs.add(dir)
  return {
    args: [...args, '--data-dir', dir],
    cleanup: async () => {
      try {
        await rm(dir, { recursive: true, force: true })
        dataDirs.delete(dir)
      } catch {
        // Still being written (a killed process's last writes): left for the exit sweep.
      }
    }
  }
}

/** Data dirs made by withDataDir and not yet removed: removed when the test process exits. */
const dataDirs = new Set<string>()
process.once('exit', () => {
  for (const dir of dataDirs) {
    try { rmSync(dir, { recursive: true, force: true }) } catch { /* nothing more to do */ }
  }
})

/** `node script args…`, inside a network namespace if one is named (`ip netns exec` execs it: the PID is node's). */
function nodeCommand (script: string, args: string[], netns?: string, nodeFlags: readonly string[] = []): [string, string[]] {
  const argv = [...nodeFlags, script, ...args]
  return netns != null ? ['ip', ['netns', 'exec', netns, process.execPath, ...argv]] : [process.execPath, argv]
}

/** Starts a hyphae daemon from dist/ and resolves once it printed `ready <json>`. */
export async function startDaemon (bin: BinName, givenArgs: string[], opts: SpawnOptions = {}): Promise<Daemon> {
  const { args, cleanup } = withDataDir(bin, givenArgs, opts)
  return await startProcess(binPath(bin), args, {
    ...opts,
    afterExit: cleanup,
    isReady: parseReadyLine,
    nodeFlags: DAEMON_NODE_FLAGS
  })
}

export interface StartProcessOptions<R> extends SpawnOptions {
  /** Returns what the line announces when it means "ready", undefined otherwise; a throw fails the start. */
  isReady: (line: string) => R | undefined
  /** Runs once the process exited, before `stop` (or a failed start) resolves. */
  afterExit?: () => Promise<void>
  /** Flags for node itself, before the script. */
  nodeFlags?: readonly string[]
}

/** Runs `node script args…` and resolves once a stdout line satisfies `isReady`. */
export async function startProcess<R> (script: string, args: string[], opts: StartProcessOptions<R>): Promise<StartedProcess<R>> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS
  // Its own process group, so that the SIGKILL fallback also takes whatever it started.
  const [command, argv] = nodeCommand(script, args, opts.netns, opts.nodeFlags)
  const proc = spawn(command, argv, {
    cwd: opts.cwd ?? REPO_ROOT,
    env: { ...process.env, ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true
  })
  const stdoutLines: string[] = []
  const lineWaiters = new Set<(line: string) => void>()
  let stderr = ''
  const exited = exitOf(proc)

  proc.stderr?.setEncoding('utf8')
  proc.stderr?.on('data', (text: string) => {
    stderr += text
    if (stderr.length > STDERR_KEEP) stderr = stderr.slice(-STDERR_KEEP)
  })
  const lines = createInterface({ input: proc.stdout as NodeJS.ReadableStream, crlfDelay: Infinity })
  lines.on('line', line => {
    stdoutLines.push(line)
    for (const waiter of lineWaiters) waiter(line)
  })

  const describe = `${script} ${args.join(' ')}`.trim()
  const failure = (why: string): Error =>
    new Error(`${describe}: ${why}\n--- stderr ---\n${stderr}\n--- stdout ---\n${stdoutLines.join('\n')}`)

  const waitForStdout = async (pattern: RegExp, waitMs = DEFAULT_TIMEOUT_MS): Promise<string> => {
    const seen = stdoutLines.find(line => pattern.test(line))
    if (seen !== undefined) return seen
    return await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => { done(); reject(failure(`no stdout line matched ${String(pattern)} within ${waitMs} ms`)) }, waitMs)
      const waiter = (line: string): void => { if (pattern.test(line)) { done(); resolve(line) } }
      let settled = false
      const done = (): void => { settled = true; clearTimeout(timer); lineWaiters.delete(waiter) }
      lineWaiters.add(waiter)
      void exited.then(() => {
        if (!settled) { done(); reject(failure(`exited before a stdout line matched ${String(pattern)}`)) }
      })
    })
  }

  let stopping: Promise<number | null> | undefined
  const started: StartedProcess<R> = {
    proc,
    pid: proc.pid ?? -1,
    ready: undefined as R,
    stdoutLines,
    get stderr () { return stderr },
    waitForStdout,
    stop: async (signal: NodeJS.Signals = 'SIGTERM') => {
      stopping ??= (async () => {
        if (proc.exitCode === null && proc.signalCode === null) {
          proc.kill(signal)
          const killer = setTimeout(() => { killGroup(proc) }, KILL_AFTER_MS)
          try {
            return await exited
          } finally {
            clearTimeout(killer)
            untrack(started as StartedProcess<unknown>)
            await opts.afterExit?.()
          }
        }
        untrack(started as StartedProcess<unknown>)
        const code = await exited
        await opts.afterExit?.()
        return code
      })()
      return await stopping
    }
  }
  track(started as StartedProcess<unknown>)

  try {
    started.ready = await untilReady({ proc, lines, exited, isReady: opts.isReady, timeoutMs })
  } catch (err) {
    killGroup(proc)
    await exited
    untrack(started as StartedProcess<unknown>)
    await opts.afterExit?.()
    throw failure((err as Error).message)
  }
  return started
}

/** Runs a one-shot command to its end; rejects (after killing it) if it outlives the timeout. */
export async function runCli (bin: BinName, givenArgs: string[], opts: SpawnOptions & { input?: string } = {}): Promise<CliResult> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS
  const { args, cleanup } = withDataDir(bin, givenArgs, opts)
  const [command, argv] = nodeCommand(binPath(bin), args, opts.netns)
  const proc = spawn(command, argv, {
    cwd: opts.cwd ?? REPO_ROOT,
    env: { ...process.env, ...opts.env },
    stdio: ['pipe', 'pipe', 'pipe'],
    detached: true
  })
  let stdout = ''
  let stderr = ''
  proc.stdout.setEncoding('utf8').on('data', (text: string) => { stdout += text })
  proc.stderr.setEncoding('utf8').on('data', (text: string) => { stderr += text })
  proc.stdin.on('error', () => {})
  proc.stdin.end(opts.input ?? '')
  return await new Promise<CliResult>((resolve, reject) => {
    const timer = setTimeout(() => {
      killGroup(proc)
      reject(new Error(`${bin} ${args.join(' ')}: still running after ${timeoutMs} ms\n--- stderr ---\n${stderr}\n--- stdout ---\n${stdout}`))
    }, timeoutMs)
    proc.once('error', err => { clearTimeout(timer); reject(err) })
    proc.once('close', code => { clearTimeout(timer); resolve({ code, stdout, stderr }) })
  }).finally(async () => { await cleanup?.() })
}

/** Stops every process this module started and that is still running (for afterAll). */
export async function stopAllDaemons (): Promise<void> {
  await Promise.all([...live].map(async p => await p.stop()))
}

/**
 * Resolves with the exit code once the process exited and its output was read. Waits for
 * 'close' only briefly: a grandchild that inherited the pipes would otherwise hold it open.
 */
async function exitOf (proc: ChildProcess): Promise<number | null> {
  const closed = new Promise<void>(resolve => proc.once('close', () => { resolve() }))
  const code = await new Promise<number | null>(resolve => {
    // A failed spawn emits 'error' and never 'exit'.
    proc.once('error', () => { resolve(null) })
    proc.once('exit', code => { resolve(code) })
  })
  let timer: NodeJS.Timeout | undefined
  await Promise.race([closed, new Promise<void>(resolve => { timer = setTimeout(resolve, 1_000) })])
  clearTimeout(timer)
  return code
}

/** Last resort when a test run dies with processes alive: they must not outlive it. */
function killLeftovers (): void {
  for (const started of live) killGroup(started.proc)
}

function track (started: StartedProcess<unknown>): void {
  if (live.size === 0) process.once('exit', killLeftovers)
  live.add(started)
}

function untrack (started: StartedProcess<unknown>): void {
  if (live.delete(started) && live.size === 0) process.off('exit', killLeftovers)
}

function killGroup (proc: ChildProcess): void {
  if (proc.pid === undefined || proc.exitCode !== null || proc.signalCode !== null) return
  try {
    // Negative PID: the process group this module created with detached: true.
    process.kill(-proc.pid, 'SIGKILL')
  } catch {
    // The group is gone already (or was never made): the process alone is what is left.
    try { proc.kill('SIGKILL') } catch { /* it exited meanwhile */ }
  }
}
