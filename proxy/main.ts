#!/usr/bin/env -S node --max-semi-space-size=2
import '../shared/polyfill.js'
import { collectDefaultMetrics, Registry as MetricsRegistry } from 'prom-client'
import { COMMON_OPTIONS, option, optionsHelp, parseArgsOptions, parsers, readOptions } from '../shared/cli-options.js'
import { parseCommandLine, parsePort } from '../shared/config.js'
import { DEFAULT_REGISTRY_TTL_MS } from '../shared/registry/registry.js'
import { DEFAULT_HEALTH_INTERVAL_MS } from './advertiser.js'
import { DEFAULT_COLD_START_TIMEOUT_MS } from './allocations.js'
import { DEFAULT_SCALE_WINDOW_MS } from './autoscaler.js'
import { DEFAULT_RESPONSE_TIMEOUT_MS } from './ingress.js'
import { printReady, runDaemon, startMeshBase } from '../shared/daemon.js'
import { UsageError } from '../shared/errors.js'
import { PortUnavailableError } from '../shared/listen.js'
import { Announcer } from '../shared/announcer.js'
import { clientProxyCid } from '../shared/cids.js'
import { MetricsServer } from '../shared/metrics-server.js'
import { handleStatus, nodeFields, type NodeStatus } from '../shared/protocols/status.js'
import { parseAppAddress } from './address.js'
import { ClientProxy } from './client-proxy.js'
import { InstanceProxy } from './instance-proxy.js'

const OPTIONS = {
  'registry-ttl': option({ arg: 'SECONDS', help: 'how long a registry record is cached', default: DEFAULT_REGISTRY_TTL_MS, defaultText: String(DEFAULT_REGISTRY_TTL_MS / 1000), parse: parsers.secondsAsMs }),
  'response-timeout': option({ arg: 'MS', help: 'time allowed for an instance to answer', default: DEFAULT_RESPONSE_TIMEOUT_MS, parse: parsers.positiveInt }),
  'health-interval': option({ arg: 'MS', help: 'server mode: how often the app\'s health path is checked', default: DEFAULT_HEALTH_INTERVAL_MS, parse: parsers.positiveInt }),
  'scale-window': option({ arg: 'SECONDS', help: 'server mode: the window the request rate is measured over for autoscaling (autoscaling needs a targetRps)', default: DEFAULT_SCALE_WINDOW_MS, defaultText: String(DEFAULT_SCALE_WINDOW_MS / 1000), parse: parsers.secondsAsMs }),
  'stream-per-request': option({ help: 'open one libp2p stream per request instead of reusing pooled streams', parse: parsers.flag }),
  'cold-start-timeout': option({ arg: 'MS', help: 'how long requests wait for an instance to be started', default: DEFAULT_COLD_START_TIMEOUT_MS, parse: parsers.positiveInt }),
  ...COMMON_OPTIONS,
  metrics: { ...COMMON_OPTIONS.metrics, help: 'metrics on 127.0.0.1:PORT (/ idle seconds, /peers the peer cache, /status this proxy\'s status, /metrics Prometheus; 0: any free port)' }
}

const USAGE = `usage: hyphae-proxy [OPTIONS] PORT                  client mode
       hyphae-proxy [OPTIONS] PORT SERVICE ADDRESS  server mode (ADDRESS: host:port of the app)

Options:
${optionsHelp(OPTIONS)}`

runDaemon('hyphae-proxy', async () => {
  const parsed = parseCommandLine(process.argv.slice(2), parseArgsOptions(OPTIONS))
  const { positionals } = parsed
  const values = readOptions(OPTIONS, parsed.values)
  if (values.help === true) {
    process.stdout.write(`${USAGE}\n`)
    return undefined
  }
  if (positionals.length !== 1 && positionals.length !== 3) throw new UsageError(`expected PORT or PORT SERVICE ADDRESS (see --help), got ${positionals.length} arguments`)
  const port = parsePort(positionals[0], 'PORT')
  const server = positionals.length === 3 ? { service: positionals[1], app: parseAppAddress(positionals[2]) } : undefined
  const metricsPort = values.metrics
  const responseTimeoutMs = values['response-timeout']
  const healthIntervalMs = values['health-interval']
  const scaleWindowMs = values['scale-window']

  const base = await startMeshBase({ name: 'hyphae-proxy', options: parsed.values, registryTtlMs: values['registry-ttl'] })
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
    coldStartTimeoutMs: values['cold-start-timeout']
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
  const startedAt = performance.now()
  const status = (): NodeStatus => ({
    role: 'proxy',
    mode: instance != null ? 'server' : 'client',
    ...nodeFields(base.node, startedAt),
    instances: instance != null
      ? [{ service: instance.service, state: instance.advertised ? 'advertised' : 'starting', ageS: instance.ageS, relaunches: 0, peerId: base.node.peerId.toString(), stats: instance.stats() }]
      : [],
    services: client.cacheStatus()
  })
  const metricsServer = metricsPort != null
    ? new MetricsServer({
      port: metricsPort,
      registry: metrics,
      routes: {
        '/': () => ({ type: 'text', body: `${instance?.idleSeconds ?? 0}\n` }),
        '/peers': () => ({ type: 'json', body: JSON.stringify(client.peers(), null, 2) }),
        '/status': () => ({ type: 'json', body: JSON.stringify(status()) })
      }
    })
    : undefined
  const announcer = instance == null ? new Announcer({ node: base.node, cid: await clientProxyCid(), log }) : undefined
  const stop = async (): Promise<void> => {
    log.info('stopping')
    await announcer?.withdraw()
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
    await handleStatus(base.node, status)
    // A client proxy is no service's provider: it advertises itself so that `hyphae status`
    // finds it. Not awaited: ready does not wait on the DHT (the first of a mesh has no peers yet).
    announcer?.announce().catch(err => { log.debug({ err }, 'could not advertise the proxy yet; retrying') })
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
