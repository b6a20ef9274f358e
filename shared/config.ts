import { readFileSync } from 'node:fs'
import { resolve } from 'node:path'
import { parseArgs, type ParseArgsConfig } from 'node:util'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import { z } from 'zod'
import { UsageError } from './errors.js'
import { LOG_LEVELS, type LogLevel } from './log.js'
import { PACKAGE_ROOT } from './paths.js'
import { describeIssues, recordSchema, serviceNameSchema, type ServiceRecord } from './registry/record.js'

export const DEFAULT_CONFIG_FILE = resolve(PACKAGE_ROOT, 'conf', 'conf.json')

const rttSchema = z.strictObject({ RTT: z.number().int().min(0).max(60_000) })

/** conf/conf.json. Unknown fields are errors: a typo must not silently fall back to a default. */
export const configFileSchema = z.strictObject({
  // TargetRps: the default per-instance request rate above which services scale out; absent,
  // only services whose record sets targetRps autoscale.
  Perf: z.strictObject({ SoftReq: rttSchema, HardReq: rttSchema, TargetRps: z.number().positive().optional() }).default({ SoftReq: { RTT: 100 }, HardReq: { RTT: 1000 } }),
  Bootstraps: z.array(z.string()).default([]),
  Services: z.record(serviceNameSchema, z.unknown()).default({}),
  RegistryKeys: z.array(z.string().min(1)).default([])
})

export interface MeshConfig {
  softRttMs: number
  hardRttMs: number
  /** Perf.TargetRps: the autoscaling target for records that name none; absent: no default. */
  targetRps?: number
  bootstraps: Multiaddr[]
  /** Where the bootstraps came from, for the start-up log. */
  bootstrapSource: 'command line' | 'config file' | 'environment' | 'none'
  /** Static records: the embedded default when the DHT has none. */
  services: Map<string, ServiceRecord>
  registryKeys: string[]
  pskFile?: string
  pskText?: string
}

export interface CommonOptions {
  configfile?: string
  key?: string
  listen?: string[]
  announce?: string[]
  bootstrap?: string[]
  psk?: string
  metrics?: string
  'log-level'?: string
  help?: boolean
}

/** Options every daemon takes (DESIGN.md, "Command lines"). */
export const COMMON_OPTIONS = {
  configfile: { type: 'string' },
  key: { type: 'string' },
  listen: { type: 'string', multiple: true },
  announce: { type: 'string', multiple: true },
  bootstrap: { type: 'string', multiple: true },
  psk: { type: 'string' },
  metrics: { type: 'string' },
  'log-level': { type: 'string' },
  help: { type: 'boolean', short: 'h' }
} as const satisfies ParseArgsConfig['options']

/** util.parseArgs with its errors turned into one-line usage errors. */
export function parseCommandLine<O extends NonNullable<ParseArgsConfig['options']>> (argv: string[], options: O): ReturnType<typeof parseArgs<{ args: string[], options: O, allowPositionals: true, strict: true }>> {
  try {
    return parseArgs({ args: argv, options, allowPositionals: true, strict: true })
  } catch (err) {
    const message = (err as Error).message.split('\n')[0].replace(/\. To specify a positional argument.*$/, '')
    throw new UsageError(message)
  }
}

export function parseMultiaddr (text: string, what: string): Multiaddr {
  try {
    return multiaddr(text)
  } catch (err) {
    throw new UsageError(`invalid ${what} multiaddr '${text}': ${(err as Error).message}`)
  }
}

export function parsePort (text: string | undefined, what: string, fallback?: number): number {
  if (text == null) {
    if (fallback == null) throw new UsageError(`${what} is required`)
    return fallback
  }
  if (!/^\d+$/.test(text) || Number(text) > 65535) throw new UsageError(`invalid ${what} '${text}': expected a port number 0-65535`)
  return Number(text)
}

export function parsePositiveInt (text: string | undefined, what: string, fallback: number): number {
  if (text == null) return fallback
  if (!/^\d+$/.test(text) || Number(text) <= 0 || !Number.isSafeInteger(Number(text))) throw new UsageError(`invalid ${what} '${text}': expected a positive whole number`)
  return Number(text)
}

export function parseLogLevel (text: string | undefined, env: NodeJS.ProcessEnv = process.env): LogLevel {
  const level = text ?? env.HYPHAE_LOG_LEVEL ?? 'info'
  if (!(LOG_LEVELS as readonly string[]).includes(level)) throw new UsageError(`invalid --log-level '${level}': expected one of ${LOG_LEVELS.join(', ')}`)
  return level as LogLevel
}

/** Reads and validates a config file; every problem is a UsageError naming the file. */
export function readConfigFile (path: string): z.output<typeof configFileSchema> {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (err) {
    throw new UsageError(`cannot read config file ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
  }
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (err) {
    throw new UsageError(`config file ${path} is not valid JSON: ${(err as Error).message}`)
  }
  const parsed = configFileSchema.safeParse(json)
  if (!parsed.success) throw new UsageError(`config file ${path}: ${describeIssues(parsed.error)}`)
  return parsed.data
}

/**
 * The mesh configuration: the command line first, then the config file, then the
 * environment (P2P_BOOTSTRAPS, P2P_PSK).
 */
export function loadMeshConfig (options: CommonOptions, env: NodeJS.ProcessEnv = process.env): MeshConfig {
  const file = readConfigFile(options.configfile ?? DEFAULT_CONFIG_FILE)
  const soft = file.Perf.SoftReq.RTT
  const hard = file.Perf.HardReq.RTT
  if (soft > hard) throw new UsageError(`config file: Perf.SoftReq.RTT (${soft}) exceeds Perf.HardReq.RTT (${hard})`)

  let bootstrapTexts: string[] = []
  let bootstrapSource: MeshConfig['bootstrapSource'] = 'none'
  const envBootstraps = (env.P2P_BOOTSTRAPS ?? '').split(/\s+/).filter(s => s !== '')
  if (options.bootstrap != null && options.bootstrap.length > 0) {
    bootstrapTexts = options.bootstrap
    bootstrapSource = 'command line'
  } else if (file.Bootstraps.length > 0) {
    bootstrapTexts = file.Bootstraps
    bootstrapSource = 'config file'
  } else if (envBootstraps.length > 0) {
    bootstrapTexts = envBootstraps
    bootstrapSource = 'environment'
  }

  const services = new Map<string, ServiceRecord>()
  for (const [name, value] of Object.entries(file.Services)) {
    const parsed = recordSchema.safeParse({ name, ...(value as object) })
    if (!parsed.success) throw new UsageError(`config file: Services.${name}: ${describeIssues(parsed.error)}`)
    if (parsed.data.name !== name) throw new UsageError(`config file: Services.${name}: the record is named '${parsed.data.name}'`)
    services.set(name, parsed.data)
  }

  const config: MeshConfig = {
    softRttMs: soft,
    hardRttMs: hard,
    bootstraps: bootstrapTexts.map(text => parseMultiaddr(text, 'bootstrap')),
    bootstrapSource,
    services,
    registryKeys: file.RegistryKeys
  }
  if (file.Perf.TargetRps != null) config.targetRps = file.Perf.TargetRps
  if (options.psk != null) config.pskFile = options.psk
  else if (env.P2P_PSK != null && env.P2P_PSK !== '') {
    // P2P_PSK holds either the key itself or the path of a key file.
    if (env.P2P_PSK.startsWith('/key/swarm/psk/')) config.pskText = env.P2P_PSK
    else config.pskFile = env.P2P_PSK
  }
  return config
}
