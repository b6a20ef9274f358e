import { mkdirSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { formatSummary, summarizeProfile } from './lib/cpuprofile.js'
import { wrkThroughput } from './lib/load.js'
import { SERVICE, startMesh, type Mesh } from './lib/mesh.js'
import type { ProcessSet } from './lib/procs.js'
import { MB } from './lib/stats.js'
import { download, upload } from './lib/transfer.js'

export type ProfileLoad = 'rps' | 'download' | 'upload'
export const PROFILE_LOADS: ProfileLoad[] = ['rps', 'download', 'upload']

export interface ProfileOptions {
  procs: ProcessSet
  tmp: string
  log: (message: string) => void
  /** Where the .cpuprofile files go (client/ and server/ below it). */
  dir: string
  seconds: number
  /** rps: wrk, 32 connections, tiny GETs; download/upload: one 1 GB transfer. */
  load: ProfileLoad
}

/**
 * A mesh load (the wrk throughput run, or a 1 GB transfer) with the client and server proxies under
 * `node --cpu-prof`; the profiles are written when the proxies exit (SIGINT), then summed up
 * by self time. The profiles also hold start-up and a 2 s warm-up: small next to the load.
 */
export async function runProfile (opts: ProfileOptions): Promise<string> {
  const clientDir = join(opts.dir, 'client')
  const serverDir = join(opts.dir, 'server')
  mkdirSync(clientDir, { recursive: true })
  mkdirSync(serverDir, { recursive: true })
  const before = new Set([...readdirSync(clientDir).map(f => join(clientDir, f)), ...readdirSync(serverDir).map(f => join(serverDir, f))])
  let mesh: Mesh | undefined
  let result: string | undefined
  try {
    opts.log('profile: starting the mesh with the proxies under --cpu-prof')
    mesh = await startMesh({
      procs: opts.procs,
      dir: opts.tmp,
      clients: [{ name: 'client-proxy', nodeArgs: ['--cpu-prof', '--cpu-prof-dir', clientDir] }],
      serverNodeArgs: ['--cpu-prof', '--cpu-prof-dir', serverDir]
    })
    const base = `${mesh.clients[0].ready.http}/${SERVICE}`
    if (opts.load === 'rps') {
      await wrkThroughput({ procs: opts.procs, tmp: opts.tmp, url: `${base}/`, connections: 32, seconds: 2, maxRequests: 400_000 })
      opts.log(`profile: wrk, 32 connections, ${opts.seconds} s`)
      const r = await wrkThroughput({ procs: opts.procs, tmp: opts.tmp, url: `${base}/`, connections: 32, seconds: opts.seconds, maxRequests: 200_000 * opts.seconds })
      result = `mesh throughput under the profiler: ${r.rps.toFixed(0)} req/s (the profiler itself costs some)`
    } else {
      const size = 1_000_000_000
      opts.log(`profile: ${opts.load} of 1 GB`)
      const r = opts.load === 'download' ? await download(`${base}/bytes/${size}`, 600_000) : await upload(`${base}/upload`, size, 600_000)
      result = `1 GB ${opts.load} under the profiler: ${(size / MB / r.seconds).toFixed(1)} MB/s`
    }
  } finally {
    await mesh?.stop()
  }
  const out = [result ?? 'the load did not finish', '']
  for (const [title, dir] of [['client proxy', clientDir], ['server proxy', serverDir]]) {
    const files = readdirSync(dir).map(f => join(dir, f)).filter(f => f.endsWith('.cpuprofile') && !before.has(f))
    if (files.length === 0) {
      out.push(`${title}: no profile written in ${dir}`)
      continue
    }
    for (const file of files) out.push(formatSummary(`${title} (${file})`, summarizeProfile(file)), '')
  }
  return out.join('\n')
}
