import { spawn, type ChildProcess } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { createServer } from 'node:http'
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { COMMON_OPTIONS, optionsHelp, parsers } from '../shared/cli-options.js'
import { UsageError } from '../shared/errors.js'
import { parseCommand, type Io } from './command.js'
import { Progress } from './progress.js'
import { dockerAvailable, ensureExampleImage, EXAMPLE_IMAGE } from './example-image.js'
import { listenOnLoopback, PortUnavailableError } from '../shared/listen.js'
import { createKeyFile } from '../shared/identity.js'
import { daemonArgv } from '../shared/node-flags.js'
import { distFile } from '../shared/paths.js'
import { parseReadyLine, untilReady } from '../shared/ready.js'

const ALLOCATOR_MAIN = distFile('allocator/main.js')
const PROXY_MAIN = distFile('proxy/main.js')
export const HELLO_MAIN = distFile('examples/hello/server.js')
const TOYSTORE_MAIN = (service: string): string => distFile(`examples/toystore/${service}.js`)
const EXAMPLES = ['hello', 'toystore'] as const

const DEFAULT_PORT = 1234
const DEFAULT_IDLE_TIMEOUT_S = 60
const RUNTIMES = ['process', 'docker'] as const

// Not option(): it makes every default optional in the values' type, and these always have one.
const OPTIONS = {
  port: { arg: 'PORT', help: 'client proxy port (0: any free port)', default: DEFAULT_PORT, parse: parsers.port },
  runtime: { arg: 'KIND', help: 'process, or docker (builds a local image of the example)', default: RUNTIMES[0], parse: parsers.oneOf(RUNTIMES) },
  example: { arg: 'NAME', help: 'hello (one service), or toystore (frontend, catalog and order, calling each other through the mesh)', default: EXAMPLES[0], parse: parsers.oneOf(EXAMPLES) },
  'idle-timeout': { arg: 'SECONDS', help: 'cull an idle instance after this long', default: DEFAULT_IDLE_TIMEOUT_S, parse: parsers.positiveInt },
  // warn whatever $HYPHAE_LOG_LEVEL says: the daemons log to this terminal, around the lines that say what to try.
  'log-level': { ...COMMON_OPTIONS['log-level'], help: `the daemons' log level: ${COMMON_OPTIONS['log-level'].help}`, default: 'warn' as const, defaultText: undefined },
  help: COMMON_OPTIONS.help
}

const UP_USAGE = `Usage: hyphae up [OPTIONS]

Runs a whole local mesh on this machine: an allocator (the bootstrap), a client proxy on
127.0.0.1:PORT and the example service 'hello' (with --example toystore, also the toy store's
three services), started on the first request and culled when idle. Ctrl-C stops everything.

Options:
${optionsHelp(OPTIONS)}`

interface Child {
  name: string
  proc: ChildProcess
  ready: { peerId: string, multiaddrs: string[], http: string }
  exited: Promise<number | null>
}

/** A daemon that has not said `ready` in this long is stuck (a cold DHT join takes seconds at most). */
const READY_TIMEOUT_MS = 60_000

/** Spawns a daemon, adds it to `children` at once (so it is stopped whatever happens next), waits for `ready`. */
async function startChild (name: string, script: string, args: string[], children: Child[]): Promise<Child> {
  // The IPC channel is how a child learns that we died, even by SIGKILL (see runDaemon).
  const proc = spawn(process.execPath, daemonArgv(script, args), { stdio: ['ignore', 'pipe', 'inherit', 'ipc'] })
  const exited = new Promise<number | null>(resolve => {
    proc.once('exit', code => { resolve(code) })
    proc.once('error', () => { resolve(null) })
  })
  const child: Child = { name, proc, exited, ready: { peerId: '', multiaddrs: [], http: '' } }
  children.push(child)
  const lines = createInterface({ input: proc.stdout as NodeJS.ReadableStream })
  try {
    child.ready = await untilReady({ proc, lines, exited, isReady: line => parseReadyLine(line) as Child['ready'] | undefined, timeoutMs: READY_TIMEOUT_MS })
  } catch (err) {
    throw new Error(`${name} ${(err as Error).message}`, { cause: err })
  }
  return child
}

async function stopChild (child: Child): Promise<void> {
  if (child.proc.exitCode !== null || child.proc.signalCode !== null) return
  child.proc.kill('SIGTERM')
  const killer = setTimeout(() => child.proc.kill('SIGKILL'), 10_000)
  await child.exited
  clearTimeout(killer)
}

/** Fails early, naming --port, when the client proxy's port is taken (`hyphae up` run twice). */
async function checkPortFree (port: number): Promise<void> {
  if (port === 0) return
  const server = createServer()
  await listenOnLoopback(server, port, '--port')
  await new Promise<void>(resolve => { server.close(() => { resolve() }) })
}

const PARENT_POLL_MS = 1000
const SHELLS = new Set(['sh', 'dash', 'bash', 'ash', 'zsh', 'ksh', 'busybox'])

/** The parent of `pid` from /proc (Linux); undefined when unknown. */
function parentOf (pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // Fields after the command (which may hold spaces) start after the last ')'.
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
  } catch {
    return undefined
  }
}

function commandOf (pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim()
  } catch {
    return undefined
  }
}

/**
 * Calls `onGone` when npm, which started us, is gone; returns a function that stops watching.
 *
 * `npx hyphae up` (also `npm exec`, `npm run`) runs us as npm → `sh -c 'hyphae' up …` → us.
 * npm forwards SIGTERM and SIGINT to its own child only, that shell, and the shell does not
 * pass them on: dash dies of SIGTERM at once (and catches SIGINT, waiting for us). Then npm
 * exits too, and we, the daemons and the app instances ran on as orphans. Node cannot ask
 * the kernel for a signal when the parent dies (prctl PR_SET_PDEATHSIG), so we poll: when
 * we have another parent (ours died and we were reparented), or the shell npm started has
 * another parent (npm died, even by SIGKILL, and the shell lives on waiting for us), we
 * stop as on a signal. (A terminal's Ctrl-C signals the whole foreground process group, us
 * included, so it never depended on npm.) Only under npm: `nohup hyphae up &` from a shell
 * that then exits is meant to keep running.
 */
function watchNpmParent (env: NodeJS.ProcessEnv, onGone: (why: string) => void): () => void {
  if (env.npm_execpath == null && env.npm_lifecycle_event == null) return () => {}
  const parent = process.ppid
  const grandparent = SHELLS.has(commandOf(parent) ?? '') ? parentOf(parent) : undefined
  const timer = setInterval(() => {
    if (process.ppid !== parent) onGone('parent exited')
    else if (grandparent != null && parentOf(parent) !== grandparent) onGone('npm exited')
  }, PARENT_POLL_MS)
  timer.unref()
  return () => { clearInterval(timer) }
}

/**
 * The toy store's three tiers: processes, or containers of the example image (which runs the
 * tier its HYPHAE_SERVICE names). catalog and order each keep their data (stock, order log)
 * in their service's data dir on the host, so each runs as one instance.
 */
function toystoreServices (hello: { image?: string }): Record<string, unknown> {
  const service = (name: string, extra: Record<string, unknown> = {}): Record<string, unknown> => hello.image != null
    ? { image: hello.image, port: 8080, health: '/healthz', ...extra }
    : { command: `"${process.execPath}" "${TOYSTORE_MAIN(name)}"`, health: '/healthz', ...extra }
  return { frontend: service('frontend'), catalog: service('catalog', { maxInstances: 1 }), order: service('order', { maxInstances: 1 }) }
}

/** The example image, built when missing or stale; on a terminal the build shows as a wait. */
async function buildImage (io: Io): Promise<string> {
  const progress = new Progress({ line: io.err, terminal: io.errTerminal })
  try {
    return await ensureExampleImage(line => { progress.line(`hyphae up: ${line}`) })
  } finally {
    progress.close()
  }
}

/** `hyphae up`: the README's "run" command. */
export async function up (argv: string[], io: Io): Promise<number> {
  const { values, positionals } = parseCommand(argv, OPTIONS)
  if (values.help === true) {
    io.out(UP_USAGE)
    return 0
  }
  if (positionals.length > 0) throw new UsageError(`unexpected argument '${positionals[0]}' (see --help)`)
  const { port, runtime, example, 'log-level': logLevel } = values
  const idleTimeout = String(values['idle-timeout'])

  // The mistakes a user makes most with a demo command: one line, exit 2, nothing started.
  try {
    await checkPortFree(port)
  } catch (err) {
    if (!(err instanceof PortUnavailableError)) throw err
    io.err(`hyphae up: ${err.message}`)
    return 2
  }
  if (runtime === 'docker') {
    const engine = await dockerAvailable()
    if (!engine.ok) {
      io.err(`hyphae up: --runtime docker: ${engine.reason ?? 'no Docker Engine answers'}; start dockerd or use --runtime process`)
      return 2
    }
  }
  const hello = runtime === 'docker'
    ? { image: await buildImage(io), port: 8080, health: '/healthz' }
    : { command: `"${process.execPath}" "${HELLO_MAIN}"`, health: '/healthz' }
  const dir = await mkdtemp(join(tmpdir(), 'hyphae-up-'))
  // The allocator's data dir is inside: apps (run as nobody under root) pass through to their
  // services' data; 0711 lets them, without listing what is here.
  await chmod(dir, 0o711)
  const configFile = join(dir, 'conf.json')
  // A publisher key the allocator trusts, so records put with it run (no other key's do).
  const publisherKeyFile = join(dir, 'publisher.key')
  const publisher = peerIdFromPrivateKey(await createKeyFile(publisherKeyFile)).toString()
  await writeFile(configFile, JSON.stringify({
    Perf: { SoftReq: { RTT: 100 }, HardReq: { RTT: 1000 } },
    Bootstraps: [],
    Services: example === 'toystore' ? { hello, ...toystoreServices(hello) } : { hello },
    RegistryKeys: [publisher]
  }, null, 2))

  const children: Child[] = []
  let unwatch = (): void => {}
  const stopAll = async (): Promise<void> => {
    unwatch()
    for (const child of children.reverse()) await stopChild(child)
    await rm(dir, { recursive: true, force: true })
  }
  // Listening from the start: Ctrl-C while the mesh is still starting must stop it too.
  const signalled = new Promise<string>(resolve => {
    process.once('SIGINT', () => { resolve('SIGINT') })
    process.once('SIGTERM', () => { resolve('SIGTERM') })
    unwatch = watchNpmParent(io.env, why => { resolve(why) })
  })
  const startup = (async () => {
    const common = ['--configfile', configFile, '--log-level', logLevel]
    // Its state in our temp dir, removed with it: a demo mesh starts empty, and never takes
    // the lock on the per-user default a real allocator on this host may hold.
    const allocator = await startChild('allocator', ALLOCATOR_MAIN, [...common, '--runtime', runtime, '--metrics', '0', '--idle-timeout', idleTimeout, '--data-dir', join(dir, 'allocator')], children)
    const proxy = await startChild('client proxy', PROXY_MAIN, [...common, '--bootstrap', allocator.ready.multiaddrs[0], String(port)], children)
    io.out(`hyphae up: a local mesh is running (${runtime} runtime${runtime === 'docker' ? `, image ${EXAMPLE_IMAGE}` : ''})`)
    io.out(`  allocator    ${allocator.ready.peerId}  metrics ${allocator.ready.http}/metrics`)
    io.out(`  client proxy ${proxy.ready.http}`)
    io.out('Try:')
    if (example === 'toystore') {
      const store = `${proxy.ready.http}/frontend`
      io.out(`  curl ${store}/products/robot`)
      io.out(`  curl -X POST -H 'Content-Type: application/json' -d '{"name":"robot","quantity":2}' ${store}/orders`)
      io.out(`  curl ${store}/orders/1`)
      io.out(`  node ${distFile('examples/toystore/client.js')} --url ${store} --mode mix --requests 200`)
      io.out('The first request starts frontend, which starts catalog and order by calling them through its own proxy ($HYPHAE_PROXY). Ctrl-C stops everything.')
    } else {
      io.out(`  curl ${proxy.ready.http}/hello/`)
      io.out('The first request starts an instance of hello; it is culled after it sits idle. Ctrl-C stops everything.')
    }
    io.out('Publish a service of your own (signed with a key this mesh trusts):')
    io.out(`  hyphae registry put NAME --command 'CMD (listens on $PORT)' --key ${publisherKeyFile} --configfile ${configFile} --bootstrap ${allocator.ready.multiaddrs[0]}`)
    io.out('See the whole mesh, once or live in a browser:')
    io.out(`  hyphae status --configfile ${configFile} --bootstrap ${allocator.ready.multiaddrs[0]}`)
    io.out(`  hyphae dashboard --configfile ${configFile} --bootstrap ${allocator.ready.multiaddrs[0]}`)
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

  const { reason, failed } = await Promise.race([
    signalled.then(reason => ({ reason, failed: false })),
    ...children.map(async child => ({ reason: `${child.name} exited (code ${String(await child.exited)})`, failed: true }))
  ])
  io.out(`hyphae up: stopping (${reason})`)
  await stopAll()
  return failed ? 1 : 0
}
