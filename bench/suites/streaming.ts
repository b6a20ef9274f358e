import type { Suite, SuiteContext, SuiteResult } from '../lib/context.js'
import { httpGet, SERVICE, startMesh, type Mesh } from '../lib/mesh.js'
import { cpuDelta, cpuSnapshot, rssBytes, RssSampler } from '../lib/proc-stats.js'
import { MB, round } from '../lib/stats.js'
import type { Row } from '../lib/table.js'
import { download, upload, type TransferResult } from '../lib/transfer.js'

/**
 * 2. Streaming: a 1 GB download and a 1 GB upload through the mesh (256 MB with --quick):
 * MB/s (MB = 10^6 bytes), and each proxy's peak RSS during the transfer against its idle
 * RSS just before it. The same transfers direct to the app give the ceiling of the client
 * and app processes themselves on this machine.
 */

interface Transfer {
  mbPerS: number
  seconds: number
  bytes: number
  /** Peak RSS during the transfer minus RSS just before, per proxy, MB. */
  rssGrowthMb?: Record<string, number>
  peakRssMb?: Record<string, number>
  idleRssMb?: Record<string, number>
  /** CPU seconds per GB moved, per process. */
  cpuPerGb?: Record<string, number>
}

const TIMEOUT_MS = 600_000

export const streaming: Suite = {
  name: 'streaming',
  about: '1 GB download and upload through the mesh: MB/s, proxies\' peak RSS vs idle',
  async run (ctx: SuiteContext): Promise<SuiteResult> {
    const size = ctx.quick ? 256_000_000 : 1_000_000_000
    const sizeLabel = ctx.quick ? '256 MB' : '1 GB'
    let mesh: Mesh | undefined
    const results: Record<string, Transfer> = {}
    try {
      ctx.log('streaming: starting bootstrap, app, server proxy, client proxy')
      mesh = await startMesh({ procs: ctx.procs, dir: ctx.tmp, clients: [{ name: 'client-proxy' }] })
      const m = mesh
      const direct = `http://127.0.0.1:${m.app.ready}`
      const meshed = `${m.clients[0].ready.http}/${SERVICE}`
      // Warm both ways (JIT, stream pool) with a few MB.
      await httpGet(`${meshed}/bytes/4000000`)
      await upload(`${meshed}/upload`, 4_000_000, 30_000)

      const check = (what: string, r: TransferResult & { reply?: string }): void => {
        if (r.status !== 200 || r.bytes !== size) throw new Error(`${what}: status ${r.status}, ${r.bytes} of ${size} bytes`)
        if (r.reply != null && !r.reply.includes(`"bytes":${size}`)) throw new Error(`${what}: the app counted ${r.reply.trim()}, not ${size}`)
      }
      const pids = { 'client proxy': [m.clients[0].pid], 'server proxy': [m.server.pid], app: [m.app.pid] }

      for (const dir of ['download', 'upload'] as const) {
        ctx.log(`streaming: ${dir} ${sizeLabel} direct`)
        const d = dir === 'download' ? await download(`${direct}/bytes/${size}`, TIMEOUT_MS) : await upload(`${direct}/upload`, size, TIMEOUT_MS)
        check(`direct ${dir}`, d)
        results[`${dir}.direct`] = { mbPerS: round(size / MB / d.seconds, 1), seconds: round(d.seconds), bytes: size }

        await new Promise(resolve => setTimeout(resolve, 1000))
        ctx.log(`streaming: ${dir} ${sizeLabel} through the mesh`)
        const proxies = [m.clients[0].pid, m.server.pid]
        const idle = proxies.map(pid => rssBytes(pid))
        const sampler = new RssSampler(proxies)
        const before = cpuSnapshot(pids)
        const r = dir === 'download' ? await download(`${meshed}/bytes/${size}`, TIMEOUT_MS) : await upload(`${meshed}/upload`, size, TIMEOUT_MS)
        const cpu = cpuDelta(before, cpuSnapshot(pids))
        const peaks = sampler.stop()
        check(`mesh ${dir}`, r)
        const peak = proxies.map(pid => peaks.get(pid) ?? 0)
        results[`${dir}.mesh`] = {
          mbPerS: round(size / MB / r.seconds, 1),
          seconds: round(r.seconds),
          bytes: size,
          idleRssMb: { 'client proxy': round(idle[0] / MB, 1), 'server proxy': round(idle[1] / MB, 1) },
          peakRssMb: { 'client proxy': round(peak[0] / MB, 1), 'server proxy': round(peak[1] / MB, 1) },
          rssGrowthMb: { 'client proxy': round((peak[0] - idle[0]) / MB, 1), 'server proxy': round((peak[1] - idle[1]) / MB, 1) },
          cpuPerGb: Object.fromEntries(Object.entries(cpu).map(([k, v]) => [k, round(v / (size / 1e9), 2)]))
        }
        await new Promise(resolve => setTimeout(resolve, 1000))
      }
    } finally {
      await mesh?.stop()
    }

    const suite = 'streaming'
    const rows: Row[] = []
    for (const dir of ['download', 'upload'] as const) {
      const r = results[`${dir}.mesh`]
      const d = results[`${dir}.direct`]
      rows.push(
        { id: `stream.${dir}.mesh`, suite, metric: `${sizeLabel} ${dir} · mesh`, value: r.mbPerS, unit: 'MB/s', better: 'higher', target: { op: '>=', value: 300 } },
        { id: `stream.${dir}.direct`, suite, metric: `${sizeLabel} ${dir} · direct (ceiling)`, value: d.mbPerS, unit: 'MB/s', better: 'higher' }
      )
      for (const role of ['client proxy', 'server proxy']) {
        const key = role.split(' ')[0]
        rows.push(
          { id: `stream.${dir}.idle-rss.${key}`, suite, metric: `  ${role} RSS idle before ${dir}`, value: r.idleRssMb?.[role] ?? null, unit: 'MB', better: 'lower' },
          { id: `stream.${dir}.rss-growth.${key}`, suite, metric: `  ${role} peak RSS - idle, ${dir}`, value: r.rssGrowthMb?.[role] ?? null, unit: 'MB', better: 'lower', target: { op: '<=', value: 50 } },
          { id: `stream.${dir}.cpu.${key}`, suite, metric: `  ${role} CPU per GB, ${dir}`, value: r.cpuPerGb?.[role] ?? null, unit: 's', better: 'lower' }
        )
      }
    }
    return { rows, details: { bytes: size, transfers: results } }
  }
}
