import { execFileSync } from 'node:child_process'
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { cpus, loadavg, release, totalmem } from 'node:os'
import { basename, join } from 'node:path'
import type { Row } from './table.js'

export interface Machine {
  cpus: number
  cpuModel: string
  memoryGiB: number
  node: string
  kernel: string
  loadAverageAtStart: number[]
}

export interface RunResults {
  /** ISO time the run started. */
  date: string
  command: string
  quick: boolean
  suites: string[]
  machine: Machine
  git: { commit: string, dirty: boolean } | null
  durationS: number
  rows: Row[]
  /** Raw figures behind the rows, per suite. */
  details: Record<string, unknown>
}

export function machineInfo (): Machine {
  const list = cpus()
  return {
    cpus: list.length,
    cpuModel: list[0]?.model ?? 'unknown',
    memoryGiB: Math.round(totalmem() / 2 ** 30 * 10) / 10,
    node: process.version,
    kernel: release(),
    loadAverageAtStart: loadavg().map(v => Math.round(v * 100) / 100)
  }
}

export function gitInfo (cwd: string): RunResults['git'] {
  try {
    const commit = execFileSync('git', ['rev-parse', 'HEAD'], { cwd, encoding: 'utf8' }).trim()
    const dirty = execFileSync('git', ['status', '--porcelain'], { cwd, encoding: 'utf8' }).trim() !== ''
    return { commit, dirty }
  } catch {
    return null
  }
}

/** `2026-11-22T10-55-03Z`: sortable, one file per run, safe in file names. */
export function fileStamp (date: Date): string {
  return date.toISOString().replace(/\.\d+Z$/, 'Z').replace(/:/g, '-')
}

export function writeResults (dir: string, results: RunResults): string {
  mkdirSync(dir, { recursive: true })
  const file = join(dir, `${fileStamp(new Date(results.date))}${results.quick ? '-quick' : ''}.json`)
  writeFileSync(file, JSON.stringify(results, null, 2) + '\n')
  return file
}

/**
 * The previous figure of every row: from the newest earlier results file that has it, among
 * runs of the same kind (quick or full, which use different sizes and durations); only when
 * there is no run of that kind at all, from the other kind.
 */
export function previousResults (dir: string, quick: boolean): { name: string, values: Map<string, number | null> } | undefined {
  let files: string[]
  try {
    files = readdirSync(dir).filter(f => f.endsWith('.json')).sort().reverse()
  } catch {
    return undefined
  }
  const parsed: Array<{ file: string, results: RunResults }> = []
  for (const file of files) {
    try {
      const results = JSON.parse(readFileSync(join(dir, file), 'utf8')) as RunResults
      if (Array.isArray(results.rows)) parsed.push({ file, results })
    } catch { /* not ours or damaged: skip */ }
  }
  const sameKind = parsed.filter(p => p.results.quick === quick)
  const pool = sameKind.length > 0 ? sameKind : parsed
  if (pool.length === 0) return undefined
  const values = new Map<string, number | null>()
  const used = new Set<string>()
  for (const { file, results } of pool) {
    for (const row of results.rows) {
      if (values.has(row.id) || row.value == null) continue
      values.set(row.id, row.value)
      used.add(basename(file))
    }
  }
  const kind = pool[0].results.quick ? 'quick' : 'full'
  const names = [...used].sort().reverse()
  const name = names.length <= 1
    ? `${names[0] ?? basename(pool[0].file)} (${kind} run)`
    : `newest earlier ${kind} run with each figure: ${names.join(', ')}`
  return { name, values }
}
