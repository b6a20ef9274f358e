import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { Suite, SuiteContext, SuiteResult } from '../lib/context.js'
import { autocannonTimeline, type RateTimeline } from '../lib/load.js'
import { startProxy, waitForRoute, type App, type Daemon, type DaemonReady } from '../lib/mesh.js'
import { ALLOCATOR_BIN, HELLO_APP, REPO_ROOT } from '../lib/paths.js'
import { daemonArgv } from '../../shared/node-flags.js'
import { cpuDelta, cpuSnapshot, processTree, rssBytes, type CpuSnapshot } from '../lib/proc-stats.js'
import type { Child, ProcessSet } from '../lib/procs.js'
import { linearFit, MB, quantile, round } from '../lib/stats.js'
import { naRow, type Row } from '../lib/table.js'
import { parseListeningLine, parseReadyLine } from '../../shared/ready.js'

/**
 * 7. Soak: a steady, bounded rate of small GETs through the mesh for 10 minutes (1 minute
 * with --quick), after a 10 s warm-up at the same rate, watching errors, latency over time
 * and the daemons' memory.
 *
 * Path: autocannon → client proxy → libp2p /http/1.1 → the instance's server proxy → the
 * example app (`dist/examples/hello/server.js`, `GET /` answers `hello from <instance>`), all
 * on 127.0.0.1. As `hyphae up` runs it: an allocator (`--runtime process`, its sidecars in
 * process) is the client proxy's bootstrap and starts the one instance on the first request
 * (the record has no targetRps, so nothing scales out). Without a built allocator: a
 * bootstrap proxy, the app and a server proxy in front of it.
 *
 * Load: autocannon `overallRate` 200 on one keep-alive connection, as request-path's
 * "@200 req/s" rows (so the first window here compares with those). autocannon's rate is a
 * budget per second: each second's 200 requests go back to back, then the connection waits
 * for the next second. Bounded by count (rate × seconds) and by a deadline.
 *
 * Figures, over the measured part (responses that ended after the warm-up): requests;
 * errors = non-2xx responses + socket errors and timeouts (10 s), and their share; p50 and
 * p99 of the 2xx responses' own durations, over the whole run and over its first and last
 * window (60 s; 15 s with --quick, where a 60 s window would be the whole run). Memory:
 * VmRSS of each daemon from /proc every 5 s from the start of the warm-up; "start" is the
 * sample at the end of the warm-up, "end" one taken when the load stops, and the drift is a
 * least-squares line through every sample from start to end: its slope in MB per hour and
 * its rise over the run in MB (end − start, noisier, is in the JSON).
 */

const SERVICE = 'hello'
const RATE = 200
const CONNECTIONS = 1
const WARMUP_S = 10
const SAMPLE_EVERY_S = 5

interface Settings { warmupS: number, soakS: number, windowS: number, sampleEveryS: number }

function settings (quick: boolean): Settings {
  return quick
    ? { warmupS: WARMUP_S, soakS: 60, windowS: 15, sampleEveryS: SAMPLE_EVERY_S }
    : { warmupS: WARMUP_S, soakS: 600, windowS: 60, sampleEveryS: SAMPLE_EVERY_S }
}

/** The processes a soak runs against: the client proxy and what serves the instance. */
interface Topology {
  kind: 'allocator' | 'server-proxy'
  url: string
  /** Sampled daemons, by row key: `client`, then `allocator` or `server`. */
  daemons: Array<{ key: string, role: string, pid: number, child: Child<unknown> }>
  /** The example app's process (for the JSON only), when it could be found. */
  appPid: number | undefined
  stop: () => Promise<void>
}

function writeConfig (dir: string): string {
  const file = join(dir, 'soak.json')
  const record = { command: `"${process.execPath}" "${HELLO_APP}"`, health: '/healthz' }
  writeFileSync(file, JSON.stringify({ Perf: { SoftReq: { RTT: 100 }, HardReq: { RTT: 1000 } }, Bootstraps: [], Services: { [SERVICE]: record }, RegistryKeys: [] }))
  return file
}

/** The example app among a process's descendants (the process runtime runs it under `sh -c`). */
function findApp (root: number): number | undefined {
  for (const pid of processTree(root)) {
    if (pid === root) continue
    try {
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')
      if (cmdline.includes(HELLO_APP) && !cmdline.includes('-c')) return pid
    } catch { /* exited */ }
  }
  return undefined
}

async function startTopology (ctx: SuiteContext): Promise<Topology> {
  const configFile = writeConfig(ctx.tmp)
  const started: Array<Child<unknown>> = []
  const stop = async (): Promise<void> => {
    // SIGTERM for the allocator: it stops and removes the instance it started.
    for (const child of started.reverse()) await child.stop(child.name === 'soak-allocator' ? 'SIGTERM' : 'SIGINT', child.name === 'soak-allocator' ? 30_000 : 10_000)
  }
  try {
    if (ctx.features.allocator) {
      ctx.log('soak: starting an allocator (process runtime) and a client proxy bootstrapped to it')
      // As in footprint and cold-start: an ephemeral metrics port, a data dir of its own.
      const allocator = await ctx.procs.start<DaemonReady>({
        name: 'soak-allocator',
        command: process.execPath,
        args: daemonArgv(ALLOCATOR_BIN, ['--configfile', configFile, '--runtime', 'process', '--metrics', '0', '--data-dir', join(ctx.tmp, 'allocator-soak')]),
        cwd: REPO_ROOT,
        ready: line => parseReadyLine(line) as DaemonReady | undefined
      })
      started.push(allocator)
      const client = await startProxy(ctx.procs, { name: 'soak-client', configFile, bootstrap: allocator.ready.multiaddrs[0] })
      started.push(client)
      const url = `${client.ready.http}/${SERVICE}/`
      ctx.log('soak: first request (cold start of the instance)')
      await waitForRoute(url, 60_000)
      return {
        kind: 'allocator',
        url,
        daemons: [
          { key: 'client', role: 'client proxy', pid: client.pid, child: client },
          { key: 'allocator', role: 'allocator', pid: allocator.pid, child: allocator }
        ],
        appPid: findApp(allocator.pid),
        stop
      }
    }
    ctx.log('soak: no allocator built: starting a bootstrap, the example app, a server proxy and a client proxy')
    const bootstrap = await startProxy(ctx.procs, { name: 'soak-bootstrap', configFile })
    started.push(bootstrap)
    const boot = bootstrap.ready.multiaddrs[0]
    const app: App = await startHelloApp(ctx.procs)
    started.push(app)
    const server: Daemon = await startProxy(ctx.procs, { name: 'soak-server', configFile, bootstrap: boot, server: { service: SERVICE, appPort: app.ready } })
    started.push(server)
    const client = await startProxy(ctx.procs, { name: 'soak-client', configFile, bootstrap: boot })
    started.push(client)
    const url = `${client.ready.http}/${SERVICE}/`
    await waitForRoute(url, 30_000)
    return {
      kind: 'server-proxy',
      url,
      daemons: [
        { key: 'client', role: 'client proxy', pid: client.pid, child: client },
        { key: 'server', role: 'server proxy', pid: server.pid, child: server }
      ],
      appPid: app.pid,
      stop
    }
  } catch (err) {
    await stop()
    throw err
  }
}

async function startHelloApp (procs: ProcessSet): Promise<App> {
  return await procs.start({
    name: 'soak-hello',
    command: process.execPath,
    args: [HELLO_APP],
    env: { PORT: '0', INSTANCE: 'soak' },
    ready: parseListeningLine
  })
}

interface RssSample {
  /** Seconds since the load began. */
  tS: number
  /** MB (10^6 bytes) by key; null once the process is gone. */
  mb: Record<string, number | null>
}

/** VmRSS of some processes at t0 + k × every, and once more on stop(). */
class RssSeries {
  readonly samples: RssSample[] = []
  private timer: NodeJS.Timeout | undefined
  private k = 0
  private stopped = false

  constructor (
    private readonly pids: Record<string, number>,
    private readonly t0: number,
    private readonly everyMs: number,
    private readonly onSample: (sample: RssSample) => void
  ) {}

  start (): void {
    this.sample()
    this.schedule()
  }

  stop (): void {
    this.stopped = true
    clearTimeout(this.timer)
    this.sample()
  }

  private schedule (): void {
    if (this.stopped) return
    this.k++
    const due = this.t0 + this.k * this.everyMs
    this.timer = setTimeout(() => {
      this.sample()
      this.onSample(this.samples[this.samples.length - 1])
      this.schedule()
    }, Math.max(0, due - performance.now()))
  }

  private sample (): void {
    const mb: Record<string, number | null> = {}
    for (const [key, pid] of Object.entries(this.pids)) {
      try { mb[key] = round(rssBytes(pid) / MB, 2) } catch { mb[key] = null }
    }
    this.samples.push({ tS: round((performance.now() - this.t0) / 1000, 2), mb })
  }
}

interface WindowStats {
  fromS: number
  toS: number
  requests: number
  errors: number
  p50Ms: number | null
  p99Ms: number | null
}

/** Requests, errors and 2xx latency percentiles of responses (and errors) that ended in [from, to) s after t0. */
function windowStats (t: RateTimeline, t0: number, fromS: number, toS: number): WindowStats {
  const from = t0 + fromS * 1000
  const to = t0 + toS * 1000
  const ok: number[] = []
  let non2xx = 0
  for (let i = 0; i < t.endedAt.length; i++) {
    if (t.endedAt[i] < from || t.endedAt[i] >= to) continue
    if (t.status[i] >= 200 && t.status[i] < 300) ok.push(t.latencyMs[i])
    else non2xx++
  }
  const failed = t.errorsAt.filter(at => at >= from && at < to).length
  const q = (p: number): number | null => ok.length === 0 ? null : round(quantile(ok, p))
  return { fromS: round(fromS, 2), toS: round(toS, 2), requests: ok.length + non2xx + failed, errors: non2xx + failed, p50Ms: q(0.5), p99Ms: q(0.99) }
}

interface Drift {
  role: string
  startMb: number | null
  endMb: number | null
  endMinusStartMb: number | null
  /** From the least-squares line over the samples from start to end. */
  fitMbPerHour: number | null
  fitRiseMb: number | null
  samplesUsed: number
}

function drift (role: string, key: string, samples: RssSample[], startS: number): Drift {
  const used = samples.filter(s => s.tS >= startS - 0.5 && s.mb[key] != null)
  const start = used[0]
  const end = samples[samples.length - 1]
  const startMb = start?.mb[key] ?? null
  const endMb = end?.mb[key] ?? null
  let fitMbPerHour: number | null = null
  let fitRiseMb: number | null = null
  if (used.length >= 3 && endMb != null) {
    const { slope } = linearFit(used.map(s => s.tS), used.map(s => s.mb[key] as number))
    if (Number.isFinite(slope)) {
      fitMbPerHour = round(slope * 3600, 1)
      fitRiseMb = round(slope * (used[used.length - 1].tS - used[0].tS), 2)
    }
  }
  return {
    role,
    startMb,
    endMb,
    endMinusStartMb: startMb != null && endMb != null ? round(endMb - startMb, 2) : null,
    fitMbPerHour,
    fitRiseMb,
    samplesUsed: used.length
  }
}

export const soak: Suite = {
  name: 'soak',
  about: 'steady 200 req/s through the mesh for 10 min (1 min with --quick): errors, p50/p99 over time, daemons\' RSS drift',
  async run (ctx: SuiteContext): Promise<SuiteResult> {
    const s = settings(ctx.quick)
    let topology: Topology | undefined
    let timeline: RateTimeline | undefined
    let series: RssSeries | undefined
    let t0: number | undefined
    let cpuAtStart: CpuSnapshot | undefined
    let cpuAtEnd: CpuSnapshot | undefined
    const aliveAtEnd: Record<string, boolean> = {}
    try {
      topology = await startTopology(ctx)
      const topo = topology
      const pids: Record<string, number> = Object.fromEntries(topo.daemons.map(d => [d.key, d.pid]))
      if (topo.appPid != null) pids.app = topo.appPid
      const cpuPids = (): Record<string, number[]> => Object.fromEntries(Object.entries(pids).map(([key, pid]) => [key, [pid]]))
      ctx.log(`soak: ${RATE} req/s on ${CONNECTIONS} connection for ${s.warmupS} s warm-up + ${s.soakS} s, RSS every ${s.sampleEveryS} s (${topo.kind}: ${topo.daemons.map(d => `${d.role} pid ${d.pid}`).join(', ')}${topo.appPid != null ? `, app pid ${topo.appPid}` : ''})`)
      const start = performance.now()
      t0 = start
      const lastLogged = { minute: 0 }
      series = new RssSeries(pids, start, s.sampleEveryS * 1000, sample => {
        // Progress once a minute (and at the end of the warm-up).
        const minute = Math.floor(sample.tS / 60)
        const atWarmupEnd = Math.abs(sample.tS - s.warmupS) < 1
        if (!atWarmupEnd && minute <= lastLogged.minute) return
        if (!atWarmupEnd) lastLogged.minute = minute
        ctx.log(`soak: t=${sample.tS.toFixed(0)} s: RSS ${Object.entries(sample.mb).map(([k, v]) => `${k} ${v == null ? 'gone' : v.toFixed(1)} MB`).join(', ')}`)
      })
      series.start()
      const cpuTimer = setTimeout(() => { cpuAtStart = cpuSnapshot(cpuPids()) }, s.warmupS * 1000)
      try {
        timeline = await autocannonTimeline({ url: topo.url, rate: RATE, connections: CONNECTIONS, seconds: s.warmupS + s.soakS })
      } finally {
        clearTimeout(cpuTimer)
        series.stop()
        cpuAtEnd = cpuSnapshot(cpuPids())
        for (const d of topo.daemons) aliveAtEnd[d.key] = d.child.running
      }
    } finally {
      await topology?.stop()
    }

    if (topology == null || timeline == null || series == null || t0 == null) throw new Error('soak: the load did not run')
    const topo = topology
    const t = timeline
    const samples = series.samples
    const endS = (t.stoppedAt - t0) / 1000
    const whole = windowStats(t, t0, s.warmupS, endS + 1)
    const first = windowStats(t, t0, s.warmupS, s.warmupS + s.windowS)
    const last = windowStats(t, t0, endS - s.windowS, endS + 1)
    const measuredS = endS - s.warmupS
    const windows: WindowStats[] = []
    for (let from = s.warmupS; from < endS - 0.5; from += s.windowS) windows.push(windowStats(t, t0, from, Math.min(from + s.windowS, endS + 1)))
    const drifts: Record<string, Drift> = Object.fromEntries(topo.daemons.map(d => [d.key, drift(d.role, d.key, samples, s.warmupS)]))
    const appDrift = topo.appPid != null ? drift('example app', 'app', samples, s.warmupS) : null
    const cpu = cpuAtStart != null && cpuAtEnd != null ? cpuDelta(cpuAtStart, cpuAtEnd) : undefined
    const cpuPer10k = cpu != null && whole.requests > 0
      ? Object.fromEntries(Object.entries(cpu).map(([k, v]) => [k, round(v / whole.requests * 10_000, 3)]))
      : null
    ctx.log(`soak: ${whole.requests} requests in ${measuredS.toFixed(1)} s, ${whole.errors} errors, p50 ${String(whole.p50Ms)} ms, p99 ${String(whole.p99Ms)} ms; ` +
      Object.values(drifts).map(d => `${d.role} ${String(d.startMb)} → ${String(d.endMb)} MB (fit ${String(d.fitMbPerHour)} MB/h)`).join('; '))
    if (t.hitDeadline) ctx.log(`soak: the load fell behind ${RATE} req/s (${(whole.requests / measuredS).toFixed(1)} achieved) and was stopped at its deadline`)

    const suite = 'soak'
    const win = `${s.windowS} s`
    const lat = (id: string, metric: string, value: number | null): Row => value == null
      ? naRow(id, suite, metric, 'ms', 'n/a (no 2xx response in the window)')
      : { id, suite, metric, value, unit: 'ms', better: 'lower' }
    const rows: Row[] = [
      { id: 'soak.requests', suite, metric: `requests in ${s.soakS} s at ${RATE} req/s, after ${s.warmupS} s warm-up (1 connection)`, value: whole.requests, unit: 'req', better: 'higher', digits: 0 },
      { id: 'soak.rate', suite, metric: '  achieved rate', value: round(whole.requests / measuredS, 1), unit: 'req/s', better: 'higher', digits: 1 },
      { id: 'soak.errors', suite, metric: 'errors (non-2xx, socket errors, 10 s timeouts)', value: whole.errors, unit: 'req', better: 'lower', digits: 0 },
      { id: 'soak.error-share', suite, metric: '  error share', value: whole.requests === 0 ? null : round(whole.errors / whole.requests * 100, 4), unit: '%', better: 'lower', digits: 3 },
      lat('soak.p50', 'p50, whole run', whole.p50Ms),
      lat('soak.p99', 'p99, whole run', whole.p99Ms),
      lat('soak.p50.first', `p50, first ${win}`, first.p50Ms),
      lat('soak.p99.first', `p99, first ${win}`, first.p99Ms),
      lat('soak.p50.last', `p50, last ${win}`, last.p50Ms),
      lat('soak.p99.last', `p99, last ${win}`, last.p99Ms)
    ]
    for (const d of topo.daemons) {
      const r = drifts[d.key]
      const gone = aliveAtEnd[d.key] === false ? 'n/a (exited during the run)' : 'n/a (no sample)'
      const mb = (id: string, metric: string, value: number | null, unit = 'MB', digits?: number): Row => value == null
        ? naRow(id, suite, metric, unit, gone)
        : { id, suite, metric, value, unit, better: 'lower', digits }
      rows.push(
        mb(`soak.rss-start.${d.key}`, `RSS after warm-up · ${d.role}`, r.startMb, 'MB', 1),
        mb(`soak.rss-end.${d.key}`, `RSS at end · ${d.role}`, r.endMb, 'MB', 1),
        mb(`soak.rss-drift.${d.key}`, `  RSS drift over ${s.soakS} s (linear fit) · ${d.role}`, r.fitRiseMb, 'MB', 2),
        mb(`soak.rss-drift-rate.${d.key}`, `  RSS drift rate (linear fit, ${r.samplesUsed} samples) · ${d.role}`, r.fitMbPerHour, 'MB/h', 1)
      )
    }
    return {
      rows,
      details: {
        settings: { ...s, rate: RATE, connections: CONNECTIONS, loadGenerator: 'autocannon overallRate (a per-second budget), amount = rate × seconds, deadline', timeoutS: 10 },
        topology: topo.kind,
        processes: { ...Object.fromEntries(topo.daemons.map(d => [d.key, { role: d.role, pid: d.pid }])), app: topo.appPid ?? null },
        aliveAtEnd,
        load: {
          measuredS: round(measuredS, 2),
          responses: t.endedAt.length,
          socketErrors: t.errorsAt.length,
          non2xx: t.status.filter(code => code < 200 || code >= 300).length,
          hitDeadline: t.hitDeadline,
          warmup: windowStats(t, t0, 0, s.warmupS)
        },
        whole,
        first,
        last,
        windows,
        rss: { drift: drifts, app: appDrift, samples },
        cpuSecondsMeasured: cpu ?? null,
        cpuPer10kRequests: cpuPer10k
      }
    }
  }
}
