import { access } from 'node:fs/promises'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { COMMON_OPTIONS, option, optionsHelp, parsers, type OptionValues } from '../shared/cli-options.js'
import { UsageError } from '../shared/errors.js'
import { loadOrCreateKey } from '../shared/identity.js'
import { describeIssues, InvalidRecordError, parseRecord, recordSchema, SERVICE_NAME, type ServiceRecord } from '../shared/registry/record.js'
import { dispatch, onePositional, parseCommand, type Command, type Io } from './command.js'
import { Progress } from './progress.js'
import { NODE_OPTIONS, nodeSetup, withShortLivedNode } from './short-lived-node.js'

type NumberField = 'port' | 'softRttMs' | 'hardRttMs' | 'cpu' | 'memoryMb' | 'targetRps' | 'minInstances' | 'maxInstances' | 'seq'

/** What parsers lacks: zero and fractions, which some record fields take. */
function decimal (text: string, flag: string): number {
  if (!/^\d+(\.\d+)?$/.test(text)) throw new UsageError(`invalid ${flag} '${text}': expected a number`)
  return Number(text)
}

/**
 * The option parser of a numeric record field: PARSE reads the text and the record schema
 * judges the value, so each range stays written once (in the schema) while the message
 * names the flag the user typed rather than the record field.
 */
function recordNumber (field: NumberField, parse: (text: string, flag: string) => number = decimal): (text: string, flag: string) => number {
  return (text, flag) => {
    const value = parse(text, flag)
    const checked = recordSchema.shape[field].safeParse(value)
    if (!checked.success) throw new UsageError(`invalid ${flag} '${text}': ${describeIssues(checked.error)}`)
    return value
  }
}

function envPair (text: string, flag: string): [string, string] {
  const eq = text.indexOf('=')
  if (eq <= 0) throw new UsageError(`invalid ${flag} '${text}': expected K=V`)
  return [text.slice(0, eq), text.slice(eq + 1)]
}

const RECORD_OPTIONS = {
  image: option({ arg: 'IMAGE', help: 'run as a Docker container (exactly one of --image, --command)', parse: parsers.text }),
  command: option({ arg: 'CMD', help: 'run as a process; it gets its port in $PORT', parse: parsers.text }),
  port: option({ arg: 'N', help: 'the container\'s port (with --image)', parse: recordNumber('port', parsers.port) }),
  health: option({ arg: 'PATH', help: 'health check path', defaultText: '/', parse: parsers.text }),
  'soft-rtt': option({ arg: 'MS', help: 'latency the service wants', defaultText: 'config Perf.SoftReq', parse: recordNumber('softRttMs') }),
  'hard-rtt': option({ arg: 'MS', help: 'latency the service tolerates', defaultText: 'config Perf.HardReq', parse: recordNumber('hardRttMs') }),
  cpu: option({ arg: 'N', help: 'CPUs per instance', parse: recordNumber('cpu') }),
  memory: option({ arg: 'MB', help: 'memory per instance', parse: recordNumber('memoryMb', parsers.positiveInt) }),
  env: option({ arg: 'K=V', help: 'environment variable of the service', multiple: true, parse: envPair }),
  'target-rps': option({ arg: 'N', help: 'requests per second one instance should serve; more autoscales', defaultText: 'config Perf.TargetRps', parse: recordNumber('targetRps') }),
  'min-instances': option({ arg: 'N', help: 'instances kept running; put starts them at once (deploy on publish) and waits until they are up', parse: recordNumber('minInstances') }),
  'max-instances': option({ arg: 'N', help: 'instances at most', parse: recordNumber('maxInstances', parsers.positiveInt) }),
  seq: option({ arg: 'N', help: 'record sequence number; the highest wins', defaultText: 'now in ms', parse: recordNumber('seq') })
}

const PUT_OPTIONS = {
  ...RECORD_OPTIONS,
  key: { ...COMMON_OPTIONS.key, help: 'the key that signs the record, created (0600) when missing; none: a throwaway key' },
  ...NODE_OPTIONS
}

const PUT_HELP = `Usage: hyphae registry put NAME (--image IMAGE | --command CMD) [OPTIONS]

Signs the record with --key and stores it in the DHT under /hyphae/svc/NAME.

Record options:
${optionsHelp(RECORD_OPTIONS)}

Options:
${optionsHelp({ key: PUT_OPTIONS.key, ...NODE_OPTIONS })}`

const GET_HELP = `Usage: hyphae registry get NAME [OPTIONS]

Prints the record of NAME as JSON: the DHT's (validated, highest seq) else the
config file's Services entry. Exits 1 when neither has one.

Options:
${optionsHelp(NODE_OPTIONS)}`

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

/** `hyphae registry (put|get) ...` */
export async function registry (argv: string[], io: Io): Promise<number> {
  const help = (): string => {
    const lines = Object.values(REGISTRY_COMMANDS).map(c => `  ${c.usage}\n      ${c.summary}`)
    return `Usage: hyphae registry (put|get) NAME [OPTIONS]\n\n${lines.join('\n')}\n\nRun 'hyphae registry put --help' for the record options.`
  }
  return await dispatch(REGISTRY_COMMANDS, argv, io, 'registry command', help)
}

async function registryPut (argv: string[], io: Io): Promise<number> {
  const { values, positionals } = parseCommand(argv, PUT_OPTIONS)
  if (values.help === true) {
    io.out(PUT_HELP)
    return 0
  }
  const name = serviceName(positionals)
  const record = recordFromOptions(name, values)
  const setup = nodeSetup(values, io.env)
  if (setup.config.bootstraps.length === 0) {
    throw new UsageError('no bootstrap to publish to: give --bootstrap, Bootstraps in the config file or P2P_BOOTSTRAPS')
  }
  const signer = await signingKey(values.key, io)

  return await withShortLivedNode(setup, async (reg, signal, node) => {
    const result = await reg.publish(record, signer, { signal })
    if (result.storedOn === 0) throw new Error(`no peer stored the record for '${name}'`)
    io.out(`stored ${result.key} seq=${result.record.seq} signer=${result.signer}`)
    // Loaded late, like libp2p in withShortLivedNode: --help and usage errors need not pay for it.
    const { surveyAllocators } = await import('./allocators.js')
    const survey = await surveyAllocators(node, result.signer)
    const fix = `list ${result.signer} in an allocator's RegistryKeys to have '${name}' run there`
    if (survey.answered === 0) io.err(`hyphae: warning: no allocator answered: cannot tell whether any will run '${name}' (allocators run DHT records only from signers in their RegistryKeys)`)
    else if (survey.trusting.length === 0) io.err(`hyphae: warning: none of the ${survey.answered} allocators seen runs records signed by ${result.signer}: ${fix}`)
    else io.err(`hyphae: ${survey.trusting.length} of the ${survey.answered} allocators seen run records signed by ${result.signer}`)
    if ((result.record.minInstances ?? 0) === 0) return 0

    const { deploy } = await import('./deploy.js')
    const progress = new Progress({ line: io.err, terminal: io.errTerminal })
    const deployed = await deploy(result.record, { node, log: setup.log, allocators: survey.trusting, progress: line => { progress.line(`hyphae: ${line}`) } })
      .finally(() => { progress.close() })
    if (deployed.up >= deployed.wanted) return 0
    const why = deployed.refusals.length > 0 ? deployed.refusals.join('; ') : survey.trusting.length === 0 ? 'no allocator seen runs its signer\'s records' : 'time ran out'
    io.err(`hyphae: error: the record is stored, but only ${deployed.up} of the ${deployed.wanted} instances of '${name}' (minInstances) are up: ${why}`)
    return 1
  })
}

async function registryGet (argv: string[], io: Io): Promise<number> {
  const { values, positionals } = parseCommand(argv, NODE_OPTIONS)
  if (values.help === true) {
    io.out(GET_HELP)
    return 0
  }
  const name = serviceName(positionals)
  const setup = nodeSetup(values, io.env)
  if (setup.config.bootstraps.length === 0) {
    io.err('hyphae: warning: no bootstrap configured: only the config file\'s records are visible')
  }
  return await withShortLivedNode(setup, async (reg, signal) => {
    const record = await reg.resolve(name, { signal })
    if (record == null) throw new Error(`no record for service '${name}' in the DHT or the config file`)
    io.out(JSON.stringify(record, null, 2))
    return 0
  })
}

function serviceName (positionals: string[]): string {
  const name = onePositional(positionals, 'NAME')
  if (!SERVICE_NAME.test(name)) throw new UsageError(`invalid service name '${name}': names match ${SERVICE_NAME.source}`)
  return name
}

/** Each value is checked already; what is left is what only the whole record can tell. */
function recordFromOptions (name: string, v: OptionValues<typeof PUT_OPTIONS>): ServiceRecord {
  if ((v.image == null) === (v.command == null)) throw new UsageError('give exactly one of --image and --command')
  try {
    return parseRecord({
      name,
      image: v.image,
      command: v.command,
      port: v.port,
      health: v.health,
      softRttMs: v['soft-rtt'],
      hardRttMs: v['hard-rtt'],
      cpu: v.cpu,
      memoryMb: v.memory,
      env: v.env != null ? Object.fromEntries(v.env) : undefined,
      targetRps: v['target-rps'],
      minInstances: v['min-instances'],
      maxInstances: v['max-instances'],
      seq: v.seq ?? Date.now()
    })
  } catch (err) {
    if (err instanceof InvalidRecordError) throw new UsageError(`invalid record: ${err.message}`)
    throw err
  }
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
