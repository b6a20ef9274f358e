import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import v8 from 'node:v8'
import vm from 'node:vm'
import fc from 'fast-check'

/**
 * The fuzz suite's knobs and its one harness. Every surface runs the same way: generated
 * cases against the real thing, each judged `ok`, `fail` (a crash, a malformed answer, a
 * wrong error type) or `hang` (no answer and no close within the bound).
 *
 * HYPHAE_FUZZ_RUNS      cases per surface (default 200: each file stays well inside `npm test`)
 * HYPHAE_FUZZ_SEED      the fast-check seed (default: a fresh one, printed with any failure)
 * HYPHAE_FUZZ_HANG_MS   how long a case may go without an answer or a close (default 2000;
 *                       answers on loopback take well under 100 ms, the slowest seen ~300 ms)
 * HYPHAE_FUZZ_REPORT    a directory: each surface writes `<surface>.json` there (npm run fuzz)
 */
export const FUZZ_RUNS = positiveEnv('HYPHAE_FUZZ_RUNS', 200)
export const HANG_MS = positiveEnv('HYPHAE_FUZZ_HANG_MS', 2000)
const SEED = process.env.HYPHAE_FUZZ_SEED != null && process.env.HYPHAE_FUZZ_SEED !== '' ? Number(process.env.HYPHAE_FUZZ_SEED) : undefined
const REPORT_DIR = process.env.HYPHAE_FUZZ_REPORT

/** Shrinking failures (phase two) stops after this long and reports the smallest cases so far. */
const SHRINK_LIMIT_MS = 60_000

/**
 * A vitest timeout for a surface of `runs` cases that each take about `perCaseMs` (hangs cost
 * HANG_MS each, but a run with many is failing anyway), plus the time to shrink a failure.
 */
export function fuzzTimeoutMs (perCaseMs: number, runs = FUZZ_RUNS): number {
  return 60_000 + SHRINK_LIMIT_MS + runs * perCaseMs
}

export type Outcome =
  | { kind: 'ok', note?: string }
  | { kind: 'fail', why: string, key?: string }
  | { kind: 'hang', why: string, key?: string }

export const ok = (note?: string): Outcome => ({ kind: 'ok', note })
/** `key` groups failures of one kind in the report (default: the start of `why`). */
export const fail = (why: string, key?: string): Outcome => ({ kind: 'fail', why, key })
export const hang = (why: string, key?: string): Outcome => ({ kind: 'hang', why, key })

export interface SurfaceReport {
  surface: string
  cases: number
  failures: number
  hangs: number
  /** Resident set size of the process under test, before the first case and after the last. */
  rssBefore: number
  rssAfter: number
  /** Whose RSS: a daemon's pid, or this (vitest worker) process for in-process surfaces. */
  rssOf: string
  /** In-process surfaces: V8 heap in use after a full collection, before and after. */
  heapBefore?: number
  heapAfter?: number
  durationMs: number
  /** The slowest case, ms. */
  slowestMs: number
  seed: number
  /** How often each `ok` note came up (e.g. which status codes were answered). */
  notes: Record<string, number>
  /** Problems by kind (failures and hangs), so that one frequent bug does not hide another. */
  problemKinds: Record<string, number>
  /** The first failing case of each kind (up to ten kinds) as generated, with why. */
  firstProblems: string[]
  /** Per kind of problem: fast-check's shrunk counterexample (phase two). */
  minimal: Record<string, string>
}

export interface SurfaceInit<T> {
  surface: string
  arbitrary: fc.Arbitrary<T>
  check: (value: T) => Promise<Outcome>
  /** RSS of the process under test, bytes. */
  rss: () => Promise<number>
  rssOf: string
  /** In-process surfaces: the V8 heap in use, read right after `rss` (settledRss collects first). */
  heap?: () => number
  runs?: number
  /** Counterexamples found earlier, always tried first (fast-check `examples`). */
  examples?: T[]
  /** Extra problems seen outside any one case (unhandled rejections, a daemon's exit). */
  problemsOutside?: () => string[]
}

/**
 * Runs a surface in two phases. Phase one runs every case and counts outcomes (fast-check
 * stops at the first failure, so the property itself never fails here). Phase two runs only
 * when phase one saw problems: for each kind, the same seed again with a property that fails
 * on that kind only, so that fast-check replays the same cases, stops at the first one and
 * shrinks it to a minimal counterexample of that kind.
 */
export async function runSurface<T> (init: SurfaceInit<T>): Promise<SurfaceReport> {
  const runs = init.runs ?? FUZZ_RUNS
  const seed = SEED ?? (Date.now() ^ (Math.random() * 0x100000000)) | 0
  const notes: Record<string, number> = {}
  const firstProblems: string[] = []
  const problemKinds: Record<string, number> = {}
  const problem = (key: string, text: string): void => {
    if (problemKinds[key] == null && firstProblems.length < 10) firstProblems.push(text)
    problemKinds[key] = (problemKinds[key] ?? 0) + 1
  }
  let cases = 0
  let failures = 0
  let hangs = 0
  let slowestMs = 0
  const examples = (init.examples ?? []).map((value): [T] => [value])
  const rssBefore = await init.rss()
  const heapBefore = init.heap?.()
  const started = performance.now()

  await fc.check(fc.asyncProperty(init.arbitrary, async value => {
    cases++
    const caseStarted = performance.now()
    const outcome = await init.check(value)
    slowestMs = Math.max(slowestMs, performance.now() - caseStarted)
    if (outcome.kind === 'ok') {
      const note = outcome.note ?? 'ok'
      notes[note] = (notes[note] ?? 0) + 1
    } else {
      if (outcome.kind === 'fail') failures++
      else hangs++
      const key = keyOf(outcome)
      problem(key, `${outcome.kind}: ${clip(outcome.why, 600)}\n    case: ${clip(fc.stringify(value), 600)}`)
    }
    return true
  }), { numRuns: runs, seed, examples })

  const durationMs = performance.now() - started
  const rssAfter = await init.rss()
  const heapAfter = init.heap?.()
  for (const outside of init.problemsOutside?.() ?? []) {
    failures++
    problem(`fail: outside: ${outside.slice(0, 60)}`, `fail: ${outside}`)
  }

  // Phase two: per kind of problem (at most six), replay and shrink its first case.
  const minimal: Record<string, string> = {}
  const kinds = Object.keys(problemKinds).filter(key => !key.startsWith('fail: outside')).slice(0, 6)
  for (const kind of kinds) {
    let lastWhy = ''
    const details = await fc.check(fc.asyncProperty(init.arbitrary, async value => {
      const outcome = await init.check(value)
      if (outcome.kind === 'ok' || keyOf(outcome) !== kind) return true
      lastWhy = outcome.why
      return false
    }), { numRuns: runs, seed, examples, interruptAfterTimeLimit: SHRINK_LIMIT_MS / kinds.length })
    if (details.failed && details.counterexample != null) {
      minimal[kind] = `${clip(fc.stringify(details.counterexample[0]), 2000)}\n      → ${clip(lastWhy, 600)}\n      (seed ${details.seed}, path "${details.counterexamplePath ?? ''}", ${details.numShrinks} shrinks)`
    }
  }

  const report: SurfaceReport = {
    surface: init.surface, cases, failures, hangs, rssBefore, rssAfter, rssOf: init.rssOf, heapBefore, heapAfter,
    durationMs: Math.round(durationMs), slowestMs: Math.round(slowestMs), seed, notes, problemKinds, firstProblems, minimal
  }
  if (REPORT_DIR != null && REPORT_DIR !== '') {
    mkdirSync(REPORT_DIR, { recursive: true })
    writeFileSync(join(REPORT_DIR, `${init.surface}.json`), JSON.stringify(report, null, 2))
  }
  return report
}

function keyOf (outcome: Outcome & { kind: 'fail' | 'hang' }): string {
  return `${outcome.kind}: ${outcome.key ?? outcome.why.slice(0, 60).replace(/\d+/g, 'N')}`
}

/** The message a failing surface shows: counts, the first problems, the shrunk case. */
export function describeReport (report: SurfaceReport): string {
  return [
    `${report.surface}: ${report.cases} cases, ${report.failures} failures, ${report.hangs} hangs (seed ${report.seed})`,
    ...Object.entries(report.problemKinds).map(([key, count]) => `  ${count} × ${key}`),
    ...report.firstProblems.map(p => `  ${p}`),
    ...Object.entries(report.minimal).map(([key, text]) => `  minimal counterexample for ${key}:\n    ${text}`)
  ].join('\n')
}

let collect: (() => void) | undefined

/**
 * This process's RSS after a full garbage collection, so that before and after compare what
 * is still held, not what the collector has not got round to yet. (`gc` is exposed at run
 * time: vitest workers do not start with --expose-gc.)
 */
export async function settledRss (): Promise<number> {
  if (collect == null) {
    v8.setFlagsFromString('--expose-gc')
    collect = vm.runInNewContext('gc') as () => void
  }
  // Let closed streams and sockets finish their callbacks first.
  await new Promise(resolve => setImmediate(resolve))
  collect()
  collect()
  return process.memoryUsage().rss
}

export const heapUsed = (): number => process.memoryUsage().heapUsed

/** Counts unhandled rejections and uncaught exceptions in this process while a surface runs. */
export function watchProcessErrors (): { problems: () => string[], stop: () => void } {
  const seen: string[] = []
  const onRejection = (reason: unknown): void => { seen.push(`unhandled rejection: ${describeError(reason)}`) }
  const onException = (err: unknown): void => { seen.push(`uncaught exception: ${describeError(err)}`) }
  process.on('unhandledRejection', onRejection)
  process.on('uncaughtException', onException)
  return {
    problems: () => [...seen],
    stop: () => {
      process.off('unhandledRejection', onRejection)
      process.off('uncaughtException', onException)
    }
  }
}

export function describeError (err: unknown): string {
  if (err instanceof Error) return `${err.name}: ${err.message}`
  return String(err)
}

export function clip (text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max)}… (${text.length} chars)`
}

function positiveEnv (name: string, fallback: number): number {
  const text = process.env[name]
  if (text == null || text === '') return fallback
  const value = Number(text)
  if (!Number.isSafeInteger(value) || value <= 0) throw new Error(`${name} must be a positive whole number, not '${text}'`)
  return value
}
