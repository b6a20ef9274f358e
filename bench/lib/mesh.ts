import { spawnSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { request } from 'node:http'
import { join } from 'node:path'
import type { Features } from './context.js'
import { ALLOCATOR_BIN, PROXY_BIN, REPO_ROOT, TINY_APP } from './paths.js'
import { DAEMON_NODE_FLAGS } from '../../shared/node-flags.js'
import type { Child, ProcessSet } from './procs.js'
import { parseListeningLine, parseReadyLine } from '../../shared/ready.js'

/** What a hyphae daemon prints on its `ready` line (DESIGN.md). */
export interface DaemonReady {
  peerId: string
  multiaddrs: string[]
  http: string
  metrics?: number
}

export type Daemon = Child<DaemonReady>
export type App = Child<number>

export const SERVICE = 'tiny'

/** Which optional parts the built daemons have, read from their own --help. */
export function detectFeatures (): Features {
  const proxyHelp = spawnSync(process.execPath, [PROXY_BIN, '--help'], { encoding: 'utf8', timeout: 20_000 })
  const allocatorHelp = spawnSync(process.execPath, [ALLOCATOR_BIN, '--help'], { encoding: 'utf8', timeout: 20_000 })
  return {
    streamPerRequest: proxyHelp.status === 0 && proxyHelp.stdout.includes('--stream-per-request'),
    allocator: allocatorHelp.status === 0 && allocatorHelp.stdout.includes('usage')
  }
}

/** A config whose static registry holds the benchmark service. */
export function writeBenchConfig (dir: string): string {
  const file = join(dir, 'conf.json')
  writeFileSync(file, JSON.stringify({
    Perf: { SoftReq: { RTT: 100 }, HardReq: { RTT: 1000 } },
    Bootstraps: [],
    Services: { [SERVICE]: { command: `node ${TINY_APP}`, health: '/healthz' } },
    RegistryKeys: []
  }))
  return file
}

export async function startTinyApp (procs: ProcessSet, name = 'tiny-app'): Promise<App> {
  return await procs.start({
    name,
    command: process.execPath,
    args: [TINY_APP],
    env: { PORT: '0' },
    ready: parseListeningLine
  })
}

export interface ProxyOptions {
  name: string
  configFile: string
  bootstrap?: string
  /** Server mode: front this app. */
  server?: { service: string, appPort: number }
  extraArgs?: string[]
  /** Flags for node itself, e.g. --cpu-prof. */
  nodeArgs?: string[]
}

export async function startProxy (procs: ProcessSet, opts: ProxyOptions): Promise<Daemon> {
  const args = [
    ...DAEMON_NODE_FLAGS, ...(opts.nodeArgs ?? []), PROXY_BIN,
    '--configfile', opts.configFile,
    ...(opts.bootstrap != null ? ['--bootstrap', opts.bootstrap] : []),
    ...(opts.server != null ? ['--metrics', '0'] : []),
    ...(opts.extraArgs ?? []),
    '0',
    ...(opts.server != null ? [opts.server.service, `127.0.0.1:${opts.server.appPort}`] : [])
  ]
  return await procs.start({
    name: opts.name,
    command: process.execPath,
    args,
    cwd: REPO_ROOT,
    ready: line => parseReadyLine(line) as DaemonReady | undefined
  })
}

/** A whole small mesh: a bootstrap, the app, a server proxy in front of it, client proxies. */
export interface Mesh {
  bootstrap: Daemon
  app: App
  server: Daemon
  clients: Daemon[]
  stop: () => Promise<void>
}

export interface MeshOptions {
  procs: ProcessSet
  dir: string
  /** One client proxy per entry, with these extra arguments. */
  clients: Array<{ name: string, args?: string[], nodeArgs?: string[] }>
  /** Node flags for the server proxy (e.g. --cpu-prof). */
  serverNodeArgs?: string[]
}

export async function startMesh (opts: MeshOptions): Promise<Mesh> {
  const { procs } = opts
  const started: Array<Child<unknown>> = []
  const stop = async (): Promise<void> => {
    // SIGINT: the daemons shut down cleanly (and write --cpu-prof profiles on the way out).
    for (const child of started.reverse()) await child.stop('SIGINT', 10_000)
  }
  try {
    const configFile = writeBenchConfig(opts.dir)
    const bootstrap = await startProxy(procs, { name: 'bootstrap', configFile })
    started.push(bootstrap)
    const bootAddr = bootstrap.ready.multiaddrs[0]
    const app = await startTinyApp(procs)
    started.push(app)
    const server = await startProxy(procs, { name: 'server-proxy', configFile, bootstrap: bootAddr, server: { service: SERVICE, appPort: app.ready }, nodeArgs: opts.serverNodeArgs })
    started.push(server)
    const clients: Daemon[] = []
    for (const client of opts.clients) {
      const daemon = await startProxy(procs, { name: client.name, configFile, bootstrap: bootAddr, extraArgs: client.args, nodeArgs: client.nodeArgs })
      started.push(daemon)
      clients.push(daemon)
      await waitForRoute(`${daemon.ready.http}/${SERVICE}/`, 30_000)
    }
    return { bootstrap, app, server, clients, stop }
  } catch (err) {
    await stop()
    throw err
  }
}

/** GET a URL and resolve with status and body length; rejects on error or timeout. */
export async function httpGet (url: string, timeoutMs = 10_000): Promise<{ status: number, bytes: number }> {
  return await new Promise((resolve, reject) => {
    const req = request(url, { agent: false, timeout: timeoutMs }, res => {
      let bytes = 0
      res.on('data', (chunk: Buffer) => { bytes += chunk.length })
      res.on('end', () => { resolve({ status: res.statusCode ?? 0, bytes }) })
      res.on('error', reject)
    })
    req.on('timeout', () => { req.destroy(new Error(`GET ${url}: no answer within ${timeoutMs} ms`)) })
    req.on('error', reject)
    req.end()
  })
}

/** Polls until a GET through the mesh answers 200 (discovery done, stream pool warm). */
export async function waitForRoute (url: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  let last = ''
  while (Date.now() < deadline) {
    try {
      const { status } = await httpGet(url, 5000)
      if (status === 200) return
      last = `status ${status}`
    } catch (err) {
      last = (err as Error).message
    }
    await new Promise(resolve => setTimeout(resolve, 200))
  }
  throw new Error(`${url} did not answer 200 within ${timeoutMs} ms (last: ${last})`)
}
