import { join } from 'node:path'
import type { Suite, SuiteContext, SuiteResult } from '../lib/context.js'
import { autocannonLatency, wrkAvailable, wrkThroughput, type LatencyResult, type ThroughputResult } from '../lib/load.js'
import { SERVICE, startMesh, waitForRoute, type App, type Mesh } from '../lib/mesh.js'
import { nginxAvailable, opensslAvailable, selfSignedCertificate, startNginx } from '../lib/nginx.js'
import { NODE_HOP } from '../lib/paths.js'
import { cpuDelta, cpuSnapshot, processTree } from '../lib/proc-stats.js'
import type { Child } from '../lib/procs.js'
import { round } from '../lib/stats.js'
import { naRow, type Row } from '../lib/table.js'
import { parseListeningLine } from '../../shared/ready.js'

/**
 * 1. The request path for a tiny GET (12 bytes), each way: direct to the app, through the
 * mesh (client proxy → libp2p /http/1.1 → server proxy → app) with pooled streams and with
 * one stream per request, and through two-hop chains of plain proxies, the cost of two hops
 * without the mesh: two node:http relays (no encryption, no multiplexing), two nginx, and two
 * nginx with TLS between them (the mesh encrypts between its hops too).
 * (a) max throughput at 32 connections (wrk), (b) latency at a fixed 200 req/s (autocannon
 * overallRate, one connection), (c) CPU seconds per 10k requests of every process on the path.
 */

const CONNECTIONS = 32
const RATE = 200
/** One connection: the latency of a request, not of a queue behind nine others in a burst. */
const LATENCY_CONNECTIONS = 1
/** A bound on request count, far above what this machine does in the time given. */
const MAX_RPS = 200_000
/**
 * The lean-request-path goals (issue 12): each proxy at most this many CPU seconds per 10k
 * requests, mesh throughput at least the plain Node.js two-hop chain's and half of nginx
 * two-hop with TLS, at most +0.5 ms p50 and +2 ms p99 over direct at 200 req/s.
 */
const PROXY_CPU_PER_10K_S = 2

interface PathSpec {
  key: string
  label: string
  url: string
  /** Processes on the path, by role, each with the PIDs to account (nginx: master + worker). */
  processes: () => Record<string, number[]>
}

interface PathResult {
  throughput: ThroughputResult
  latency: LatencyResult
  /** CPU seconds per 10k requests, by process, under max load and at 200 req/s. */
  cpuPer10kLoaded: Record<string, number>
  cpuPer10kAt200: Record<string, number>
}

function settings (quick: boolean): { warmupS: number, throughputS: number, latencyS: number } {
  return quick ? { warmupS: 1, throughputS: 3, latencyS: 4 } : { warmupS: 3, throughputS: 15, latencyS: 30 }
}

async function measurePath (ctx: SuiteContext, path: PathSpec): Promise<PathResult> {
  const s = settings(ctx.quick)
  ctx.log(`request-path: ${path.label}: warm-up ${s.warmupS} s`)
  await wrkThroughput({ procs: ctx.procs, tmp: ctx.tmp, url: path.url, connections: CONNECTIONS, seconds: s.warmupS, maxRequests: MAX_RPS * s.warmupS })

  ctx.log(`request-path: ${path.label}: throughput, ${CONNECTIONS} connections, ${s.throughputS} s`)
  const pids = path.processes()
  const before = cpuSnapshot(pids)
  const throughput = await wrkThroughput({ procs: ctx.procs, tmp: ctx.tmp, url: path.url, connections: CONNECTIONS, seconds: s.throughputS, maxRequests: MAX_RPS * s.throughputS })
  const loaded = cpuDelta(before, cpuSnapshot(pids))
  if (throughput.errors > 0) ctx.log(`request-path: ${path.label}: ${throughput.errors} errors under load`)

  await new Promise(resolve => setTimeout(resolve, 1000))
  ctx.log(`request-path: ${path.label}: latency at ${RATE} req/s, ${s.latencyS} s`)
  const before200 = cpuSnapshot(pids)
  const latency = await autocannonLatency({ url: path.url, rate: RATE, connections: LATENCY_CONNECTIONS, seconds: s.latencyS })
  const at200 = cpuDelta(before200, cpuSnapshot(pids))
  if (latency.errors + latency.non2xx > 0) ctx.log(`request-path: ${path.label}: ${latency.errors} errors, ${latency.non2xx} non-2xx at ${RATE} req/s`)

  const per10k = (delta: Record<string, number>, requests: number): Record<string, number> => {
    const out: Record<string, number> = {}
    let total = 0
    for (const [role, seconds] of Object.entries(delta)) {
      out[role] = round(seconds / requests * 10_000, 4)
      total += seconds
    }
    out.total = round(total / requests * 10_000, 4)
    return out
  }
  return {
    throughput,
    latency,
    cpuPer10kLoaded: per10k(loaded, throughput.requests),
    cpuPer10kAt200: per10k(at200, latency.requests)
  }
}

/** Two node:http relays in a row in front of the app (bench/apps/node-hop.ts). */
async function startNodeChain (ctx: SuiteContext, started: Array<Child<unknown>>, app: App): Promise<PathSpec> {
  const startHop = async (name: string, upstreamPort: number): Promise<Child<number>> => {
    const hop = await ctx.procs.start({
      name,
      command: process.execPath,
      args: [NODE_HOP],
      env: { PORT: '0', UPSTREAM_PORT: String(upstreamPort) },
      ready: parseListeningLine
    })
    started.push(hop)
    return hop
  }
  const back = await startHop('node-hop-back', app.ready)
  const front = await startHop('node-hop-front', back.ready)
  const url = `http://127.0.0.1:${front.ready}/`
  await waitForRoute(url, 10_000)
  return {
    key: 'node2', label: 'node two-hop', url,
    processes: () => ({ 'node hop 1': [front.pid], 'node hop 2': [back.pid], app: [app.pid] })
  }
}

/** Why the nginx TLS chain cannot run here; undefined when it can. */
function nginxTlsMissing (): string | undefined {
  if (!nginxAvailable()) return 'n/a (nginx not installed)'
  if (!opensslAvailable()) return 'n/a (openssl not installed)'
  return undefined
}

/**
 * Two nginx in a row in front of the app. With `tls`, the back one listens with TLS (a
 * certificate made for this run) and the front one proxies to it over TLS.
 */
async function startNginxChain (ctx: SuiteContext, started: Array<Child<unknown>>, app: App, tls: boolean): Promise<PathSpec> {
  const suffix = tls ? '-tls' : ''
  const backTls = tls ? { tls: selfSignedCertificate(join(ctx.tmp, 'tls')) } : {}
  const back = await startNginx(ctx.procs, ctx.tmp, `nginx-back${suffix}`, app.ready, backTls)
  started.push(back)
  const front = await startNginx(ctx.procs, ctx.tmp, `nginx-front${suffix}`, back.port, { upstreamTls: tls })
  started.push(front)
  const url = `http://127.0.0.1:${front.port}/`
  await waitForRoute(url, 10_000)
  return {
    key: tls ? 'nginx2tls' : 'nginx2', label: tls ? 'nginx two-hop TLS' : 'nginx two-hop', url,
    processes: () => ({ 'nginx front': processTree(front.pid), 'nginx back': processTree(back.pid), app: [app.pid] })
  }
}

function pathRows (key: string, label: string, r: PathResult | undefined, why: string, roles: string[]): Row[] {
  const suite = 'request-path'
  if (r == null) {
    return [
      naRow(`request.rps.${key}`, suite, `max throughput c=${CONNECTIONS} · ${label}`, 'req/s', why),
      naRow(`request.p50.${key}`, suite, `p50 @${RATE} req/s · ${label}`, 'ms', why),
      naRow(`request.p99.${key}`, suite, `p99 @${RATE} req/s · ${label}`, 'ms', why),
      naRow(`request.p999.${key}`, suite, `p99.9 @${RATE} req/s · ${label}`, 'ms', why),
      ...[...roles, 'total'].map(role => naRow(`request.cpu.${key}.${role}`, suite, `CPU per 10k req · ${label} · ${role}`, 's', why)),
      naRow(`request.cpu200.${key}.total`, suite, `CPU per 10k req @${RATE} req/s · ${label} · total`, 's', why)
    ]
  }
  return [
    { id: `request.rps.${key}`, suite, metric: `max throughput c=${CONNECTIONS} · ${label}`, value: round(r.throughput.rps, 0), unit: 'req/s', better: 'higher' },
    { id: `request.p50.${key}`, suite, metric: `p50 @${RATE} req/s · ${label}`, value: round(r.latency.p50Ms), unit: 'ms', better: 'lower' },
    { id: `request.p99.${key}`, suite, metric: `p99 @${RATE} req/s · ${label}`, value: round(r.latency.p99Ms), unit: 'ms', better: 'lower' },
    { id: `request.p999.${key}`, suite, metric: `p99.9 @${RATE} req/s · ${label}`, value: round(r.latency.p999Ms), unit: 'ms', better: 'lower' },
    ...Object.entries(r.cpuPer10kLoaded).map(([role, value]): Row => ({
      id: `request.cpu.${key}.${role}`,
      suite,
      metric: `CPU per 10k req · ${label} · ${role}`,
      value,
      unit: 's',
      better: 'lower',
      digits: 3,
      ...(key === 'mesh' && role.endsWith('proxy') ? { target: { op: '<=', value: PROXY_CPU_PER_10K_S } } : {})
    })),
    { id: `request.cpu200.${key}.total`, suite, metric: `CPU per 10k req @${RATE} req/s · ${label} · total`, value: r.cpuPer10kAt200.total, unit: 's', better: 'lower', digits: 3 }
  ]
}

export const requestPath: Suite = {
  name: 'request-path',
  about: 'tiny GET: direct, mesh (pooled / stream per request), node / nginx / nginx TLS two-hop: throughput, latency at 200 req/s, CPU per 10k',
  async run (ctx: SuiteContext): Promise<SuiteResult> {
    if (!wrkAvailable()) throw new Error('wrk is not installed (/usr/bin/wrk)')
    const perRequest = ctx.features.streamPerRequest
    const clients = [{ name: 'client-proxy' }, ...(perRequest ? [{ name: 'client-proxy-1stream', args: ['--stream-per-request'] }] : [])]
    const tlsMissing = nginxTlsMissing()
    let mesh: Mesh | undefined
    // The two-hop chains' processes, stopped last-started first.
    const chains: Array<Child<unknown>> = []
    const results: Record<string, PathResult> = {}
    try {
      ctx.log('request-path: starting bootstrap, app, server proxy, client proxies')
      mesh = await startMesh({ procs: ctx.procs, dir: ctx.tmp, clients })
      const m = mesh
      const app = m.app
      const paths: PathSpec[] = [
        { key: 'direct', label: 'direct', url: `http://127.0.0.1:${app.ready}/`, processes: () => ({ app: [app.pid] }) },
        {
          key: 'mesh', label: 'mesh', url: `${m.clients[0].ready.http}/${SERVICE}/`,
          processes: () => ({ 'client proxy': [m.clients[0].pid], 'server proxy': [m.server.pid], app: [app.pid] })
        }
      ]
      if (perRequest) {
        paths.push({
          key: 'mesh-1stream', label: 'mesh, stream/request', url: `${m.clients[1].ready.http}/${SERVICE}/`,
          processes: () => ({ 'client proxy': [m.clients[1].pid], 'server proxy': [m.server.pid], app: [app.pid] })
        })
      }
      ctx.log('request-path: starting the two-hop chains')
      paths.push(await startNodeChain(ctx, chains, app))
      if (nginxAvailable()) paths.push(await startNginxChain(ctx, chains, app, false))
      if (tlsMissing == null) paths.push(await startNginxChain(ctx, chains, app, true))
      for (const path of paths) results[path.key] = await measurePath(ctx, path)
    } finally {
      for (const child of chains.reverse()) await child.stop('SIGTERM')
      await mesh?.stop()
    }

    const meshRoles = ['client proxy', 'server proxy', 'app']
    const nginxRoles = ['nginx front', 'nginx back', 'app']
    const rows: Row[] = [
      ...pathRows('direct', 'direct', results.direct, 'n/a', ['app']),
      ...pathRows('mesh', 'mesh', results.mesh, 'n/a', meshRoles),
      ...pathRows('mesh-1stream', 'mesh, stream/request', results['mesh-1stream'],
        perRequest ? 'n/a' : 'n/a (no --stream-per-request in this build)', meshRoles),
      ...pathRows('node2', 'node two-hop', results.node2, 'n/a', ['node hop 1', 'node hop 2', 'app']),
      ...pathRows('nginx2', 'nginx two-hop', results.nginx2, 'n/a (nginx not installed)', nginxRoles),
      ...pathRows('nginx2tls', 'nginx two-hop TLS', results.nginx2tls, tlsMissing ?? 'n/a', nginxRoles)
    ]

    // The targets, as ratios and differences.
    const suite = 'request-path'
    const ratio = (key: string, base = 'nginx2'): number | null => results[key] != null && results[base] != null ? round(results[key].throughput.rps / results[base].throughput.rps) : null
    const added = (key: string, q: 'p50Ms' | 'p99Ms'): number | null => results[key] != null && results.direct != null ? round(results[key].latency[q] - results.direct.latency[q]) : null
    const ratioNa = results.nginx2 == null ? 'n/a (nginx not installed)' : 'n/a'
    const tlsNa = tlsMissing ?? 'n/a'
    const oneNa = perRequest ? 'n/a' : 'n/a (no --stream-per-request in this build)'
    const withNa = (row: Row, why: string): Row => row.value == null ? { ...row, na: why } : row
    rows.push(
      withNa({ id: 'request.rps-ratio.mesh', suite, metric: 'throughput mesh / nginx two-hop', value: ratio('mesh'), unit: 'x', better: 'higher' }, ratioNa),
      withNa({ id: 'request.rps-ratio.mesh-1stream', suite, metric: 'throughput mesh stream/request / nginx', value: ratio('mesh-1stream'), unit: 'x', better: 'higher', target: { op: '>=', value: 0.5 } }, perRequest ? ratioNa : oneNa),
      withNa({ id: 'request.rps-ratio.mesh.node2', suite, metric: 'throughput mesh / node two-hop', value: ratio('mesh', 'node2'), unit: 'x', better: 'higher', target: { op: '>=', value: 1 } }, 'n/a'),
      withNa({ id: 'request.rps-ratio.mesh.nginx2tls', suite, metric: 'throughput mesh / nginx two-hop TLS', value: ratio('mesh', 'nginx2tls'), unit: 'x', better: 'higher', target: { op: '>=', value: 0.5 } }, tlsNa),
      withNa({ id: 'request.added-p50.mesh', suite, metric: `added p50 over direct @${RATE} · mesh`, value: added('mesh', 'p50Ms'), unit: 'ms', better: 'lower', target: { op: '<=', value: 0.5 } }, 'n/a'),
      withNa({ id: 'request.added-p99.mesh', suite, metric: `added p99 over direct @${RATE} · mesh`, value: added('mesh', 'p99Ms'), unit: 'ms', better: 'lower', target: { op: '<=', value: 2 } }, 'n/a'),
      withNa({ id: 'request.added-p50.mesh-1stream', suite, metric: `added p50 over direct @${RATE} · stream/request`, value: added('mesh-1stream', 'p50Ms'), unit: 'ms', better: 'lower', target: { op: '<=', value: 1 } }, oneNa),
      withNa({ id: 'request.added-p99.mesh-1stream', suite, metric: `added p99 over direct @${RATE} · stream/request`, value: added('mesh-1stream', 'p99Ms'), unit: 'ms', better: 'lower', target: { op: '<=', value: 3 } }, oneNa),
      withNa({ id: 'request.added-p50.node2', suite, metric: `added p50 over direct @${RATE} · node two-hop`, value: added('node2', 'p50Ms'), unit: 'ms', better: 'lower' }, 'n/a'),
      withNa({ id: 'request.added-p50.nginx2', suite, metric: `added p50 over direct @${RATE} · nginx two-hop`, value: added('nginx2', 'p50Ms'), unit: 'ms', better: 'lower' }, ratioNa),
      withNa({ id: 'request.added-p50.nginx2tls', suite, metric: `added p50 over direct @${RATE} · nginx two-hop TLS`, value: added('nginx2tls', 'p50Ms'), unit: 'ms', better: 'lower' }, tlsNa)
    )
    return {
      rows,
      details: {
        settings: { ...settings(ctx.quick), connections: CONNECTIONS, rate: RATE, latencyConnections: LATENCY_CONNECTIONS, loadGenerators: 'wrk -t1 (throughput), autocannon overallRate (latency)' },
        streamPerRequestSupported: perRequest,
        paths: results
      }
    }
  }
}
