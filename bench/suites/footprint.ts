import { join } from 'node:path'
import type { Suite, SuiteContext, SuiteResult } from '../lib/context.js'
import { SERVICE, startProxy, startTinyApp, writeBenchConfig, type DaemonReady } from '../lib/mesh.js'
import { ALLOCATOR_BIN, REPO_ROOT } from '../lib/paths.js'
import { daemonArgv } from '../../shared/node-flags.js'
import { pssBytes, rssBytes, rssSplit } from '../lib/proc-stats.js'
import type { Child } from '../lib/procs.js'
import { MB, round } from '../lib/stats.js'
import { naRow, type Row } from '../lib/table.js'
import { parseReadyLine } from '../../shared/ready.js'

/**
 * 5. Footprint: the RSS of one client proxy, one server proxy and one allocator, each left
 * idle (no request at all) for 30 s after its `ready` line (10 s with --quick).
 */
export const footprint: Suite = {
  name: 'footprint',
  about: 'idle RSS of a client proxy, a server proxy and an allocator after 30 s',
  async run (ctx: SuiteContext): Promise<SuiteResult> {
    const waitS = ctx.quick ? 10 : 30
    const started: Array<Child<unknown>> = []
    const rss: Record<string, number> = {}
    const split: Record<string, { anonMb: number, fileMb: number, pssMb: number | null }> = {}
    let allocatorWhy = 'n/a (allocator not built yet)'
    try {
      const configFile = writeBenchConfig(ctx.tmp)
      ctx.log('footprint: starting bootstrap, app, server proxy, client proxy' + (ctx.features.allocator ? ', allocator' : ''))
      const bootstrap = await startProxy(ctx.procs, { name: 'bootstrap', configFile })
      started.push(bootstrap)
      const bootAddr = bootstrap.ready.multiaddrs[0]
      const app = await startTinyApp(ctx.procs)
      started.push(app)
      const server = await startProxy(ctx.procs, { name: 'server-proxy', configFile, bootstrap: bootAddr, server: { service: SERVICE, appPort: app.ready } })
      started.push(server)
      const client = await startProxy(ctx.procs, { name: 'client-proxy', configFile, bootstrap: bootAddr })
      started.push(client)
      const measured: Record<string, number> = { 'client proxy': client.pid, 'server proxy': server.pid }
      if (ctx.features.allocator) {
        // HOOK(allocator): process runtime (no Docker side effects), an ephemeral metrics port
        // (its default 9101 would collide with anything else on this host); keep in step with its options.
        try {
          const allocator = await ctx.procs.start<DaemonReady>({
            name: 'allocator',
            command: process.execPath,
            args: daemonArgv(ALLOCATOR_BIN, ['--configfile', configFile, '--bootstrap', bootAddr, '--runtime', 'process', '--metrics', '0', '--data-dir', join(ctx.tmp, 'allocator-footprint')]),
            cwd: REPO_ROOT,
            ready: line => parseReadyLine(line) as DaemonReady | undefined
          })
          started.push(allocator)
          measured.allocator = allocator.pid
        } catch (err) {
          allocatorWhy = 'n/a (the allocator did not start)'
          ctx.log(`footprint: allocator did not start: ${(err as Error).message}`)
        }
      }
      ctx.log(`footprint: idle for ${waitS} s`)
      await new Promise(resolve => setTimeout(resolve, waitS * 1000))
      for (const [role, pid] of Object.entries({ ...measured, 'app (reference)': app.pid })) {
        rss[role] = round(rssBytes(pid) / MB, 1)
        const { anon, file } = rssSplit(pid)
        const pss = pssBytes(pid)
        split[role] = { anonMb: round(anon / MB, 1), fileMb: round(file / MB, 1), pssMb: pss == null ? null : round(pss / MB, 1) }
      }
    } finally {
      for (const child of started.reverse()) await child.stop('SIGINT')
    }
    const suite = 'footprint'
    const row = (key: string, role: string): Row => rss[role] != null
      ? { id: `footprint.${key}`, suite, metric: `idle RSS after ${waitS} s · ${role}`, value: rss[role], unit: 'MB', better: 'lower', target: { op: '<=', value: 60 } }
      : naRow(`footprint.${key}`, suite, `idle RSS after ${waitS} s · ${role}`, 'MB', allocatorWhy, { op: '<=', value: 80 })
    return {
      rows: [row('client', 'client proxy'), row('server', 'server proxy'), row('allocator', 'allocator')],
      details: { waitS, rssMb: rss, rssSplit: split }
    }
  }
}
