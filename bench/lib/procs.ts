import { fork, spawn, type ChildProcess } from 'node:child_process'
import { connect } from 'node:net'
import { createInterface } from 'node:readline'
import { untilReady } from '../../shared/ready.js'

/**
 * Every process a benchmark starts goes through one ProcessSet, which knows each one by PID
 * and can end them all: in `finally` blocks (stop), and on SIGINT/SIGTERM or any exit of the
 * benchmark itself (killAllSync). Each child runs in its own process group (detached), so a
 * group kill also takes what it started (nginx workers) and Ctrl-C reaches only us.
 */
export interface StartOptions<R> {
  /** Shown in progress lines and errors. */
  name: string
  command: string
  args: string[]
  env?: Record<string, string | undefined>
  cwd?: string
  /** Returns what a stdout line announces when it means "ready"; undefined otherwise. */
  ready?: (line: string) => R | undefined
  /** Or: ready once 127.0.0.1:port accepts a TCP connection. */
  readyPort?: number
  timeoutMs?: number
  /** fork() a Node script with an IPC channel instead of spawn(). */
  ipc?: boolean
  /** Node flags when ipc is set (e.g. --cpu-prof). */
  execArgv?: string[]
}

const KEEP = 64 * 1024

export class Child<R = undefined> {
  ready!: R
  private stderrText = ''
  private stdoutText = ''
  readonly exited: Promise<number | null>

  constructor (readonly name: string, readonly proc: ChildProcess, private readonly owner: ProcessSet) {
    this.exited = new Promise(resolve => {
      proc.once('exit', code => { resolve(code) })
      proc.once('error', () => { resolve(null) })
    })
    proc.stderr?.setEncoding('utf8').on('data', (text: string) => { this.stderrText = (this.stderrText + text).slice(-KEEP) })
  }

  get pid (): number {
    return this.proc.pid ?? -1
  }

  get running (): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null
  }

  get stderr (): string {
    return this.stderrText
  }

  get stdout (): string {
    return this.stdoutText
  }

  appendStdout (line: string): void {
    this.stdoutText = (this.stdoutText + line + '\n').slice(-KEEP)
  }

  /** Sends `signal` to the process, SIGKILLs its group after graceMs; resolves when it is gone. */
  async stop (signal: NodeJS.Signals = 'SIGTERM', graceMs = 5000): Promise<number | null> {
    if (this.running) {
      try { process.kill(this.pid, signal) } catch { /* already gone */ }
      let timer: NodeJS.Timeout | undefined
      const killed = new Promise<void>(resolve => {
        timer = setTimeout(() => { killGroup(this.pid); resolve() }, graceMs)
      })
      await Promise.race([this.exited, killed])
      clearTimeout(timer)
    }
    const code = await this.exited
    // Whatever it started and left behind (its group) goes too.
    killGroup(this.pid)
    this.owner.forget(this)
    return code
  }

  describe (): string {
    return `${this.name} (pid ${this.pid})\n--- stderr (tail) ---\n${this.stderrText.slice(-4000)}\n--- stdout (tail) ---\n${this.stdoutText.slice(-2000)}`
  }
}

export class ProcessSet {
  private readonly live = new Set<Child<unknown>>()

  get size (): number {
    return this.live.size
  }

  async start<R = undefined> (opts: StartOptions<R>): Promise<Child<R>> {
    const env = { ...process.env, ...opts.env }
    const proc = opts.ipc === true
      ? fork(opts.command, opts.args, { cwd: opts.cwd, env, detached: true, stdio: ['ignore', 'pipe', 'pipe', 'ipc'], execArgv: opts.execArgv ?? [] })
      : spawn(opts.command, opts.args, { cwd: opts.cwd, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] })
    const child = new Child<R>(opts.name, proc, this)
    this.live.add(child as Child<unknown>)
    const timeoutMs = opts.timeoutMs ?? 30_000
    const lines = createInterface({ input: proc.stdout as NodeJS.ReadableStream, crlfDelay: Infinity })
    lines.on('line', line => { child.appendStdout(line) })
    try {
      if (opts.ready != null || opts.readyPort != null) {
        child.ready = await untilReady({
          proc,
          lines,
          exited: child.exited,
          isReady: opts.ready ?? (() => undefined),
          alsoReady: opts.readyPort != null ? waitForPort(opts.readyPort, timeoutMs).then(() => undefined as R) : undefined,
          timeoutMs
        })
      }
    } catch (err) {
      await child.stop('SIGKILL', 1000)
      throw new Error(`${opts.name}: ${(err as Error).message}\n${child.describe()}`, { cause: err })
    }
    return child
  }

  forget (child: Child<unknown>): void {
    this.live.delete(child)
  }

  /** Stops every child still running, in reverse start order. */
  async stopAll (): Promise<void> {
    for (const child of [...this.live].reverse()) await child.stop()
  }

  /** Last resort (exit, signals): SIGKILL every group, synchronously. */
  killAllSync (): void {
    for (const child of this.live) killGroup(child.pid)
    this.live.clear()
  }
}

function killGroup (pid: number): void {
  if (pid <= 0) return
  try {
    process.kill(-pid, 'SIGKILL')
  } catch {
    try { process.kill(pid, 'SIGKILL') } catch { /* gone */ }
  }
}

/** Resolves once 127.0.0.1:port accepts a connection. */
export async function waitForPort (port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const ok = await new Promise<boolean>(resolve => {
      const socket = connect(port, '127.0.0.1')
      socket.once('connect', () => { socket.destroy(); resolve(true) })
      socket.once('error', () => { resolve(false) })
    })
    if (ok) return
    if (Date.now() > deadline) throw new Error(`nothing listens on 127.0.0.1:${port} after ${timeoutMs} ms`)
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}

/** A TCP port that was free a moment ago (for programs whose port must be known in advance). */
export async function freePort (): Promise<number> {
  const { createServer } = await import('node:net')
  const server = createServer()
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as { port: number }).port
  await new Promise<void>(resolve => server.close(() => { resolve() }))
  return port
}
