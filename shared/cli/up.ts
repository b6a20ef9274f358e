import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { parseCommandLine, parseLogLevel, parsePort } from '../config.js'
import { UsageError } from '../errors.js'
import { ensureExampleImage, EXAMPLE_IMAGE } from '../example-image.js'
import { distFile } from '../paths.js'

export interface UpIo {
  out: (line: string) => void
  err: (line: string) => void
}

const ALLOCATOR_MAIN = distFile('allocator/main.js')
const PROXY_MAIN = distFile('proxy/main.js')
export const HELLO_MAIN = distFile('examples/hello/server.js')

const UP_OPTIONS = {
  port: { type: 'string' },
  runtime: { type: 'string' },
  'idle-timeout': { type: 'string' },
  'log-level': { type: 'string' },
  help: { type: 'boolean', short: 'h' }
} as const

export const UP_USAGE = `Usage: hyphae up [--port PORT] [--runtime process|docker] [--idle-timeout SECONDS] [--log-level LEVEL]

Runs a whole local mesh on this machine: an allocator (the bootstrap), a client proxy on
127.0.0.1:PORT (default 1234) and the example service 'hello', started on the first request
and culled when idle. Ctrl-C stops everything.

  --port PORT             client proxy port (default 1234)
  --runtime KIND          process (default) or docker (builds a local image of the example)
  --idle-timeout SECONDS  cull an idle instance after this long (default 60)
  --log-level LEVEL       the daemons' log level (default warn)`

interface Child {
  name: string
  proc: ChildProcess
  ready: { peerId: string, multiaddrs: string[], http: string }
  exited: Promise<number | null>
}

/** Spawns a daemon, adds it to `children` at once (so it is stopped whatever happens next), waits for `ready`. */
async function startChild (name: string, script: string, args: string[], children: Child[]): Promise<Child> {
  // The IPC channel is how a child learns that we died, even by SIGKILL (see runDaemon).
  const proc = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'inherit', 'ipc'] })
  const exited = new Promise<number | null>(resolve => {
    proc.once('exit', code => { resolve(code) })
    proc.once('error', () => { resolve(null) })
  })
  const child: Child = { name, proc, exited, ready: { peerId: '', multiaddrs: [], http: '' } }
  children.push(child)
  child.ready = await new Promise<Child['ready']>((resolve, reject) => {
    const lines = createInterface({ input: proc.stdout as NodeJS.ReadableStream })
    lines.on('line', line => {
      if (line.startsWith('ready ')) resolve(JSON.parse(line.slice(6)) as Child['ready'])
    })
    void exited.then(code => { reject(new Error(`${name} exited (code ${String(code)}) before it was ready`)) })
  })
  return child
}

async function stopChild (child: Child): Promise<void> {
  if (child.proc.exitCode !== null || child.proc.signalCode !== null) return
  child.proc.kill('SIGTERM')
  const killer = setTimeout(() => child.proc.kill('SIGKILL'), 10_000)
  await child.exited
  clearTimeout(killer)
}

/** `hyphae up`: the README's "run" command. */
export async function up (argv: string[], io: UpIo): Promise<number> {
  const { values, positionals } = parseCommandLine(argv, UP_OPTIONS)
  if (values.help === true) {
    io.out(UP_USAGE)
    return 0
  }
  if (positionals.length > 0) throw new UsageError(`unexpected argument '${positionals[0]}' (see --help)`)
  const port = parsePort(values.port, '--port', 1234)
  const runtime = values.runtime ?? 'process'
  if (runtime !== 'process' && runtime !== 'docker') throw new UsageError(`invalid --runtime '${runtime}': expected process or docker`)
  const logLevel = parseLogLevel(values['log-level'] ?? 'warn', {})
  const idleTimeout = values['idle-timeout'] ?? '60'
  if (!/^\d+$/.test(idleTimeout) || Number(idleTimeout) <= 0) throw new UsageError(`invalid --idle-timeout '${idleTimeout}': expected a positive whole number`)

  const hello = runtime === 'docker'
    ? { image: await ensureExampleImage(line => { io.err(`hyphae up: ${line}`) }), port: 8080, health: '/healthz' }
    : { command: `"${process.execPath}" "${HELLO_MAIN}"`, health: '/healthz' }
  const dir = await mkdtemp(join(tmpdir(), 'hyphae-up-'))
  const configFile = join(dir, 'conf.json')
  await writeFile(configFile, JSON.stringify({
    Perf: { SoftReq: { RTT: 100 }, HardReq: { RTT: 1000 } },
    Bootstraps: [],
    Services: { hello },
    RegistryKeys: []
  }, null, 2))

  const children: Child[] = []
  const stopAll = async (): Promise<void> => {
    for (const child of children.reverse()) await stopChild(child)
    await rm(dir, { recursive: true, force: true })
  }
  // Listening from the start: Ctrl-C while the mesh is still starting must stop it too.
  const signalled = new Promise<string>(resolve => {
    process.once('SIGINT', () => { resolve('SIGINT') })
    process.once('SIGTERM', () => { resolve('SIGTERM') })
  })
  const startup = (async () => {
    const common = ['--configfile', configFile, '--log-level', logLevel]
    const allocator = await startChild('allocator', ALLOCATOR_MAIN, [...common, '--runtime', runtime, '--metrics', '0', '--idle-timeout', idleTimeout], children)
    const proxy = await startChild('client proxy', PROXY_MAIN, [...common, '--bootstrap', allocator.ready.multiaddrs[0], String(port)], children)
    io.out(`hyphae up: a local mesh is running (${runtime} runtime${runtime === 'docker' ? `, image ${EXAMPLE_IMAGE}` : ''})`)
    io.out(`  allocator    ${allocator.ready.peerId}  metrics ${allocator.ready.http}/metrics`)
    io.out(`  client proxy ${proxy.ready.http}`)
    io.out('Try:')
    io.out(`  curl ${proxy.ready.http}/hello/`)
    io.out('The first request starts an instance of hello; it is culled after it sits idle. Ctrl-C stops everything.')
  })()
  const early = await Promise.race([startup.then(() => undefined), signalled]).catch(async (err: unknown) => {
    await stopAll()
    throw err
  })
  if (early != null) {
    io.out(`hyphae up: stopping (${early})`)
    await startup.catch(() => {})
    await stopAll()
    return 0
  }

  const reason = await Promise.race([
    signalled,
    ...children.map(async child => `${child.name} exited (code ${String(await child.exited)})`)
  ])
  io.out(`hyphae up: stopping (${reason})`)
  await stopAll()
  return reason.startsWith('SIG') ? 0 : 1
}
