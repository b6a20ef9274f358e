import type { ProcessSet } from './procs.js'
import type { Row } from './table.js'

export interface Features {
  /** The client proxy takes --stream-per-request (one libp2p stream per request). */
  streamPerRequest: boolean
  /** dist/allocator/main.js is a working allocator (it prints help and exits 0). */
  allocator: boolean
}

/** What every suite gets from main. */
export interface SuiteContext {
  quick: boolean
  procs: ProcessSet
  /** A scratch directory for this run (configs, nginx prefixes, Lua scripts); removed at the end. */
  tmp: string
  features: Features
  /** Aborted on SIGINT/SIGTERM. */
  signal: AbortSignal
  /** Progress, to stderr. */
  log: (message: string) => void
}

export interface SuiteResult {
  rows: Row[]
  details: Record<string, unknown>
}

export interface Suite {
  name: string
  /** One line for --help. */
  about: string
  run: (ctx: SuiteContext) => Promise<SuiteResult>
}
