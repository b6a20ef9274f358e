#!/usr/bin/env node
import '../shared/polyfill.js'
import { COMMON_OPTIONS, parseCommandLine, parsePort, parsePositiveInt } from '../shared/config.js'
import { printReady, runDaemon, startMeshBase } from '../shared/daemon.js'
import { UsageError } from '../shared/errors.js'
import { PortUnavailableError } from '../shared/listen.js'
import { parseAppAddress } from './address.js'
import { Proxy } from './proxy.js'

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
  const proxy = new Proxy({
    node: base.node,
    registry: base.registry,
    config: base.config,
    log: base.log,
    port,
    server: server != null ? { ...server, healthIntervalMs, scaleWindowMs } : undefined,
    metricsPort,
    responseTimeoutMs,
    streamPerRequest: values['stream-per-request'] === true,
    coldStartTimeoutMs: parsePositiveInt(values['cold-start-timeout'], '--cold-start-timeout', 30_000)
  })
  const stop = async (): Promise<void> => {
    base.log.info('stopping')
    await proxy.stop()
    await base.registry.stop()
    await base.node.stop()
  }
  try {
    await proxy.start()
    if (server != null) {
      base.log.info({ service: server.service, app: positionals[2] }, 'waiting for the app to answer its health path')
      await proxy.whenAdvertised()
    }
  } catch (err) {
    await stop().catch(() => {})
    // The metrics server names --metrics itself; a port in use without a flag is the ingress's.
    throw err instanceof PortUnavailableError && err.flag == null ? err.forFlag('PORT') : err
  }
  const http = `http://127.0.0.1:${proxy.httpPort}`
  base.log.info({ http, peerId: base.node.peerId.toString(), mode: server != null ? 'server' : 'client', service: server?.service }, 'proxy ready')
  printReady({
    peerId: base.node.peerId.toString(),
    multiaddrs: base.node.getMultiaddrs().map(ma => ma.toString()),
    http,
    mode: server != null ? 'server' : 'client',
    ...(server != null ? { service: server.service } : {}),
    ...(proxy.metricsPort != null ? { metrics: proxy.metricsPort } : {})
  })
  return { stop }
})
