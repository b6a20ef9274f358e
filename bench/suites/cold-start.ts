import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { dockerAvailable, ensureExampleImage } from '../../cli/example-image.js'
import type { Suite, SuiteContext, SuiteResult } from '../lib/context.js'
import { DaemonLog, type LogLine } from '../lib/daemon-log.js'
import { httpGet, startProxy, type Daemon, type DaemonReady } from '../lib/mesh.js'
import { ALLOCATOR_BIN, HELLO_APP, REPO_ROOT } from '../lib/paths.js'
import { daemonArgv } from '../../shared/node-flags.js'
import { median, round } from '../lib/stats.js'
import { naRow, type Row } from '../lib/table.js'
import { parseReadyLine } from '../../shared/ready.js'

/**
 * 3. Cold start: the first request for a service with no instance, to its response, through a
 * client proxy whose only way to an instance is an allocator (the allocator is the client's
 * bootstrap, and nothing else runs). Process runtime (`command: node dist/examples/hello/
 * server.js`) and docker runtime (the local example image, port 8080). Each trial asks for
 * a different service (cold-1 … cold-N, static records with the same command or image), so
 * every first request is really cold: no instance, no cached peer, no cached record.
 *
 * The split comes from the daemons' own JSON logs (`--log-level debug`; `time` is ms since
 * the epoch, both daemons run on this host's clock). Per trial, with E = the end-to-end
 * time measured here, C = the client's `cold start: instance allocated` ms, A = the
 * allocator's `instance allocated` ms, S = the supervisor's `instance started` ms:
 *   - allocator discovery + request = C − A: the client's findProviders of the allocator CID
 *     and ping, the /hyphae/alloc round trip around the allocation, and the client's own
 *     check of the new instance before it logs;
 *   - allocator: record + setup = A − S: inside allocate() before the supervisor starts
 *     (registry record resolve, capacity check, a free port). Not the sidecar: the sidecar
 *     is inside S (supervisor.ts runStart → startInstance → startSidecarWhileAppRuns);
 *   - instance launch = t(`process started` / `container started`) − (t(`instance started`)
 *     − S): spawn, or container create + start + log attach;
 *   - health + sidecar join = t(sidecar's `connected to bootstrap`) − t(launch): the app
 *     comes up and passes its first health probe (polled), then the in-process sidecar
 *     creates its libp2p node and dials the allocator (no log marks the first health pass,
 *     so the two cannot be told apart from the logs);
 *   - advertisement = t(`instance started`) − t(`connected to bootstrap`): the sidecar's
 *     first DHT provide of the service CID (it reports ready only once advertised);
 *   - first request = E − C: the client's registry lookup before the cold start, and the
 *     request proxied to the new instance and its response.
 * The parts add up to E exactly.
 */

const PHASES = [
  ['discovery-request', 'allocator discovery + request'],
  ['allocator-setup', 'allocator: record + setup'],
  ['launch', 'instance launch'],
  ['health-sidecar', 'health + sidecar join'],
  ['advertisement', 'advertisement (provide)'],
  ['first-request', 'first request']
] as const
type Phase = typeof PHASES[number][0]

interface Trial {
  service: string
  endToEndMs: number
  phases: Record<Phase, number>
}

interface RuntimeResult {
  trials: Trial[]
  totalMs: { median: number, min: number, max: number }
  phaseMedians: Record<Phase, number>
}

function writeConfig (dir: string, runtime: 'process' | 'docker', n: number, image?: string): string {
  const services: Record<string, unknown> = {}
  for (let i = 1; i <= n; i++) {
    services[`cold-${i}`] = runtime === 'process'
      ? { command: `"${process.execPath}" "${HELLO_APP}"`, health: '/healthz' }
      : { image, port: 8080, health: '/healthz' }
  }
  const file = join(dir, `cold-${runtime}.json`)
  writeFileSync(file, JSON.stringify({ Perf: { SoftReq: { RTT: 100 }, HardReq: { RTT: 1000 } }, Bootstraps: [], Services: services, RegistryKeys: [] }))
  return file
}

function need (line: LogLine | undefined, what: string): LogLine {
  if (line == null) throw new Error(`cold start: no '${what}' line in the daemon logs`)
  return line
}

async function runRuntime (ctx: SuiteContext, runtime: 'process' | 'docker', n: number, image?: string): Promise<RuntimeResult> {
  const configFile = writeConfig(ctx.tmp, runtime, n, image)
  let allocator: Daemon | undefined
  let client: Daemon | undefined
  try {
    allocator = await ctx.procs.start<DaemonReady>({
      name: `allocator-${runtime}`,
      command: process.execPath,
      args: daemonArgv(ALLOCATOR_BIN, ['--configfile', configFile, '--runtime', runtime, '--metrics', '0', '--log-level', 'debug',
        '--idle-timeout', '600', '--max-instances', String(n + 2), '--data-dir', join(ctx.tmp, `allocator-cold-${runtime}`)]),
      cwd: REPO_ROOT,
      ready: line => parseReadyLine(line) as DaemonReady | undefined
    })
    const allocLog = new DaemonLog(allocator)
    client = await startProxy(ctx.procs, {
      name: `client-${runtime}`, configFile, bootstrap: allocator.ready.multiaddrs[0],
      extraArgs: ['--log-level', 'info', '--cold-start-timeout', '30000']
    })
    const clientLog = new DaemonLog(client)
    const trials: Trial[] = []
    for (let i = 1; i <= n; i++) {
      const service = `cold-${i}`
      const since = Date.now()
      const t0 = performance.now()
      const answer = await httpGet(`${client.ready.http}/${service}/`, 40_000)
      const endToEndMs = performance.now() - t0
      if (answer.status !== 200) throw new Error(`cold start ${runtime} ${service}: HTTP ${answer.status}`)
      const c = need(await clientLog.waitFor('cold start: instance allocated', { service }, since), 'cold start: instance allocated')
      const a = need(await allocLog.waitFor('instance allocated', { service }, since), 'instance allocated')
      const s = need(await allocLog.waitFor('instance started', { service }, since), 'instance started')
      const supervisorBegun = s.time - (s.ms as number)
      const launch = need(allocLog.find(runtime === 'process' ? 'process started' : 'container started', {}, supervisorBegun), `${runtime} started`)
      // The allocator has no bootstrap of its own: its only `connected to bootstrap` lines are its sidecars'.
      const joined = need(allocLog.find('connected to bootstrap', {}, launch.time), 'connected to bootstrap (sidecar)')
      const C = c.ms as number
      const A = a.ms as number
      const S = s.ms as number
      const phases: Record<Phase, number> = {
        'discovery-request': C - A,
        'allocator-setup': A - S,
        launch: launch.time - supervisorBegun,
        'health-sidecar': joined.time - launch.time,
        advertisement: s.time - joined.time,
        'first-request': endToEndMs - C
      }
      trials.push({ service, endToEndMs: round(endToEndMs, 1), phases })
      ctx.log(`cold-start: ${runtime} ${service}: ${endToEndMs.toFixed(0)} ms (${PHASES.map(([k]) => `${k} ${phases[k].toFixed(0)}`).join(', ')})`)
    }
    const totals = trials.map(t => t.endToEndMs)
    const phaseMedians = Object.fromEntries(PHASES.map(([k]) => [k, round(median(trials.map(t => t.phases[k])), 1)])) as Record<Phase, number>
    return { trials, totalMs: { median: round(median(totals), 1), min: Math.min(...totals), max: Math.max(...totals) }, phaseMedians }
  } finally {
    await client?.stop('SIGINT', 10_000)
    // SIGTERM: the allocator stops and removes every instance (process or container) it started.
    await allocator?.stop('SIGTERM', 30_000)
  }
}

function runtimeRows (runtime: 'process' | 'docker', n: number, target: number, r: RuntimeResult | undefined, why: string): Row[] {
  const suite = 'cold-start'
  if (r == null) {
    return [
      naRow(`cold.${runtime}.total`, suite, `cold start, ${runtime} runtime, median of ${n}`, 'ms', why, { op: '<=', value: target }),
      ...PHASES.map(([k, label]) => naRow(`cold.${runtime}.${k}`, suite, `  ${runtime}: ${label}`, 'ms', why))
    ]
  }
  return [
    { id: `cold.${runtime}.total`, suite, metric: `cold start, ${runtime} runtime, median of ${n}`, value: r.totalMs.median, unit: 'ms', better: 'lower', target: { op: '<=', value: target } },
    { id: `cold.${runtime}.min`, suite, metric: `  ${runtime}: min of ${n}`, value: round(r.totalMs.min, 1), unit: 'ms', better: 'lower' },
    { id: `cold.${runtime}.max`, suite, metric: `  ${runtime}: max of ${n}`, value: round(r.totalMs.max, 1), unit: 'ms', better: 'lower' },
    ...PHASES.map(([k, label]): Row => ({ id: `cold.${runtime}.${k}`, suite, metric: `  ${runtime}: ${label} (median)`, value: r.phaseMedians[k], unit: 'ms', better: 'lower' }))
  ]
}

export const coldStart: Suite = {
  name: 'cold-start',
  about: 'first request with no instance running (allocator as the only route), process and docker runtimes',
  async run (ctx: SuiteContext): Promise<SuiteResult> {
    const n = ctx.quick ? 3 : 10
    if (!ctx.features.allocator) {
      const why = 'n/a (allocator not built)'
      return { rows: [...runtimeRows('process', n, 1000, undefined, why), ...runtimeRows('docker', n, 2000, undefined, why)], details: { skipped: why } }
    }
    const details: Record<string, unknown> = { trials: n }
    ctx.log(`cold-start: process runtime, ${n} cold services`)
    const processResult = await runRuntime(ctx, 'process', n)
    details.process = processResult

    let dockerResult: RuntimeResult | undefined
    let dockerWhy = 'n/a'
    const engine = await dockerAvailable()
    if (!engine.ok) {
      dockerWhy = `n/a (${engine.reason ?? 'no Docker Engine answers'})`.slice(0, 120)
      details.docker = { skipped: engine.reason }
    } else {
      const image = await ensureExampleImage(line => { ctx.log(`cold-start: ${line}`) })
      ctx.log(`cold-start: docker runtime (${image}), ${n} cold services`)
      dockerResult = await runRuntime(ctx, 'docker', n, image)
      details.docker = { image, ...dockerResult }
    }
    return {
      rows: [...runtimeRows('process', n, 1000, processResult, 'n/a'), ...runtimeRows('docker', n, 2000, dockerResult, dockerWhy)],
      details
    }
  }
}
