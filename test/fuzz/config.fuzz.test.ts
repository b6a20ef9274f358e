import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import fc from 'fast-check'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parseAppAddress } from '../../proxy/address.js'
import { COMMON_OPTIONS, loadMeshConfig, parseCommandLine, parseMultiaddr, parsePort, parsePositiveInt, readConfigFile } from '../../shared/config.js'
import { UsageError } from '../../shared/errors.js'
import { SERVICE_NAME } from '../../shared/registry/record.js'
import { describeError, describeReport, fail, FUZZ_RUNS, fuzzTimeoutMs, heapUsed, ok, runSurface, settledRss, type Outcome, type SurfaceReport } from './runs.js'

/**
 * Surface 4: generated config files and command lines. Property (DESIGN.md: "a one-line error
 * naming the problem, and exit 2"): every failure of readConfigFile, loadMeshConfig,
 * parseCommandLine, parsePort, parsePositiveInt, parseMultiaddr (and parseAppAddress) is a
 * UsageError whose message is one non-empty line, never another exception; and what they
 * return is what they promise.
 */

let dir: string
let caseNo = 0

beforeAll(() => { dir = mkdtempSync(join(tmpdir(), 'hyphae-fuzz-config-')) })
afterAll(() => { if (dir != null) rmSync(dir, { recursive: true, force: true }) })

interface UsageCheck<T> {
  /** What a returned value must satisfy. */
  onResult: (result: T) => Outcome
  /** More that a UsageError must satisfy. */
  onUsage?: (err: UsageError) => Outcome | undefined
  /** Text the caller gave: when a multi-line message quotes one of these, that is the cause. */
  inputs?: Array<[label: string, text: string | undefined]>
}

/** Runs `fn`; a failure must be a UsageError of one non-empty line. `what` names the function. */
function expectUsage<T> (what: string, fn: () => T, check: UsageCheck<T>): Outcome {
  let result: T
  try {
    result = fn()
  } catch (err) {
    if (!(err instanceof UsageError)) return fail(`${what} threw ${describeError(err)}`, `${what}: threw ${(err as Error)?.name ?? typeof err}, not a UsageError`)
    if (err.message.trim() === '') return fail(`${what}: a UsageError with no message`, `${what}: empty message`)
    if (/[\r\n]/.test(err.message)) {
      return fail(`${what}: a UsageError of ${err.message.split(/\r\n|\r|\n/).length} lines: ${JSON.stringify(err.message.slice(0, 400))}`, `${what}: multi-line message, ${causeOf(err.message, check.inputs ?? [])}`)
    }
    return check.onUsage?.(err) ?? ok('usage error')
  }
  return check.onResult(result)
}

/** Where the line break in a message came from, for grouping failures by cause. */
function causeOf (message: string, inputs: Array<[string, string | undefined]>): string {
  const echoed = inputs.find(([, text]) => text != null && /[\r\n]/.test(text) && message.includes(text))
  if (echoed != null) return `it quotes the ${echoed[0]} as given`
  if (/^invalid \S+ multiaddr /.test(message)) return 'it quotes a multiaddr as given'
  if (message.includes(' is not valid JSON: ')) return "it quotes JSON.parse's message, which quotes the file's text"
  if (/Unrecognized key|invalid key|: .*: /.test(message)) return 'describeIssues quotes a key or path from the file'
  return `other: ${message.replace(/\s+/g, ' ').slice(0, 40)}`
}

// ---- generated config files ----------------------------------------------------------------

const oddKey = fc.constantFrom('perf', 'Perf ', 'Bootstrap', 'a\nb', '__proto__', 'constructor', '', 'toString', 'Services\n', 'é')
const numberish = fc.oneof(
  { weight: 4, arbitrary: fc.integer({ min: 0, max: 60_000 }) },
  { weight: 1, arbitrary: fc.integer() },
  { weight: 1, arbitrary: fc.double() },
  { weight: 1, arbitrary: fc.constantFrom<unknown>(-1, 60_001, 1.5, '100', null, true, [], {}, 0) }
)
const rttArb = fc.oneof({ weight: 5, arbitrary: fc.record({ RTT: numberish }) }, { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 2 }) })
const withOdd = <T extends Record<string, unknown>>(arb: fc.Arbitrary<T>): fc.Arbitrary<Record<string, unknown>> =>
  fc.tuple(arb, fc.oneof({ weight: 6, arbitrary: fc.constant({}) }, { weight: 1, arbitrary: fc.dictionary(oddKey, fc.jsonValue({ maxDepth: 1 }), { maxKeys: 2 }) }))
    .map(([base, odd]) => Object.assign(Object.create(null) as Record<string, unknown>, base, odd))

const PEER = '12D3KooWGr15EnzXanNyxZ69NkPdvMwfygsgPTocicR6QLnD2sdo'
/** Multiaddr text: valid ones, near misses, junk (with newlines too). */
const multiaddrText = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom('/ip4/127.0.0.1/tcp/4001', `/ip4/127.0.0.1/tcp/4001/p2p/${PEER}`, '/dns4/boot.example/tcp/4001', '/ip6/::1/tcp/1', `/p2p/${PEER}`, '/ip4/10.0.0.1/udp/1/quic-v1') },
  {
    weight: 2,
    arbitrary: fc.constantFrom('', '/', 'ip4/127.0.0.1', '/ip4/999.1.1.1/tcp/1', '/ip4/127.0.0.1/tcp/99999', '/ip4/127.0.0.1/tcp/-1', '/tcp/abc', '/unknown-proto/x',
      '/p2p/notapeer', '/ip4/127.0.0.1/tcp', '/ip6/zz/tcp/1', '/dns4', '/ip4/127.0.0.1/tcp/1\n/ip4/1.2.3.4/tcp/2', '/ip4/127.0.0.1/tcp/1 ', ' /ip4/127.0.0.1/tcp/1',
      '/ip4/127.0.0.1/tcp/4001/p2p/QmNotReallyAPeerIdAtAll', '/unix/%2Ftmp%2Fx', '/ip4/1.1.1.1/tcp/1/ws/p2p-circuit', '/memory/x', '//', '/ip4//tcp/1')
  },
  { weight: 1, arbitrary: fc.string({ maxLength: 40 }) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 30 }) },
  { weight: 1, arbitrary: fc.array(fc.constantFrom('/ip4/1.2.3.4', '/tcp/1', '/udp/2', '/p2p-circuit', '/ws', `/p2p/${PEER}`, '/dns/x', '/http', '/ip6/::'), { maxLength: 6 }).map(parts => parts.join('')) }
)

const serviceNameArb = fc.oneof(
  { weight: 3, arbitrary: fc.stringMatching(SERVICE_NAME) },
  { weight: 1, arbitrary: fc.constantFrom('Hello', 'a_b', '-a', '', 'a'.repeat(64), 'a\nb', '__proto__', 'constructor') },
  { weight: 1, arbitrary: fc.string({ maxLength: 12 }) }
)
const recordValueArb = fc.oneof(
  {
    weight: 4,
    arbitrary: withOdd(fc.record({
      command: fc.oneof(fc.constant('node app.js'), fc.string({ maxLength: 20 }), fc.constant(''), fc.integer()),
      image: fc.oneof(fc.constant('nginx:latest'), fc.string({ maxLength: 20 })),
      health: fc.oneof(fc.constant('/healthz'), fc.constant('/'), fc.string({ maxLength: 10 })),
      port: numberish,
      env: fc.dictionary(fc.oneof(fc.constantFrom('PORT', 'A_B', '1BAD', 'a-b', ''), fc.string({ maxLength: 6 })), fc.oneof(fc.string({ maxLength: 10 }), fc.integer()), { maxKeys: 3 }),
      softRttMs: numberish,
      hardRttMs: numberish,
      cpu: numberish,
      memoryMb: numberish,
      targetRps: numberish,
      minInstances: numberish,
      maxInstances: numberish,
      seq: numberish,
      name: serviceNameArb
    }, { requiredKeys: [] }))
  },
  { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 2 }) }
)

const VALID_MULTIADDRS = ['/ip4/127.0.0.1/tcp/4001', `/ip4/127.0.0.1/tcp/4001/p2p/${PEER}`, '/dns4/boot.example/tcp/4001', '/ip6/::1/tcp/1']

/** Configs that should load: soft ≤ hard, valid multiaddrs, valid static records. */
const validConfigArb = fc.record({
  Perf: fc.tuple(fc.integer({ min: 0, max: 60_000 }), fc.integer({ min: 0, max: 60_000 }), fc.option(fc.double({ min: 0.1, max: 1e6, noNaN: true })))
    .map(([a, b, rps]) => ({ SoftReq: { RTT: Math.min(a, b) }, HardReq: { RTT: Math.max(a, b) }, ...(rps != null ? { TargetRps: rps } : {}) })),
  Bootstraps: fc.array(fc.constantFrom(...VALID_MULTIADDRS), { maxLength: 3 }),
  Services: fc.dictionary(fc.stringMatching(SERVICE_NAME), fc.record({
    command: fc.constantFrom('node app.js', 'x', '"/usr/bin/env" node -e 1'),
    health: fc.constantFrom('/', '/healthz', '/a?b'),
    port: fc.integer({ min: 1, max: 65_535 }),
    minInstances: fc.integer({ min: 0, max: 3 }),
    targetRps: fc.double({ min: 0.5, max: 1000, noNaN: true })
  }, { requiredKeys: ['command'] }), { maxKeys: 3 }),
  RegistryKeys: fc.array(fc.constant(PEER), { maxLength: 2 })
}, { requiredKeys: [] })

/** Near-valid config objects: every field optional, each of any type now and then, odd keys. */
const configObjectArb: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 6, arbitrary: validConfigArb },
  {
    weight: 8,
    arbitrary: withOdd(fc.record({
      Perf: fc.oneof({ weight: 6, arbitrary: withOdd(fc.record({ SoftReq: rttArb, HardReq: rttArb, TargetRps: numberish }, { requiredKeys: [] })) }, { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 2 }) }),
      Bootstraps: fc.oneof({ weight: 6, arbitrary: fc.array(multiaddrText, { maxLength: 3 }) }, { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 2 }) }),
      Services: fc.oneof({ weight: 6, arbitrary: fc.dictionary(serviceNameArb, recordValueArb, { maxKeys: 3 }) }, { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 2 }) }),
      RegistryKeys: fc.oneof({ weight: 6, arbitrary: fc.array(fc.oneof(fc.constant(PEER), fc.string({ maxLength: 10 })), { maxLength: 3 }) }, { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 2 }) })
    }, { requiredKeys: [] }))
  },
  { weight: 1, arbitrary: fc.jsonValue() }
)

/** What goes in the file: JSON (pretty or not, maybe damaged), or any text, or any bytes. */
const fileContentArb: fc.Arbitrary<string | Uint8Array> = fc.oneof(
  {
    weight: 8,
    arbitrary: fc.tuple(configObjectArb, fc.constantFrom(0, 2, '\t'), fc.oneof(
      { weight: 6, arbitrary: fc.constant<string[]>([]) },
      { weight: 1, arbitrary: fc.tuple(fc.constantFrom('truncate', 'insert', 'number', 'bom', 'comment', 'trailing-comma', 'single-quotes'), fc.double({ min: 0, max: 1, noNaN: true }), fc.string({ unit: 'binary', minLength: 1, maxLength: 3 })).map(m => m.map(String)) }
    )).map(([value, indent, mutation]) => {
      let text = JSON.stringify(value, null, indent) ?? 'null'
      if (mutation.length === 0) return text
      const [how, where, what] = mutation
      const at = Math.floor(Number(where) * text.length)
      switch (how) {
        case 'truncate': text = text.slice(0, at); break
        case 'insert': text = text.slice(0, at) + what + text.slice(at); break
        case 'number': text = text.replace(/\d+/, ['1e999', '-0', '0x10', 'NaN', 'Infinity', '01', '1.'][at % 7]); break
        case 'bom': text = `\uFEFF${text}`; break
        case 'comment': text = `// hyphae config\n${text}`; break
        case 'trailing-comma': text = text.replace(/([}\]])\s*$/, ',\n$1'); break
        case 'single-quotes': text = text.replaceAll('"', "'"); break
      }
      return text
    })
  },
  { weight: 1, arbitrary: fc.string({ maxLength: 200 }) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 100 }) },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 100 }) },
  { weight: 1, arbitrary: fc.constantFrom('', ' ', '\n', '{', '}', 'null', '[]', '"x"', '{"Perf":', '[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[', '{"Perf":{"SoftReq":{"RTT":100}}\n}\n', '{\n  "Perf": {\n    "SoftReq": { "RTT": 100 }\n  x\n}\n') }
)

/** Where the file is: usually a fresh file; sometimes no file, a directory, odd names. */
const fileNameArb = fc.oneof(
  { weight: 12, arbitrary: fc.constant('conf.json') },
  { weight: 1, arbitrary: fc.constantFrom('missing.json', '', 'sub/', 'with space.json', 'ü.json', 'new\nline.json', 'tab\t.json', 'a'.repeat(300) + '.json') }
)

interface FileCase { name: string, content: string | Uint8Array }

/**
 * Counterexamples the fuzzer found (shrunk), tried first on every run so that they stay
 * checked whatever the seed. Each gave a UsageError of more than one line when found (before
 * shared/errors.ts made UsageError flatten line breaks).
 */
const FOUND_FILES: FileCase[] = [
  // A hand-edited conf.json with an unquoted multiaddr: V8's "Unexpected token" message
  // quotes the text around the error, line breaks and all, and readConfigFile passes it on.
  { name: 'conf.json', content: '{\n  "Bootstraps": [\n    /ip4/10.0.0.1/tcp/4001\n  ]\n}\n' },
  // The same for a file saved with a byte order mark (the BOM is the unexpected token).
  { name: 'conf.json', content: '\uFEFF{\n  "Bootstraps": []\n}\n' },
  // describeIssues quotes keys as they are: an unknown key with a line break in it.
  { name: 'conf.json', content: '{"a\\nb":{}}' },
  // The file path is quoted as given.
  { name: 'new\nline.json', content: '' }
]
const fileCaseArb: fc.Arbitrary<FileCase> = fc.record({ name: fileNameArb, content: fileContentArb })

/** Writes the case into a fresh subdirectory; `path` is what to read, `done` removes it. */
function materialize (c: FileCase): { path: string, done: () => void } {
  const caseDir = join(dir, `case-${caseNo++}`)
  mkdirSync(join(caseDir, 'sub'), { recursive: true })
  const path = join(caseDir, c.name)
  const done = (): void => { rmSync(caseDir, { recursive: true, force: true }) }
  if (c.name === 'missing.json' || c.name === '' || c.name.endsWith('/')) return { path, done }
  try {
    writeFileSync(path, c.content)
  } catch {
    // A name the file system refuses (too long): reading it must fail as a UsageError too.
  }
  return { path, done }
}

const rss = settledRss
const rssOf = `this vitest worker after GC (pid ${process.pid})`

function expectClean (report: SurfaceReport): void {
  expect(report.cases).toBeGreaterThanOrEqual(FUZZ_RUNS)
  expect(report.failures, describeReport(report)).toBe(0)
  expect(report.hangs, describeReport(report)).toBe(0)
}

describe('fuzz: config files', () => {
  it('readConfigFile: valid data, or a one-line UsageError naming the file', async () => {
    const report = await runSurface({
      surface: 'config-file',
      arbitrary: fileCaseArb,
      examples: FOUND_FILES,
      check: async c => {
        const { path, done } = materialize(c)
        try {
          return expectUsage('readConfigFile', () => readConfigFile(path), {
            inputs: [['file path', path]],
            onResult: data => {
            if (!Number.isInteger(data.Perf.SoftReq.RTT) || !Number.isInteger(data.Perf.HardReq.RTT)) return fail(`returned RTTs ${JSON.stringify(data.Perf)}`, 'readConfigFile: RTT not an integer')
            if (!Array.isArray(data.Bootstraps) || !Array.isArray(data.RegistryKeys)) return fail(`returned ${JSON.stringify(data)}`, 'readConfigFile: arrays missing')
            for (const name of Object.keys(data.Services)) if (!SERVICE_NAME.test(name)) return fail(`returned a service named ${JSON.stringify(name)}`, 'readConfigFile: bad service name accepted')
              return ok('valid')
            },
            // (UsageError writes a line break it quotes as \n, to stay one line.)
            onUsage: err => err.message.includes(path.replace(/\r\n|\r|\n/g, '\\n')) ? undefined : fail(`the message does not name ${JSON.stringify(path)}: ${err.message}`, 'readConfigFile: message does not name the file')
          })
        } finally {
          done()
        }
      },
      rss,
      heap: heapUsed,
      rssOf
    })
    expectClean(report)
    expect(report.notes.valid).toBeGreaterThan(0)
  }, fuzzTimeoutMs(5))

  it('loadMeshConfig: a consistent MeshConfig, or a one-line UsageError', async () => {
    const report = await runSurface({
      surface: 'config-load',
      arbitrary: fc.record({
        file: fileCaseArb,
        bootstrap: fc.option(fc.array(multiaddrText, { maxLength: 3 })),
        psk: fc.option(fc.constantFrom('/tmp/psk', '', 'a\nb')),
        envBootstraps: fc.option(fc.array(multiaddrText, { maxLength: 3 }).map(list => list.join(' '))),
        envPsk: fc.option(fc.constantFrom('/key/swarm/psk/1.0.0/', '/tmp/psk', '', 'x\ny'))
      }),
      examples: [
        ...FOUND_FILES.map(file => ({ file, bootstrap: null, psk: null, envBootstraps: null, envPsk: null })),
        // A --bootstrap with a line break is quoted as given.
        { file: { name: 'conf.json', content: '{}' }, bootstrap: ['/ip4/127.0.0.1/tcp/1\n/ip4/1.2.3.4/tcp/2'], psk: null, envBootstraps: null, envPsk: null }
      ],
      check: async c => {
        const { path, done } = materialize(c.file)
        const env: NodeJS.ProcessEnv = {}
        if (c.envBootstraps != null) env.P2P_BOOTSTRAPS = c.envBootstraps
        if (c.envPsk != null) env.P2P_PSK = c.envPsk
        try {
          const inputs: Array<[string, string | undefined]> = [['file path', path], ...(c.bootstrap ?? []).map((text): [string, string] => ['--bootstrap multiaddr', text]), ...(c.envBootstraps ?? '').split(/\s+/).map((text): [string, string] => ['P2P_BOOTSTRAPS multiaddr', text])]
          return expectUsage('loadMeshConfig', () => loadMeshConfig({ configfile: path, bootstrap: c.bootstrap ?? undefined, psk: c.psk ?? undefined }, env), { inputs, onResult: config => {
            if (config.softRttMs > config.hardRttMs) return fail(`soft ${config.softRttMs} > hard ${config.hardRttMs}`, 'loadMeshConfig: soft RTT above hard')
            if (config.bootstraps.some(ma => typeof ma.toString() !== 'string')) return fail('a bootstrap that is not a multiaddr', 'loadMeshConfig: bad bootstrap')
            if ((config.bootstraps.length === 0) !== (config.bootstrapSource === 'none')) return fail(`${config.bootstraps.length} bootstraps from ${config.bootstrapSource}`, 'loadMeshConfig: bootstrap source')
            for (const [name, record] of config.services) if (!SERVICE_NAME.test(name) || record.name !== name) return fail(`service ${JSON.stringify(name)} → ${JSON.stringify(record)}`, 'loadMeshConfig: bad service')
            return ok('valid')
          } })
        } finally {
          done()
        }
      },
      rss,
      heap: heapUsed,
      rssOf
    })
    expectClean(report)
    expect(report.notes.valid).toBeGreaterThan(0)
  }, fuzzTimeoutMs(5))
})

// ---- generated command lines ---------------------------------------------------------------

const PROXY_OPTIONS = {
  ...COMMON_OPTIONS,
  'registry-ttl': { type: 'string' },
  'response-timeout': { type: 'string' },
  'stream-per-request': { type: 'boolean' }
} as const

const FLAGS = ['--configfile', '--key', '--listen', '--announce', '--bootstrap', '--psk', '--metrics', '--log-level', '--help', '-h', '--registry-ttl', '--response-timeout', '--stream-per-request']
const argArb = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(...FLAGS) },
  { weight: 2, arbitrary: fc.tuple(fc.constantFrom(...FLAGS), fc.string({ maxLength: 8 })).map(([flag, value]) => `${flag}=${value}`) },
  { weight: 3, arbitrary: fc.oneof(fc.constantFrom('1234', '0', 'hello', '127.0.0.1:8080', '', '-', '--', '---', '-x', '-hx', '--no-help', '--Help', '--=x', '-=', '--help=yes', '--stream-per-request=1', '--unknown', '-1'), fc.string({ maxLength: 12 })) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 12 }).map(s => `--${s}`) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 12 }) }
)

describe('fuzz: command lines', () => {
  it('parseCommandLine: parsed values, or a one-line UsageError', async () => {
    const report = await runSurface({
      surface: 'cli-args',
      arbitrary: fc.array(argArb, { maxLength: 8 }),
      // An unknown option ending in a carriage return: parseCommandLine keeps what precedes
      // the first '\n' only, so the '\r' stayed in the message.
      examples: [['--x\r']],
      check: async argv => expectUsage('parseCommandLine', () => parseCommandLine(argv, PROXY_OPTIONS), { inputs: argv.map((arg): [string, string] => ['argument', arg]), onResult: ({ values, positionals }) => {
        if (!Array.isArray(positionals) || positionals.some(p => typeof p !== 'string')) return fail(`positionals ${JSON.stringify(positionals)}`, 'parseCommandLine: bad positionals')
        for (const [name, value] of Object.entries(values)) {
          const spec = (PROXY_OPTIONS as Record<string, { type: string, multiple?: boolean }>)[name]
          if (spec == null) return fail(`an option nobody declared: ${name}`, 'parseCommandLine: undeclared option')
          const values = spec.multiple === true ? value as unknown[] : [value]
          if (values.some(v => typeof v !== spec.type)) return fail(`--${name} is ${JSON.stringify(value)}, not a ${spec.type}`, 'parseCommandLine: wrong type')
        }
        return ok('parsed')
      } }),
      rss,
      heap: heapUsed,
      rssOf,
      runs: FUZZ_RUNS * 5
    })
    expectClean(report)
    expect(report.notes.parsed).toBeGreaterThan(0)
  }, fuzzTimeoutMs(1, FUZZ_RUNS * 5))

  /** Digits (short and very long), near-numbers, junk, text with line breaks. */
  const numberText = fc.oneof(
    { weight: 4, arbitrary: fc.nat({ max: 100_000 }).map(String) },
    { weight: 2, arbitrary: fc.stringMatching(/^\d{1,400}$/) },
    { weight: 2, arbitrary: fc.constantFrom('', ' ', '0', '00', '65535', '65536', '-1', '+1', '1.5', '1e3', '0x10', '１２', '٣', ' 80', '80 ', '80\n', '\n80', '8\n0', '9007199254740993', '2147483648', 'Infinity', 'NaN') },
    { weight: 1, arbitrary: fc.string({ maxLength: 10 }) },
    { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 10 }) }
  )

  it('parsePort, parsePositiveInt, parseMultiaddr, parseAppAddress: a valid value, or a one-line UsageError', async () => {
    const report = await runSurface({
      surface: 'cli-values',
      arbitrary: fc.oneof(
        fc.record({ fn: fc.constant('parsePort' as const), text: fc.option(numberText), fallback: fc.option(fc.nat({ max: 65535 })) }),
        fc.record({ fn: fc.constant('parsePositiveInt' as const), text: fc.option(numberText), fallback: fc.integer({ min: 1, max: 100_000 }) }),
        fc.record({ fn: fc.constant('parseMultiaddr' as const), text: multiaddrText }),
        fc.record({ fn: fc.constant('parseAppAddress' as const), text: fc.oneof(fc.tuple(fc.constantFrom('127.0.0.1', 'localhost', '[::1]', '', '[', 'a:b', 'a\nb'), numberText).map(([host, port]) => `${host}:${port}`), fc.string({ maxLength: 20 })) })
      ),
      examples: [
        // Each quoted its input with the line break in it.
        { fn: 'parsePort', text: '8\n0', fallback: null },
        { fn: 'parsePositiveInt', text: '8\n0', fallback: 1 },
        { fn: 'parseMultiaddr', text: '/ip4/127.0.0.1/tcp/1\n/ip4/1.2.3.4/tcp/2' },
        { fn: 'parseAppAddress', text: '127.0.0.1:\n80' },
        // Digits beyond 2^53 came back as another number (and 309 nines as Infinity).
        { fn: 'parsePositiveInt', text: '9007199254740993', fallback: 1 },
        // '[' was taken as a host, then its bracket stripped: an empty host.
        { fn: 'parseAppAddress', text: '[:0' }
      ],
      check: async c => {
        switch (c.fn) {
          case 'parsePort':
            return expectUsage('parsePort', () => parsePort(c.text ?? undefined, '--metrics', c.fallback ?? undefined), { inputs: [['text', c.text ?? undefined]], onResult: port => {
              if (!Number.isInteger(port) || port < 0 || port > 65535) return fail(`parsePort(${JSON.stringify(c.text)}) returned ${port}`, 'parsePort: not a port')
              if (c.text != null && port !== Number(c.text)) return fail(`parsePort(${JSON.stringify(c.text)}) returned ${port}`, 'parsePort: another number')
              return ok('valid')
            } })
          case 'parsePositiveInt':
            return expectUsage('parsePositiveInt', () => parsePositiveInt(c.text ?? undefined, '--response-timeout', c.fallback), { inputs: [['text', c.text ?? undefined]], onResult: value => {
              // A "positive whole number" the daemons use as a count or a duration: finite and exact.
              if (!Number.isSafeInteger(value) || value <= 0) return fail(`parsePositiveInt(${JSON.stringify(c.text)}) returned ${value}`, `parsePositiveInt: returned ${Number.isFinite(value) ? 'an inexact integer' : String(value)}`)
              return ok('valid')
            } })
          case 'parseMultiaddr':
            return expectUsage('parseMultiaddr', () => parseMultiaddr(c.text, '--bootstrap'), { inputs: [['text', c.text]], onResult: ma => {
              if (typeof ma.toString() !== 'string' || !ma.toString().startsWith('/')) return fail(`parseMultiaddr(${JSON.stringify(c.text)}) returned ${ma.toString()}`, 'parseMultiaddr: not a multiaddr')
              return ok('valid')
            } })
          case 'parseAppAddress':
            return expectUsage('parseAppAddress', () => parseAppAddress(c.text), { inputs: [['text', c.text]], onResult: address => {
              if (address.host === '' || !Number.isInteger(address.port) || address.port < 0 || address.port > 65535) return fail(`parseAppAddress(${JSON.stringify(c.text)}) returned ${JSON.stringify(address)}`, 'parseAppAddress: bad address')
              return ok('valid')
            } })
        }
      },
      rss,
      heap: heapUsed,
      rssOf,
      runs: FUZZ_RUNS * 5
    })
    expectClean(report)
    expect(report.notes.valid).toBeGreaterThan(0)
  }, fuzzTimeoutMs(1, FUZZ_RUNS * 5))
})
