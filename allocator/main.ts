#!/usr/bin/env node
import '../shared/polyfill.js'
import { COMMON_OPTIONS, parseCommandLine, parsePort, parsePositiveInt } from '../shared/config.js'
import { printReady, runDaemon, startMeshBase } from '../shared/daemon.js'
import { defaultDataDir, openDataDir } from '../shared/data-dir.js'
import { UsageError } from '../shared/errors.js'
import { MetricsServer } from '../shared/metrics-server.js'
import { collectDefaultMetrics, Registry as MetricsRegistry } from 'prom-client'
import { Allocator } from './allocator.js'
import { chooseRuntime } from './runtimes.js'
import { InProcessSidecars, ProcessSidecars } from './sidecar.js'

const USAGE = `usage: hyphae-allocator [OPTIONS]

Starts, watches, relaunches and culls instances of services on this host, on request from
the mesh, as their signed registry records describe.

Options:
  --runtime KIND          docker, process, or auto (default: docker when an engine answers, else process)
  --run-as USER           user (name or uid) process apps run as; never root (default: nobody when
                          the allocator runs as root, else the allocator's own user)
  --max-instances N       most instances at once (default 16)
  --idle-timeout SECONDS  stop an instance idle this long (default 60)
  --health-interval MS    how often each instance's health path is checked (default 1000)
  --unhealthy-after N     failed checks in a row before a relaunch (default 3)
  --healthy-after N       passing checks before a relaunched instance counts as healthy (default 2)
  --start-timeout MS      time for an instance to become healthy (default 30000)
  --scale-window SECONDS  the window each instance's proxy measures its request rate over, for
                          autoscaling (default 120)
  --sidecar KIND          where each instance's server proxy runs: in-process (default: a libp2p
                          node of its own inside the allocator) or process (a hyphae-proxy each)
  --configfile PATH       config file (default: conf/conf.json of the package)
  --data-dir DIR          DHT records, peer store and identity key (DIR/key) kept here across restarts;
                          one allocator per DIR (default: $XDG_STATE_HOME/hyphae/allocator, else
                          ~/.local/state/hyphae/allocator)
  --key FILE              identity key, created (0600) when missing (default: DIR/key of --data-dir)
  --listen MULTIADDR      libp2p listen address (repeatable; default /ip4/127.0.0.1/tcp/0)
  --announce MULTIADDR    address others should dial (repeatable)
  --bootstrap MULTIADDR   bootstrap peer (repeatable; none: this is the first node)
  --psk FILE              private network key (else $P2P_PSK)
  --metrics PORT          Prometheus metrics on 127.0.0.1:PORT (default 9101; 0: any free port)
  --log-level LEVEL       fatal, error, warn, info (default), debug, trace, silent
  -h, --help              this text`

runDaemon('hyphae-allocator', async () => {
  const { values, positionals } = parseCommandLine(process.argv.slice(2), {
    ...COMMON_OPTIONS,
    runtime: { type: 'string' },
    'run-as': { type: 'string' },
    'max-instances': { type: 'string' },
    'idle-timeout': { type: 'string' },
    'health-interval': { type: 'string' },
    'unhealthy-after': { type: 'string' },
    'healthy-after': { type: 'string' },
    'start-timeout': { type: 'string' },
    'scale-window': { type: 'string' },
    sidecar: { type: 'string' },
    'data-dir': { type: 'string' }
  })
  if (values.help === true) {
    process.stdout.write(`${USAGE}\n`)
    return undefined
  }
  if (positionals.length > 0) throw new UsageError(`unexpected argument '${positionals[0]}' (see --help)`)
  const runtimeKind = values.runtime ?? 'auto'
  if (!['auto', 'docker', 'process'].includes(runtimeKind)) throw new UsageError(`invalid --runtime '${runtimeKind}': expected docker, process or auto`)
  const sidecarKind = values.sidecar ?? 'in-process'
  if (sidecarKind !== 'in-process' && sidecarKind !== 'process') throw new UsageError(`invalid --sidecar '${sidecarKind}': expected in-process or process`)
  const metricsPort = parsePort(values.metrics, '--metrics', 9101)
  const scaleWindowMs = parsePositiveInt(values['scale-window'], '--scale-window', 120) * 1000
  const settings = {
    maxInstances: parsePositiveInt(values['max-instances'], '--max-instances', 16),
    idleTimeoutS: parsePositiveInt(values['idle-timeout'], '--idle-timeout', 60),
    healthIntervalMs: parsePositiveInt(values['health-interval'], '--health-interval', 1000),
    unhealthyAfter: parsePositiveInt(values['unhealthy-after'], '--unhealthy-after', 3),
    healthyAfter: parsePositiveInt(values['healthy-after'], '--healthy-after', 2),
    startTimeoutMs: parsePositiveInt(values['start-timeout'], '--start-timeout', 30_000)
  }

  if (values['data-dir'] === '') throw new UsageError('invalid --data-dir \'\': expected a directory')
  const data = await openDataDir(values['data-dir'] ?? defaultDataDir())
  const base = await startMeshBase({ name: 'hyphae-allocator', options: values, datastore: data.datastore, defaultKeyFile: data.keyFile })
    .catch(async (err: unknown) => { await data.datastore.close().catch(() => {}); throw err })
  const { node } = base
  const log = base.log.child({ component: 'allocator' })
  const stopBase = async (): Promise<void> => {
    await base.registry.stop()
    await node.stop()
    await data.datastore.close()
  }
  let allocator: Allocator | undefined
  let metrics: MetricsServer | undefined
  try {
    const runtime = await chooseRuntime(runtimeKind as 'auto' | 'docker' | 'process', base.log.child({ component: 'runtime' }), { runAs: values['run-as'] })
    const listen = values.listen ?? ['/ip4/127.0.0.1/tcp/0']
    const bootstraps = (): ReturnType<typeof node.getMultiaddrs> => node.getMultiaddrs()
    const sidecars = sidecarKind === 'process'
      ? new ProcessSidecars({ log: base.log.child({ component: 'sidecar' }), bootstraps, listen, configFile: values.configfile, pskFile: values.psk, logLevel: values['log-level'], healthIntervalMs: settings.healthIntervalMs, scaleWindowMs })
      : new InProcessSidecars({ log: base.log.child({ component: 'sidecar' }), bootstraps, listen, config: base.config, psk: base.psk, records: base.registry, healthIntervalMs: settings.healthIntervalMs, scaleWindowMs })
    const metricsRegistry = new MetricsRegistry()
    collectDefaultMetrics({ register: metricsRegistry, prefix: 'hyphae_allocator_' })
    allocator = new Allocator({ node, metrics: metricsRegistry, registry: base.registry, trustedSigners: base.config.registryKeys, defaultTargetRps: base.config.targetRps, runtime, sidecars, log, ...settings })
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
    await metrics?.stop().catch(() => {})
    await stopBase().catch(() => {})
    throw err
  }
  const running = allocator
  const runningMetrics = metrics
  return {
    stop: async () => {
      log.info('stopping: removing the instances this allocator started')
      await running.stop()
      await runningMetrics.stop()
      await stopBase()
    }
  }
})
