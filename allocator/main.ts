#!/usr/bin/env -S node --max-semi-space-size=2
import '../shared/polyfill.js'
import { COMMON_OPTIONS, option, optionsHelp, parseArgsOptions, parsers, readOptions } from '../shared/cli-options.js'
import { parseCommandLine } from '../shared/config.js'
import { DEFAULT_SCALE_WINDOW_MS } from '../proxy/autoscaler.js'
import { printReady, runDaemon, startMeshBase } from '../shared/daemon.js'
import { defaultDataDir, openDataDir } from '../shared/data-dir.js'
import { UsageError } from '../shared/errors.js'
import { MetricsServer } from '../shared/metrics-server.js'
import { join } from 'node:path'
import { collectDefaultMetrics, Registry as MetricsRegistry } from 'prom-client'
import { ClientProxy } from '../proxy/client-proxy.js'
import { Allocator, DEFAULT_MAX_INSTANCES } from './allocator.js'
import { SUPERVISOR_DEFAULTS } from './supervisor.js'
import { chooseRuntime } from './runtimes.js'
import { InProcessSidecars, ProcessSidecars } from './sidecar.js'

/** The allocator's metrics port: a well-known one, so that Prometheus finds every allocator on the same port. */
const DEFAULT_METRICS_PORT = 9101
const RUNTIMES = ['auto', 'docker', 'process'] as const
const SIDECARS = ['in-process', 'process'] as const

const OPTIONS = {
  runtime: option({ arg: 'KIND', help: 'docker, process, or auto', default: 'auto', defaultText: 'auto: docker when an engine answers, else process', parse: parsers.oneOf(RUNTIMES) }),
  'run-as': option({ arg: 'USER', help: 'user (name or uid) process apps run as; never root', defaultText: 'nobody when the allocator runs as root, else the allocator\'s own user', parse: parsers.text }),
  'max-instances': option({ arg: 'N', help: 'most instances at once', default: DEFAULT_MAX_INSTANCES, parse: parsers.positiveInt }),
  'idle-timeout': option({ arg: 'SECONDS', help: 'stop an instance idle this long', default: SUPERVISOR_DEFAULTS.idleTimeoutS, parse: parsers.positiveInt }),
  'health-interval': option({ arg: 'MS', help: 'how often each instance\'s health path is checked', default: SUPERVISOR_DEFAULTS.healthIntervalMs, parse: parsers.positiveInt }),
  'unhealthy-after': option({ arg: 'N', help: 'failed checks in a row before a relaunch', default: SUPERVISOR_DEFAULTS.unhealthyAfter, parse: parsers.positiveInt }),
  'healthy-after': option({ arg: 'N', help: 'passing checks before a relaunched instance counts as healthy', default: SUPERVISOR_DEFAULTS.healthyAfter, parse: parsers.positiveInt }),
  'start-timeout': option({ arg: 'MS', help: 'time for an instance to become healthy', default: SUPERVISOR_DEFAULTS.startTimeoutMs, parse: parsers.positiveInt }),
  'scale-window': option({ arg: 'SECONDS', help: 'the window each instance\'s proxy measures its request rate over, for autoscaling', default: DEFAULT_SCALE_WINDOW_MS, defaultText: String(DEFAULT_SCALE_WINDOW_MS / 1000), parse: parsers.secondsAsMs }),
  sidecar: option({ arg: 'KIND', help: 'where each instance\'s server proxy runs: in-process (a libp2p node of its own inside the allocator) or process (a hyphae-proxy each)', default: 'in-process', parse: parsers.oneOf(SIDECARS) }),
  'data-dir': option({ arg: 'DIR', help: 'DHT records, peer store and identity key (DIR/key) kept here across restarts; one allocator per DIR', defaultText: '$XDG_STATE_HOME/hyphae/allocator, else /var/lib/hyphae/allocator for root, else ~/.local/state/hyphae/allocator', parse: parsers.text }),
  ...COMMON_OPTIONS,
  key: { ...COMMON_OPTIONS.key, defaultText: 'DIR/key of --data-dir' },
  metrics: { ...COMMON_OPTIONS.metrics, help: 'Prometheus metrics on 127.0.0.1:PORT (/instances the instances; 0: any free port)', default: DEFAULT_METRICS_PORT }
}

const USAGE = `usage: hyphae-allocator [OPTIONS]

Starts, watches, relaunches and culls instances of services on this host, on request from
the mesh, as their signed registry records describe.

Options:
${optionsHelp(OPTIONS)}`

runDaemon('hyphae-allocator', async () => {
  const parsed = parseCommandLine(process.argv.slice(2), parseArgsOptions(OPTIONS))
  const { positionals } = parsed
  const values = readOptions(OPTIONS, parsed.values)
  if (values.help === true) {
    process.stdout.write(`${USAGE}\n`)
    return undefined
  }
  if (positionals.length > 0) throw new UsageError(`unexpected argument '${positionals[0]}' (see --help)`)
  const runtimeKind = values.runtime
  const sidecarKind = values.sidecar
  const metricsPort = values.metrics
  const scaleWindowMs = values['scale-window']
  const settings = {
    maxInstances: values['max-instances'],
    idleTimeoutS: values['idle-timeout'],
    healthIntervalMs: values['health-interval'],
    unhealthyAfter: values['unhealthy-after'],
    healthyAfter: values['healthy-after'],
    startTimeoutMs: values['start-timeout']
  }

  if (values['data-dir'] === '') throw new UsageError('invalid --data-dir \'\': expected a directory')
  const data = await openDataDir(values['data-dir'] ?? defaultDataDir())
  const base = await startMeshBase({ name: 'hyphae-allocator', options: parsed.values, datastore: data.datastore, defaultKeyFile: data.keyFile })
    .catch(async (err: unknown) => { await data.datastore.close().catch(() => {}); throw err })
  const { node } = base
  const log = base.log.child({ component: 'allocator' })
  const stopBase = async (): Promise<void> => {
    await base.registry.stop()
    await node.stop()
    await data.datastore.close()
  }
  let allocator: Allocator | undefined
  let doors: ClientProxy | undefined
  let metrics: MetricsServer | undefined
  try {
    const runtime = await chooseRuntime(runtimeKind, base.log.child({ component: 'runtime' }), { runAs: values['run-as'], dataRoot: join(data.dir, 'services') })
    const listen = values.listen ?? ['/ip4/127.0.0.1/tcp/0']
    const bootstraps = (): ReturnType<typeof node.getMultiaddrs> => node.getMultiaddrs()
    const sidecars = sidecarKind === 'process'
      ? new ProcessSidecars({ log: base.log.child({ component: 'sidecar' }), bootstraps, listen, configFile: values.configfile, pskFile: values.psk, logLevel: values['log-level'], healthIntervalMs: settings.healthIntervalMs, scaleWindowMs })
      : new InProcessSidecars({ log: base.log.child({ component: 'sidecar' }), bootstraps, listen, config: base.config, psk: base.psk, records: base.registry, healthIntervalMs: settings.healthIntervalMs, scaleWindowMs })
    const metricsRegistry = new MetricsRegistry()
    collectDefaultMetrics({ register: metricsRegistry, prefix: 'hyphae_allocator_' })
    // Every instance's door into the mesh (HYPHAE_PROXY): one routing core on this node, one
    // ingress per instance, and this allocator asked first, in-process, for cold starts.
    doors = new ClientProxy({
      node,
      registry: base.registry,
      log: base.log.child({ component: 'doors' }),
      metrics: metricsRegistry,
      defaults: { softRttMs: base.config.softRttMs, hardRttMs: base.config.hardRttMs },
      localAllocator: async (service, signal) => allocator != null
        ? await allocator.allocateLocally(service, signal)
        : { ok: false, error: { code: 'shutting_down', message: 'the allocator is not running' } }
    })
    allocator = new Allocator({ node, metrics: metricsRegistry, registry: base.registry, trustedSigners: base.config.registryKeys, defaultTargetRps: base.config.targetRps, runtime, sidecars, doors, log, ...settings })
    await doors.start()
    await allocator.start()
    const current = allocator
    metrics = new MetricsServer({
      port: metricsPort,
      registry: allocator.metrics,
      routes: { '/instances': () => ({ type: 'json', body: JSON.stringify(current.list()) }) }
    })
    const boundMetrics = await metrics.start()
    log.info({ peerId: node.peerId.toString(), runtime: runtime.kind, metrics: boundMetrics }, 'allocator ready')
    printReady({
      peerId: node.peerId.toString(),
      multiaddrs: node.getMultiaddrs().map(ma => ma.toString()),
      http: `http://127.0.0.1:${boundMetrics}`,
      metrics: boundMetrics,
      runtime: runtime.kind
    })
  } catch (err) {
    await allocator?.stop().catch(() => {})
    await doors?.stop().catch(() => {})
    await metrics?.stop().catch(() => {})
    await stopBase().catch(() => {})
    throw err
  }
  const running = allocator
  const runningDoors = doors
  const runningMetrics = metrics
  return {
    stop: async () => {
      log.info('stopping: removing the instances this allocator started')
      await running.stop()
      await runningDoors.stop()
      await runningMetrics.stop()
      await stopBase()
    }
  }
})
