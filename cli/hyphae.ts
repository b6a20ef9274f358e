#!/usr/bin/env node
import '../shared/polyfill.js'
import { access } from 'node:fs/promises'
import { realpathSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { COMMON_OPTIONS, loadMeshConfig, parseCommandLine, parseLogLevel, parseMultiaddr, type CommonOptions, type MeshConfig } from '../shared/config.js'
import { errorMessage, UsageError } from '../shared/errors.js'
import { createKeyFile, loadOrCreateKey } from '../shared/identity.js'
import { createLogger, type Logger } from '../shared/log.js'
import { InvalidRecordError, parseRecord, SERVICE_NAME, type ServiceRecord, type ServiceRecordInput } from '../shared/registry/record.js'
import type { MeshNode } from '../shared/node.js'
import type { Registry } from '../shared/registry/registry.js'

/** Where a command writes; main() takes it so tests and embedders can capture output. */
export interface Io {
  out: (line: string) => void
  err: (line: string) => void
  env: NodeJS.ProcessEnv
}

interface Command {
  usage: string
  summary: string
  run: (argv: string[], io: Io) => Promise<number>
}

const COMMON_HELP = `Common options:
  --configfile PATH     config file (default: conf/conf.json of the package)
  --key FILE            identity key; for registry put, the key that signs (created 0600 if missing)
  --bootstrap MULTIADDR bootstrap peer (repeatable; else config Bootstraps, else P2P_BOOTSTRAPS)
  --psk FILE            private network key (else P2P_PSK)
  --listen MULTIADDR    address of the short-lived node (default /ip4/127.0.0.1/tcp/0)
  --log-level LEVEL     fatal, error (default here), warn, info, debug, trace, silent
  -h, --help            this help`

const REGISTRY_PUT_OPTIONS = {
  ...COMMON_OPTIONS,
  image: { type: 'string' },
  command: { type: 'string' },
  port: { type: 'string' },
  health: { type: 'string' },
  'soft-rtt': { type: 'string' },
  'hard-rtt': { type: 'string' },
  cpu: { type: 'string' },
  memory: { type: 'string' },
  env: { type: 'string', multiple: true },
  'target-rps': { type: 'string' },
  'min-instances': { type: 'string' },
  'max-instances': { type: 'string' },
  seq: { type: 'string' }
} as const

const REGISTRY_PUT_OPTIONS_USAGE = 'hyphae registry put NAME (--image IMAGE | --command CMD) [--port N] [--health PATH]\n         [--soft-rtt MS] [--hard-rtt MS] [--cpu N] [--memory MB] [--env K=V]...\n         [--target-rps N] [--min-instances N] [--max-instances N] [--seq N] [OPTIONS]'

const HELP_ONLY = { help: COMMON_OPTIONS.help } as const

/** How long the short-lived node waits for a bootstrap's DHT to let it in. */
const ROUTING_TABLE_WAIT_MS = 10_000
const COMMAND_TIMEOUT_MS = 30_000

const COMMANDS: Readonly<Record<string, Command>> = {
  keygen: {
    usage: 'hyphae keygen FILE',
    summary: 'write a new identity key (mode 0600) and print its peer ID',
    run: keygen
  },
  registry: {
    usage: 'hyphae registry (put|get) ...',
    summary: 'publish or read service records in the DHT',
    run: registry
  },
  up: {
    usage: 'hyphae up [OPTIONS]',
    summary: 'run a whole local mesh on this machine (demo)',
    run: async (argv, io) => await (await import('./up.js')).up(argv, io)
  }
}

const REGISTRY_COMMANDS: Readonly<Record<string, Command>> = {
  put: {
    usage: 'hyphae registry put NAME (--image IMAGE | --command CMD) [OPTIONS]',
    summary: 'sign a service record and store it in the DHT',
    run: registryPut
  },
  get: {
    usage: 'hyphae registry get NAME [OPTIONS]',
    summary: 'print the record of a service as JSON (DHT first, then the config file)',
    run: registryGet
  }
}

function topHelp (): string {
  const lines = Object.values(COMMANDS).map(c => `  ${c.usage.padEnd(36)} ${c.summary}`)
  return `Usage: hyphae COMMAND [OPTIONS]\n\nCommands:\n${lines.join('\n')}\n\nRun 'hyphae COMMAND --help' for a command's options.`
}

function dispatch (table: Readonly<Record<string, Command>>, argv: string[], io: Io, what: string, help: () => string): Promise<number> | number {
  const [name, ...rest] = argv
  if (name == null) throw new UsageError(`missing ${what} (${Object.keys(table).join(', ')}); see --help`)
  if (name === '--help' || name === '-h' || name === 'help') {
    io.out(help())
    return 0
  }
  if (name.startsWith('-')) throw new UsageError(`unknown option '${name}' before the ${what}`)
  const command = Object.hasOwn(table, name) ? table[name] : undefined
  if (command == null) throw new UsageError(`unknown ${what} '${name}' (expected one of ${Object.keys(table).join(', ')})`)
  return command.run(rest, io)
}

/** Runs the CLI; returns the exit code. Never throws: a user mistake is one line and exit 2. */
export async function main (argv: string[], io: Io = processIo()): Promise<number> {
  try {
    return await dispatch(COMMANDS, argv, io, 'command', topHelp)
  } catch (err) {
    const message = errorMessage(err).split('\n')[0]
    io.err(`hyphae: ${message}`)
    return err instanceof UsageError ? 2 : 1
  }
}

async function keygen (argv: string[], io: Io): Promise<number> {
  const { values, positionals } = parseCommandLine(argv, HELP_ONLY)
  if (values.help === true) {
    io.out('Usage: hyphae keygen FILE\n\nWrites a new Ed25519 identity key to FILE (mode 0600; an existing file is never\noverwritten) and prints its peer ID. Use the file with --key.')
    return 0
  }
  const file = onePositional(positionals, 'FILE')
  const key = await createKeyFile(file)
  io.out(peerIdFromPrivateKey(key).toString())
  return 0
}

async function registry (argv: string[], io: Io): Promise<number> {
  const help = (): string => {
    const lines = Object.values(REGISTRY_COMMANDS).map(c => `  ${c.usage}\n      ${c.summary}`)
    return `Usage: hyphae registry (put|get) NAME [OPTIONS]\n\n${lines.join('\n')}\n\nRun 'hyphae registry put --help' for the record options.`
  }
  return await dispatch(REGISTRY_COMMANDS, argv, io, 'registry command', help)
}

async function registryPut (argv: string[], io: Io): Promise<number> {
  const { values, positionals } = parseCommandLine(argv, REGISTRY_PUT_OPTIONS)
  if (values.help === true) {
    io.out(`Usage: ${REGISTRY_PUT_OPTIONS_USAGE}\n\nSigns the record with --key and stores it in the DHT under /hyphae/svc/NAME.\n\nRecord options:
  --image IMAGE         run as a Docker container (exactly one of --image, --command)
  --command CMD         run as a process; it gets its port in PORT
  --port N              the container's port (with --image)
  --health PATH         health check path (default /)
  --soft-rtt MS         latency the service wants (default: config Perf.SoftReq)
  --hard-rtt MS         latency the service tolerates (default: config Perf.HardReq)
  --cpu N               CPUs per instance
  --memory MB           memory per instance
  --env K=V             environment variable (repeatable)
  --target-rps N        requests per second one instance should serve
  --min-instances N, --max-instances N
  --seq N               record sequence number; the highest wins (default: now in ms)

${COMMON_HELP}`)
    return 0
  }
  const name = serviceName(positionals)
  const record = recordFromOptions(name, values)
  const env = io.env
  const config = loadMeshConfig(values as CommonOptions, env)
  const log = createLogger('hyphae', cliLogLevel(values['log-level'], env))
  if (config.bootstraps.length === 0) {
    throw new UsageError('no bootstrap to publish to: give --bootstrap, Bootstraps in the config file or P2P_BOOTSTRAPS')
  }
  const signer = await signingKey(values.key, io)

  return await withShortLivedNode(values as CommonOptions, config, log, async (reg, signal, node) => {
    const result = await reg.publish(record, signer, { signal })
    if (result.storedOn === 0) throw new Error(`no peer stored the record for '${name}'`)
    io.out(`stored ${result.key} seq=${result.record.seq} signer=${result.signer}`)
    const { surveyAllocatorTrust } = await import('./allocator-trust.js')
    const survey = await surveyAllocatorTrust(node, result.signer)
    const fix = `list ${result.signer} in an allocator's RegistryKeys to have '${name}' run there`
    if (survey.answered === 0) io.err(`hyphae: warning: no allocator answered: cannot tell whether any will run '${name}' (allocators run DHT records only from signers in their RegistryKeys)`)
    else if (survey.trusting === 0) io.err(`hyphae: warning: none of the ${survey.answered} allocators seen runs records signed by ${result.signer}: ${fix}`)
    else io.err(`hyphae: ${survey.trusting} of the ${survey.answered} allocators seen run records signed by ${result.signer}`)
    return 0
  })
}

async function registryGet (argv: string[], io: Io): Promise<number> {
  const { values, positionals } = parseCommandLine(argv, COMMON_OPTIONS)
  if (values.help === true) {
    io.out(`Usage: hyphae registry get NAME [OPTIONS]\n\nPrints the record of NAME as JSON: the DHT's (validated, highest seq) else the\nconfig file's Services entry. Exits 1 when neither has one.\n\n${COMMON_HELP}`)
    return 0
  }
  const name = serviceName(positionals)
  const env = io.env
  const config = loadMeshConfig(values as CommonOptions, env)
  const log = createLogger('hyphae', cliLogLevel(values['log-level'], env))
  if (config.bootstraps.length === 0) {
    io.err('hyphae: warning: no bootstrap configured: only the config file\'s records are visible')
  }
  return await withShortLivedNode(values as CommonOptions, config, log, async (reg, signal) => {
    const record = await reg.resolve(name, { signal })
    if (record == null) throw new Error(`no record for service '${name}' in the DHT or the config file`)
    io.out(JSON.stringify(record, null, 2))
    return 0
  })
}

function onePositional (positionals: string[], what: string): string {
  if (positionals.length === 0) throw new UsageError(`missing ${what}`)
  if (positionals.length > 1) throw new UsageError(`unexpected argument '${positionals[1]}'`)
  return positionals[0]
}

function serviceName (positionals: string[]): string {
  const name = onePositional(positionals, 'NAME')
  if (!SERVICE_NAME.test(name)) throw new UsageError(`invalid service name '${name}': names match ${SERVICE_NAME.source}`)
  return name
}

/** Quiet by default: the answer is on stdout and our own one-line messages on stderr; logs are for digging. */
function cliLogLevel (text: string | undefined, env: NodeJS.ProcessEnv): ReturnType<typeof parseLogLevel> {
  const fromEnv = env.HYPHAE_LOG_LEVEL != null && env.HYPHAE_LOG_LEVEL !== '' ? env.HYPHAE_LOG_LEVEL : undefined
  return parseLogLevel(text ?? fromEnv ?? 'error', env)
}

type PutValues = ReturnType<typeof parseCommandLine<typeof REGISTRY_PUT_OPTIONS>>['values']

function recordFromOptions (name: string, v: PutValues): ServiceRecord {
  if ((v.image == null) === (v.command == null)) throw new UsageError('give exactly one of --image and --command')
  const input: ServiceRecordInput = {
    name,
    image: v.image,
    command: v.command,
    port: intOption(v.port, '--port', 1, 65535),
    health: v.health,
    softRttMs: intOption(v['soft-rtt'], '--soft-rtt', 0, 60_000),
    hardRttMs: intOption(v['hard-rtt'], '--hard-rtt', 0, 60_000),
    cpu: positiveOption(v.cpu, '--cpu'),
    memoryMb: intOption(v.memory, '--memory', 1, 1_048_576),
    env: envOption(v.env),
    targetRps: positiveOption(v['target-rps'], '--target-rps'),
    minInstances: intOption(v['min-instances'], '--min-instances', 0, 1000),
    maxInstances: intOption(v['max-instances'], '--max-instances', 1, 100_000),
    seq: intOption(v.seq, '--seq', 0, Number.MAX_SAFE_INTEGER) ?? Date.now()
  }
  try {
    return parseRecord(input)
  } catch (err) {
    if (err instanceof InvalidRecordError) throw new UsageError(`invalid record: ${err.message}`)
    throw err
  }
}

function intOption (text: string | undefined, flag: string, min: number, max: number): number | undefined {
  if (text == null) return undefined
  const n = Number(text)
  if (!/^\d+$/.test(text) || n < min || n > max) throw new UsageError(`invalid ${flag} '${text}': expected a whole number ${min}-${max}`)
  return n
}

function positiveOption (text: string | undefined, flag: string): number | undefined {
  if (text == null) return undefined
  const n = Number(text)
  if (text.trim() === '' || !Number.isFinite(n) || n <= 0) throw new UsageError(`invalid ${flag} '${text}': expected a positive number`)
  return n
}

function envOption (pairs: string[] | undefined): Record<string, string> | undefined {
  if (pairs == null) return undefined
  const env: Record<string, string> = {}
  for (const pair of pairs) {
    const eq = pair.indexOf('=')
    if (eq <= 0) throw new UsageError(`invalid --env '${pair}': expected K=V`)
    env[pair.slice(0, eq)] = pair.slice(eq + 1)
  }
  return env
}

/**
 * The key that signs records. Without --key, a throwaway one: fine for a demo mesh, refused
 * by nodes whose RegistryKeys are set, so say so.
 */
async function signingKey (file: string | undefined, io: Io): Promise<PrivateKey> {
  if (file == null) {
    const key = await generateKeyPair('Ed25519')
    io.err(`hyphae: warning: no --key: signing with a throwaway key ${peerIdFromPrivateKey(key).toString()} (nodes with RegistryKeys set will refuse it)`)
    return key
  }
  const existed = await access(file).then(() => true, () => false)
  const key = await loadOrCreateKey(file)
  if (!existed) io.err(`hyphae: warning: created a new key ${file} with peer ID ${peerIdFromPrivateKey(key).toString()}`)
  return key
}

/**
 * Starts a node for one command, joins the DHT through the bootstraps, runs FN with a
 * Registry on it, and stops everything. The node takes a fresh identity even with --key:
 * --key signs, and a daemon may be running under that key's peer ID right now.
 */
async function withShortLivedNode (options: CommonOptions, config: MeshConfig, log: Logger, fn: (registry: Registry, signal: AbortSignal, node: MeshNode) => Promise<number>): Promise<number> {
  // Loaded here, not at the top: libp2p takes most of a second to import, which --help,
  // keygen and usage errors need not pay.
  const { createMeshNode, dialBootstraps, readPsk, waitForRoutingTable } = await import('../shared/node.js')
  const { registryDhtInit } = await import('../shared/registry/dht-validation.js')
  const { Registry } = await import('../shared/registry/registry.js')
  const listen = (options.listen ?? ['/ip4/127.0.0.1/tcp/0']).map(text => parseMultiaddr(text, 'listen'))
  const psk = await readPsk(config.pskFile, config.pskText)
  const signal = AbortSignal.timeout(COMMAND_TIMEOUT_MS)
  const node = await createMeshNode({
    privateKey: await generateKeyPair('Ed25519'),
    listen,
    ...(psk != null ? { psk } : {}),
    ...registryDhtInit(config.registryKeys)
  })
  const reg = new Registry({ node, staticRecords: config.services, allowedSigners: config.registryKeys, log })
  try {
    await node.start()
    if (config.bootstraps.length > 0) {
      const connected = await dialBootstraps(node, config.bootstraps, log, AbortSignal.timeout(5000))
      if (connected === 0) throw new Error(`no bootstrap reachable (tried ${config.bootstraps.map(ma => ma.toString()).join(', ')})`)
      if (!await waitForRoutingTable(node, ROUTING_TABLE_WAIT_MS)) {
        throw new Error(`the bootstraps answered but no DHT peer joined within ${ROUTING_TABLE_WAIT_MS / 1000} s (are they hyphae nodes on the same network key?)`)
      }
    }
    reg.start()
    return await fn(reg, signal, node)
  } finally {
    await reg.stop()
    await node.stop()
  }
}

function processIo (): Io {
  return {
    out: line => { process.stdout.write(line + '\n') },
    err: line => { process.stderr.write(line + '\n') },
    env: process.env
  }
}

function isEntryPoint (): boolean {
  if (process.argv[1] == null) return false
  try {
    return realpathSync(process.argv[1]) === realpathSync(fileURLToPath(import.meta.url))
  } catch {
    return false
  }
}

if (isEntryPoint()) {
  // exit() rather than waiting for the loop to drain: a short-lived command must not linger
  // on a socket libp2p is still closing. stdout/stderr writes are synchronous for files and pipes.
  void main(process.argv.slice(2)).then(code => process.exit(code))
}
