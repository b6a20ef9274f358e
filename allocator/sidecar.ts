import { spawn } from 'node:child_process'
import { request } from 'node:http'
import { createInterface } from 'node:readline'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import { Registry as MetricsRegistry } from 'prom-client'
import { InstanceProxy } from '../proxy/instance-proxy.js'
import type { RecordSource } from '../shared/registry/registry.js'
import type { MeshConfig } from '../shared/config.js'
import { createMeshNode, dialBootstraps, waitForRoutingTable } from '../shared/node.js'
import { raceSignal } from '../shared/abort.js'
import { daemonArgv } from '../shared/node-flags.js'
import { distFile } from '../shared/paths.js'
import { MAX_STATUS_BYTES, type NodeStatus } from '../shared/protocols/status.js'
import { parseReadyLine, untilReady, type ReadyLine } from '../shared/ready.js'
import { registryDhtInit } from '../shared/registry/dht-validation.js'
import type { Logger } from '../shared/log.js'
import type { Sidecar } from './supervisor.js'


export interface ProcessSidecarsInit {
  log: Logger
  /** Where the sidecar joins the mesh: this allocator's own addresses. */
  bootstraps: () => Multiaddr[]
  /** The allocator's listen addresses: the sidecar listens on the same interfaces. */
  listen: string[]
  configFile?: string
  pskFile?: string
  logLevel?: string
  healthIntervalMs?: number
  /** The autoscaling window of each sidecar (`--scale-window`). */
  scaleWindowMs?: number
  readyTimeoutMs?: number
}

const PROXY_MAIN = distFile('proxy/main.js')
const KILL_AFTER_MS = 5000

/** Same interfaces as the allocator, any free port: a LAN allocator gets LAN instances. */
function sidecarListen (listen: string[]): string[] {
  const out = new Set<string>()
  for (const ma of listen) out.add(ma.replace(/\/tcp\/\d+/, '/tcp/0'))
  return out.size > 0 ? [...out] : ['/ip4/127.0.0.1/tcp/0']
}

/**
 * Starts `hyphae-proxy` in server mode beside an app instance and resolves once it printed
 * `ready` (the proxy prints it only after it has advertised the instance).
 */
export class ProcessSidecars {
  constructor (private readonly init: ProcessSidecarsInit) {}

  async start (service: string, app: { host: string, port: number }, signal?: AbortSignal): Promise<Sidecar> {
    const { init } = this
    const args = [
      ...(init.configFile != null ? ['--configfile', init.configFile] : []),
      ...(init.pskFile != null ? ['--psk', init.pskFile] : []),
      ...init.bootstraps().flatMap(ma => ['--bootstrap', ma.toString()]),
      ...sidecarListen(init.listen).flatMap(ma => ['--listen', ma]),
      '--metrics', '0',
      '--health-interval', String(init.healthIntervalMs ?? 1000),
      ...(init.scaleWindowMs != null ? ['--scale-window', String(Math.ceil(init.scaleWindowMs / 1000))] : []),
      '--log-level', init.logLevel ?? 'info',
      '0', service, `${app.host}:${app.port}`
    ]
    // The IPC channel stops the sidecar should the allocator die, even by SIGKILL (see runDaemon).
    const child = spawn(process.execPath, daemonArgv(PROXY_MAIN, args), { stdio: ['ignore', 'pipe', 'inherit', 'ipc'] })
    const exited = new Promise<number | null>(resolve => {
      child.once('exit', code => { resolve(code) })
      child.once('error', () => { resolve(null) })
    })
    const stop = async (): Promise<void> => {
      if (child.exitCode !== null || child.signalCode !== null) return
      child.kill('SIGTERM')
      const killer = setTimeout(() => child.kill('SIGKILL'), KILL_AFTER_MS)
      await exited
      clearTimeout(killer)
    }

    const timeoutMs = init.readyTimeoutMs ?? 20_000
    const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream })
    let ready: ReadyLine & { metrics: number }
    try {
      ready = await raceSignal(untilReady({ proc: child, lines, exited, isReady: line => parseReadyLine(line) as typeof ready | undefined, timeoutMs }), signal)
    } catch (err) {
      void stop()
      throw new Error(`the proxy for ${service} ${(err as Error).message}`, { cause: err })
    }
    init.log.debug({ service, peer: ready.peerId, pid: child.pid }, 'sidecar proxy ready')
    return {
      peerId: ready.peerId,
      multiaddrs: ready.multiaddrs,
      idle: async timeoutMs => {
        const text = (await fetchLocal(ready.metrics, '/', timeoutMs, 64))?.trim()
        return text != null && /^\d+$/.test(text) ? Number(text) : undefined
      },
      stats: async timeoutMs => {
        const text = await fetchLocal(ready.metrics, '/status', timeoutMs, MAX_STATUS_BYTES)
        try {
          return text != null ? (JSON.parse(text) as NodeStatus).instances[0]?.stats : undefined
        } catch {
          return undefined
        }
      },
      stop,
      exited
    }
  }
}

/** The body of a 200 answer from the sidecar's metrics server (at most MAX_BYTES), or undefined. */
async function fetchLocal (metricsPort: number, path: string, timeoutMs: number, maxBytes: number): Promise<string | undefined> {
  return await new Promise<string | undefined>(resolve => {
    const req = request({ host: '127.0.0.1', port: metricsPort, path, method: 'GET', agent: false, timeout: timeoutMs }, res => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => {
        body += chunk
        if (body.length > maxBytes) req.destroy(new Error('answer too long'))
      })
      res.on('end', () => { resolve(res.statusCode === 200 ? body : undefined) })
      res.on('error', () => { resolve(undefined) })
    })
    req.on('timeout', () => { req.destroy(new Error('timeout')) })
    req.on('error', () => { resolve(undefined) })
    req.end()
  })
}

export interface InProcessSidecarsInit {
  log: Logger
  config: MeshConfig
  bootstraps: () => Multiaddr[]
  listen: string[]
  psk?: Uint8Array
  /** The record each instance serves, as the allocator resolved and validated it. */
  records: RecordSource
  healthIntervalMs?: number
  /** The autoscaling window of each sidecar. */
  scaleWindowMs?: number
}

/**
 * How long a new instance's reply waits for its provider record to be put once it is healthy:
 * normally tens of ms; a hung DHT peer would hold it for seconds (see Advertiser).
 */
const ADVERTISE_WAIT_MS = 1500

/**
 * Server-mode proxies inside the allocator's process, each with its own libp2p node and peer
 * ID, so the mesh sees one provider per instance as with a separate `hyphae-proxy`. A cold
 * start then costs a node start (~50 ms), not a Node.js process start (~1.2 s of module
 * loading here), and each proxy costs a few MB instead of ~70 MB.
 */
export class InProcessSidecars {
  constructor (private readonly init: InProcessSidecarsInit) {}

  async start (service: string, app: { host: string, port: number }, signal?: AbortSignal): Promise<Sidecar> {
    const { init } = this
    const node = await createMeshNode({
      privateKey: await generateKeyPair('Ed25519'),
      listen: sidecarListen(init.listen).map(text => multiaddr(text)),
      psk: init.psk,
      // Instances need the DHT only to advertise themselves. Serving it from every instance
      // node in this one process made each new instance join (and be queried by) all the
      // others on this event loop: cold starts slowed from ~0.5 s to ~3.5 s over ten instances.
      dhtClientMode: true,
      ...registryDhtInit(init.config.registryKeys)
    })
    let proxy: InstanceProxy | undefined
    const stopNode = async (): Promise<void> => {
      await proxy?.stop()
      await node.stop()
    }
    try {
      await node.start()
      await dialBootstraps(node, init.bootstraps(), init.log, signal)
      await waitForRoutingTable(node, 5000)
      proxy = new InstanceProxy({
        node,
        registry: init.records,
        log: init.log.child({ sidecar: node.peerId.toString() }),
        // Its own registry: no endpoint reads it yet, and it goes with the instance.
        metrics: new MetricsRegistry(),
        service,
        app,
        defaultTargetRps: init.config.targetRps,
        defaultHardRttMs: init.config.hardRttMs,
        healthIntervalMs: init.healthIntervalMs,
        scaleWindowMs: init.scaleWindowMs
      })
      await proxy.start()
      await raceSignal(proxy.whenAdvertised(ADVERTISE_WAIT_MS), signal)
    } catch (err) {
      await stopNode().catch(() => {})
      throw err
    }
    const instance = proxy
    const exited = Promise.withResolvers<void>()
    return {
      peerId: node.peerId.toString(),
      multiaddrs: node.getMultiaddrs().map(ma => ma.toString()),
      // Not rounded to whole seconds: an allocator may cull after less than one.
      idle: async () => instance.idleMs / 1000,
      stats: async () => instance.stats(),
      stop: async () => {
        await stopNode()
        exited.resolve()
      },
      exited: exited.promise
    }
  }
}
