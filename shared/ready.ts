// Waiting for a started process to say it is ready: one implementation for `hyphae up`, the
// allocator's process sidecars, the benchmarks and the test helpers.
import type { ChildProcess } from 'node:child_process'
import type { Interface } from 'node:readline'

/** The fields every daemon's `ready <json>` line has (DESIGN.md); daemons add more (http, metrics…). */
export interface ReadyLine {
  peerId: string
  multiaddrs: string[]
  [field: string]: unknown
}

/** A daemon's `ready <json>` line parsed, undefined for any other line; throws on a malformed one. */
export function parseReadyLine (line: string): ReadyLine | undefined {
  if (!line.startsWith('ready ')) return undefined
  const ready = JSON.parse(line.slice('ready '.length)) as Partial<ReadyLine> | null
  if (typeof ready?.peerId !== 'string' || !Array.isArray(ready.multiaddrs)) {
    throw new Error(`ready line lacks peerId or multiaddrs: ${line}`)
  }
  return ready as ReadyLine
}

/** The port of an example app's `listening <port>` line, undefined for any other line. */
export function parseListeningLine (line: string): number | undefined {
  const match = /^listening (\d+)$/.exec(line)
  return match == null ? undefined : Number(match[1])
}

export interface ReadyWait<R> {
  proc: ChildProcess
  /** The process's stdout, line by line (other listeners may read it too). */
  lines: Interface
  /** Resolves (with the exit code) once the process exited or failed to spawn. */
  exited: Promise<number | null>
  /** What a line announces when it means "ready", undefined otherwise; a throw fails the wait. */
  isReady: (line: string) => R | undefined
  /** Ready as well once this resolves (e.g. a port that accepts connections); its rejection is ignored. */
  alsoReady?: Promise<R>
  timeoutMs: number
}

/**
 * Resolves with what the first stdout line accepted by `isReady` announces. Rejects when
 * `isReady` throws, when the process exits (or fails to spawn) first, or after `timeoutMs`,
 * with the reason as the message; stopping the process is then the caller's part. Call it
 * right after the spawn, so that no line and no spawn error goes by unseen.
 */
export async function untilReady<R> (wait: ReadyWait<R>): Promise<R> {
  const { proc, lines, isReady, timeoutMs } = wait
  let spawnError: Error | undefined
  const onSpawnError = (err: Error): void => { spawnError = err }
  proc.once('error', onSpawnError)
  return await new Promise<R>((resolve, reject) => {
    let settled = false
    const settle = (fn: () => void): void => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      lines.off('line', check)
      proc.off('error', onSpawnError)
      fn()
    }
    const timer = setTimeout(() => { settle(() => { reject(new Error(`not ready within ${timeoutMs} ms`)) }) }, timeoutMs)
    const check = (line: string): void => {
      if (settled) return
      try {
        const ready = isReady(line)
        if (ready !== undefined) settle(() => { resolve(ready) })
      } catch (err) {
        settle(() => { reject(new Error(`bad readiness line: ${err instanceof Error ? err.message : String(err)}`, { cause: err })) })
      }
    }
    lines.on('line', check)
    wait.alsoReady?.then(ready => { settle(() => { resolve(ready) }) }, () => {})
    void wait.exited.then(code => {
      const why = spawnError?.message ?? `exited (code ${String(code)}, signal ${String(proc.signalCode)})`
      settle(() => { reject(new Error(`${why} before it was ready`)) })
    })
  })
}
