#!/usr/bin/env node
import '../shared/polyfill.js'
import { collectDefaultMetrics, Registry as MetricsRegistry } from 'prom-client'
import { COMMON_OPTIONS, parseCommandLine, parsePort, parsePositiveInt } from '../shared/config.js'
import { printReady, runDaemon, startMeshBase } from '../shared/daemon.js'
import { UsageError } from '../shared/errors.js'
import { PortUnavailableError } from '../shared/listen.js'
import { MetricsServer } from '../shared/metrics-server.js'
import { parseAppAddress } from './address.js'
import { ClientProxy } from './client-proxy.js'
import { InstanceProxy } from './instance-proxy.js'

const USAGE = `usage: hyphae-proxy [OPTIONS] PORT                  client mode
       hyphae-proxy [OPTIONS] PORT SERVICE ADDRESS  server mode (ADDRESS: host:port of the app)

Options:
  --configfile PATH       config file (default: conf/conf.json of the package)
  --key FILE              identity key, created (0600) when missing
  --listen MULTIADDR      libp2p listen address (repeatable; default /ip4/127.0.0.1/tcp/0)
  --announce MULTIADDR    address others should dial (repeatable)
  --bootstrap MULTIADDR   bootstrap peer (repeatable; else config Bootstraps, else $P2P_BOOTSTRAPS)
  --psk FILE              private network key (else $P2P_PSK)
  --metrics PORT          metrics on 127.0.0.1:PORT (/ idle seconds, /metrics Prometheus)
  --registry-ttl SECONDS  how long a registry record is cached (default 60)
  --response-timeout MS   time allowed for an instance to answer (default 30000)
  --health-interval MS    server mode: how often the app's health path is checked (default 1000)
  --scale-window SECONDS  server mode: the window the request rate is measured over for
                          autoscaling (default 120; autoscaling needs a targetRps)
  --stream-per-request    open one libp2p stream per request instead of reusing pooled streams
  --cold-start-timeout MS how long requests wait for an instance to be started (default 30000)
  --log-level LEVEL       fatal, error, warn, info (default), debug, trace, silent
  -h, --help              this text`

runDaemon('hyphae-proxy', async () => {
  const { values, positionals } = parseCommandLine(process.argv.slice(2), {
    ...COMMON_OPTIONS,
    'registry-ttl': { type: 'string' },
    'response-timeout': { type: 'string' },
    'health-interval': { type: 'string' },
    'scale-window': { type: 'string' },
    'stream-per-request': { type: 'boolean' },
    'cold-start-timeout': { type: 'string' }
  })
  if (values.help === true) {
    process.stdout.write(`${USAGE}\n`)
    return undefined
  }
  if (positionals.length !== 1 && positionals.length !== 3) throw new UsageError(`expected PORT or PORT SERVICE ADDRESS (see --help), got ${positionals.length} arguments`)
  const port = parsePort(positionals[0], 'PORT')
  const server = positionals.length === 3 ? { service: positionals[1], app: parseAppAddress(positionals[2]) } : undefined
  const metricsPort = values.metrics != null ? parsePort(values.metrics, '--metrics') : undefined
  const registryTtlMs = parsePositiveInt(values['registry-ttl'], '--registry-ttl', 60) * 1000
  const responseTimeoutMs = parsePositiveInt(values['response-timeout'], '--response-timeout', 30_000)
  const healthIntervalMs = parsePositiveInt(values['health-interval'], '--health-interval', 1000)
  const scaleWindowMs = parsePositiveInt(values['scale-window'], '--scale-window', 120) * 1000

  const base = await startMeshBase({ name: 'hyphae-proxy', options: values, registryTtlMs })
  const log = base.log.child({ component: 'proxy' })
  const metrics = new MetricsRegistry()
  collectDefaultMetrics({ register: metrics, prefix: 'hyphae_proxy_' })
  const client = new ClientProxy({
    node: base.node,
    registry: base.registry,
    log,
    metrics,
    defaults: { softRttMs: base.config.softRttMs, hardRttMs: base.config.hardRttMs },
    port,
    responseTimeoutMs,
    streamPerRequest: values['stream-per-request'] === true,
    coldStartTimeoutMs: parsePositiveInt(values['cold-start-timeout'], '--cold-start-timeout', 30_000)
  })
  const instance = server != null
    ? new InstanceProxy({
      node: base.node,
      registry: base.registry,
      log: base.log.child({ component: 'instance' }),
      metrics,
      ...server,
      defaultTargetRps: base.config.targetRps,
      defaultHardRttMs: base.config.hardRttMs,
      healthIntervalMs,
      scaleWindowMs
    })
    : undefined
  const metricsServer = metricsPort != null
    ? new MetricsServer({
      port: metricsPort,
      registry: metrics,
      routes: {
        '/': () => ({ type: 'text', body: `${instance?.idleSeconds ?? 0}\n` }),
        '/peers': () => ({ type: 'json', body: JSON.stringify(client.peers(), null, 2) })
      }
    })
    : undefined
  const stop = async (): Promise<void> => {
    log.info('stopping')
    // Stop advertising and drain the instance first, so clients stop choosing it.
    await instance?.stop()
    await client.stop()
    await metricsServer?.stop()
    await base.registry.stop()
    await base.node.stop()
  }
  let metricsPortBound: number | undefined
  try {
    await instance?.start()
    await client.start()
    metricsPortBound = await metricsServer?.start()
    if (server != null) {
      log.info({ service: server.service, app: positionals[2] }, 'waiting for the app to answer its health path')
      await instance?.whenAdvertised()
    }
  } catch (err) {
    await stop().catch(() => {})
    // The metrics server names --metrics itself; a port in use without a flag is the ingress's.
    throw err instanceof PortUnavailableError && err.flag == null ? err.forFlag('PORT') : err
  }
  const http = `http://127.0.0.1:${client.httpPort}`
  log.info({ http, peerId: base.node.peerId.toString(), mode: server != null ? 'server' : 'client', service: server?.service }, 'proxy ready')
  printReady({
    peerId: base.node.peerId.toString(),
    multiaddrs: base.node.getMultiaddrs().map(ma => ma.toString()),
    http,
    mode: server != null ? 'server' : 'client',
    ...(server != null ? { service: server.service } : {}),
    ...(metricsPortBound != null ? { metrics: metricsPortBound } : {})
  })
  return { stop }
})
