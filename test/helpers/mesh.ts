import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { parseListeningLine } from '../../shared/ready.js'
import { REPO_ROOT, startDaemon, startProcess, type Daemon, type StartedProcess } from './daemon.js'
import { LatencyRelay } from './latency-relay.js'

export const HELLO_SCRIPT = resolve(REPO_ROOT, 'dist/examples/hello/server.js')

/** A scratch directory with a config file; `cleanup()` removes it. */
export interface TestConfig {
  dir: string
  file: string
  cleanup: () => Promise<void>
}

export async function writeTestConfig (services: Record<string, unknown>, perf = { soft: 100, hard: 1000 }, registryKeys: string[] = []): Promise<TestConfig> {
  const dir = await mkdtemp(join(tmpdir(), 'hyphae-test-'))
  const file = join(dir, 'conf.json')
  await writeFile(file, JSON.stringify({
    Perf: { SoftReq: { RTT: perf.soft }, HardReq: { RTT: perf.hard } },
    Bootstraps: [],
    Services: services,
    RegistryKeys: registryKeys
  }))
  return { dir, file, cleanup: async () => { await rm(dir, { recursive: true, force: true }) } }
}

export type App = StartedProcess<number> & { port: number }

/** The example app on an ephemeral port. */
export async function startHelloApp (instance?: string): Promise<App> {
  const app = await startProcess(HELLO_SCRIPT, [], {
    env: { PORT: '0', ...(instance != null ? { INSTANCE: instance } : {}) },
    isReady: parseListeningLine
  })
  return Object.assign(app, { port: app.ready })
}

/**
 * A free TCP port on 127.0.0.1 (for daemons whose address must be known before they start).
 * Drawn from below the kernel's ephemeral range: a port handed out by `listen(0)` and closed
 * again can be taken by any outgoing connection or `listen(0)` in a parallel test before the
 * daemon binds it (CI saw "127.0.0.1:P is in use"). Below the range, only another draw here
 * can collide, and the bind check catches what is already taken.
 */
export async function freePort (): Promise<number> {
  const LOW = 20_000
  const HIGH = 32_000
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = LOW + Math.floor(Math.random() * (HIGH - LOW))
    const server = createServer()
    const bound = await new Promise<boolean>(resolve => {
      server.once('error', () => { resolve(false) })
      server.listen(port, '127.0.0.1', () => { resolve(true) })
    })
    if (bound) {
      await new Promise<void>(resolve => server.close(() => { resolve() }))
      return port
    }
  }
  throw new Error(`no free port in ${LOW}-${HIGH} after 50 tries`)
}

export function bootstrapAddr (daemon: Daemon): string {
  return daemon.ready.multiaddrs[0]
}

export async function startClientProxy (config: TestConfig, bootstrap: Daemon | undefined, extra: string[] = []): Promise<Daemon> {
  return await startDaemon('hyphae-proxy', ['--configfile', config.file, ...(bootstrap != null ? ['--bootstrap', bootstrapAddr(bootstrap)] : []), ...extra, '0'])
}

export async function startServerProxy (config: TestConfig, bootstrap: Daemon, service: string, appPort: number, extra: string[] = []): Promise<Daemon> {
  return await startDaemon('hyphae-proxy', ['--configfile', config.file, '--bootstrap', bootstrapAddr(bootstrap), '--metrics', '0', ...extra, '0', service, `127.0.0.1:${appPort}`])
}

/** Resident set size of a process in bytes, from /proc. */
export async function rssOf (pid: number): Promise<number> {
  const { readFile } = await import('node:fs/promises')
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  const match = /VmRSS:\s+(\d+) kB/.exec(status)
  if (match == null) throw new Error(`no VmRSS for ${pid}`)
  return Number(match[1]) * 1024
}

/** Every process below `pid` (children, grandchildren, …), from /proc. */
export async function descendantsOf (pid: number): Promise<number[]> {
  const { readdir, readFile } = await import('node:fs/promises')
  const parents = new Map<number, number>()
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const stat = await readFile(`/proc/${entry}/stat`, 'utf8')
      // Fields after the command (which may hold spaces) start after the last ')'.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      parents.set(Number(entry), Number(fields[1]))
    } catch {
      // The process ended while we looked.
    }
  }
  const out: number[] = []
  const queue = [pid]
  while (queue.length > 0) {
    const parent = queue.shift() as number
    for (const [child, ppid] of parents) {
      if (ppid === parent) {
        out.push(child)
        queue.push(child)
      }
    }
  }
  return out
}

export function isAlive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/** A counter's value in Prometheus text, 0 when absent. */
export function metricValue (text: string, name: string, labels: Record<string, string> = {}): number {
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue
    const match = /^([a-z_:]+)(\{([^}]*)\})? ([0-9.e+-]+)$/.exec(line)
    if (match == null || match[1] !== name) continue
    const have = Object.fromEntries((match[3] ?? '').split(',').filter(p => p !== '').map(p => {
      const [k, v] = p.split('=')
      return [k, v.replace(/^"|"$/g, '')]
    }))
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(match[4])
  }
  return 0
}

export interface DelayedInstance {
  app: App
  proxy: Daemon
  relay: LatencyRelay
}

/**
 * An instance whose every connection goes through a chunk-delaying relay: its server proxy
 * listens on a port only the relay knows and announces only the relay's address. Start the
 * client proxy after it, so that the client dials the instance (through the relay) and not
 * the other way round.
 */
export async function startDelayedInstance (config: TestConfig, bootstrap: Daemon, service: string, name: string, oneWayDelayMs: number): Promise<DelayedInstance> {
  const app = await startHelloApp(name)
  const listenPort = await freePort()
  const relay = new LatencyRelay({ target: { host: '127.0.0.1', port: listenPort }, oneWayDelayMs })
  const relayPort = await relay.start()
  const proxy = await startServerProxy(config, bootstrap, service, app.port, ['--listen', `/ip4/127.0.0.1/tcp/${listenPort}`, '--announce', `/ip4/127.0.0.1/tcp/${relayPort}`])
  return { app, proxy, relay }
}
