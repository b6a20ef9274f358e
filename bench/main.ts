#!/usr/bin/env node
// `npm run bench [-- --quick] [-- --only suite,suite] [-- --out DIR] [-- --profile DIR]`:
// runs the benchmark suites against the built daemons in dist/, prints one table (with the
// previous run's figures beside them) and writes bench/results/<date>.json.
import '../shared/polyfill.js'
import { chmodSync, mkdtempSync, rmSync } from 'node:fs'
import { loadavg, tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { parseArgs } from 'node:util'
import type { Suite, SuiteContext } from './lib/context.js'
import { detectFeatures } from './lib/mesh.js'
import { REPO_ROOT, RESULTS_DIR } from './lib/paths.js'
import { ProcessSet } from './lib/procs.js'
import { gitInfo, machineInfo, previousResults, writeResults, type RunResults } from './lib/results.js'
import { formatTable, naRow, type Row } from './lib/table.js'
import { PROFILE_LOADS, runProfile, type ProfileLoad } from './profile.js'
import { coldStart } from './suites/cold-start.js'
import { dhtScale } from './suites/dht-scale.js'
import { footprint } from './suites/footprint.js'
import { requestPath } from './suites/request-path.js'
import { routing } from './suites/routing.js'
import { soak } from './suites/soak.js'
import { streaming } from './suites/streaming.js'

const SUITES: Suite[] = [requestPath, streaming, coldStart, dhtScale, footprint, routing, soak]

const USAGE = `usage: npm run bench -- [--quick] [--only SUITE,SUITE] [--out DIR]
       npm run bench -- --profile DIR [--load rps|download|upload] [--seconds N]

  --quick          shorter runs and smaller transfers (the whole run under 3 minutes)
  --only LIST      run only these suites (comma separated)
  --out DIR        where results/<date>.json go (default bench/results)
  --profile DIR    instead of the suites: run a mesh load with the client and server
                   proxies under node --cpu-prof, write the .cpuprofile files to DIR and
                   print where the time goes (self time by function and by module)
  --load KIND      the profiled load: rps (wrk, 32 connections, tiny GETs; default),
                   download or upload (one 1 GB transfer)
  --seconds N      length of the rps load (default 15)
  -h, --help       this text

suites:
${SUITES.map(s => `  ${s.name.padEnd(14)} ${s.about}`).join('\n')}`

function fail (message: string): never {
  process.stderr.write(`bench: ${message}\n`)
  process.exit(2)
}

async function main (): Promise<number> {
  let values
  try {
    ({ values } = parseArgs({
      args: process.argv.slice(2),
      options: {
        quick: { type: 'boolean', default: false },
        only: { type: 'string' },
        out: { type: 'string' },
        profile: { type: 'string' },
        seconds: { type: 'string' },
        load: { type: 'string', default: 'rps' },
        help: { type: 'boolean', short: 'h', default: false }
      },
      strict: true,
      allowPositionals: false
    }))
  } catch (err) {
    fail(`${(err as Error).message} (see --help)`)
  }
  if (values.help === true) {
    process.stdout.write(`${USAGE}\n`)
    return 0
  }
  let suites = SUITES
  if (values.only != null) {
    const names = values.only.split(',').map(s => s.trim()).filter(s => s !== '')
    const unknown = names.filter(n => !SUITES.some(s => s.name === n))
    if (unknown.length > 0) fail(`unknown suite ${unknown.join(', ')}; suites: ${SUITES.map(s => s.name).join(', ')}`)
    suites = SUITES.filter(s => names.includes(s.name))
  }
  const outDir = values.out != null ? resolve(values.out) : RESULTS_DIR

  const procs = new ProcessSet()
  const controller = new AbortController()
  const tmp = mkdtempSync(join(tmpdir(), 'hyphae-bench-'))
  // The allocators' data dirs are in it, and their apps (run as nobody under root) must pass
  // through to their services' data: an allocator refuses to start apps that cannot.
  chmodSync(tmp, 0o711)
  const cleanupSync = (): void => {
    procs.killAllSync()
    rmSync(tmp, { recursive: true, force: true })
  }
  // Whatever happens, no process of ours outlives the benchmark.
  process.on('exit', cleanupSync)
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(signal, () => {
      process.stderr.write(`\nbench: ${signal}: stopping ${procs.size} process(es) and exiting\n`)
      controller.abort()
      cleanupSync()
      process.exit(signal === 'SIGINT' ? 130 : 143)
    })
  }
  const log = (message: string): void => {
    process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${message}\n`)
  }

  if (values.profile != null) {
    const seconds = values.seconds != null ? Number(values.seconds) : 15
    if (!Number.isInteger(seconds) || seconds <= 0 || seconds > 600) fail(`invalid --seconds '${values.seconds}'`)
    try {
      const load = values.load as ProfileLoad
      if (!PROFILE_LOADS.includes(load)) fail(`invalid --load '${values.load}': expected ${PROFILE_LOADS.join(', ')}`)
      process.stdout.write(await runProfile({ procs, tmp, log, dir: resolve(values.profile), seconds, load }) + '\n')
      return 0
    } finally {
      await procs.stopAll()
    }
  }

  const started = new Date()
  const features = detectFeatures()
  log(`features: --stream-per-request ${features.streamPerRequest ? 'yes' : 'NO (rows print n/a)'}, allocator ${features.allocator ? 'yes' : 'NO (allocator rows print n/a)'}`)
  const loadAtStart = loadavg().map(v => Math.round(v * 100) / 100)
  const load = loadAtStart[0]
  if (load > 0.5) log(`warning: load average ${load.toFixed(2)} at start: other work on this machine will skew the figures`)
  const previous = previousResults(outDir, values.quick === true)

  const ctx: SuiteContext = { quick: values.quick === true, procs, tmp, features, signal: controller.signal, log }
  const rows: Row[] = []
  const details: Record<string, unknown> = {}
  let failed = 0
  for (const suite of suites) {
    const t0 = performance.now()
    log(`suite ${suite.name}: start`)
    try {
      const result = await suite.run(ctx)
      rows.push(...result.rows)
      details[suite.name] = result.details
    } catch (err) {
      failed++
      const message = (err as Error).message
      log(`suite ${suite.name}: FAILED: ${(err as Error).stack ?? message}`)
      rows.push(naRow(`${suite.name}.error`, suite.name, 'suite failed', '', `error: ${message.split('\n')[0].slice(0, 100)}`))
      details[suite.name] = { error: message }
    } finally {
      // A suite stops what it started; this is the safety net if it could not.
      await procs.stopAll()
    }
    log(`suite ${suite.name}: done in ${((performance.now() - t0) / 1000).toFixed(1)} s`)
  }

  const args = process.argv.slice(2).join(' ')
  const results: RunResults = {
    date: started.toISOString(),
    command: process.env.npm_lifecycle_event === 'bench' ? `npm run bench${args !== '' ? ` -- ${args}` : ''}` : `node dist/bench/main.js ${args}`.trim(),
    quick: ctx.quick,
    suites: suites.map(s => s.name),
    machine: { ...machineInfo(), loadAverageAtStart: loadAtStart },
    git: gitInfo(REPO_ROOT),
    durationS: Math.round((Date.now() - started.getTime()) / 100) / 10,
    rows,
    details: { features, loadAverageAtEnd: loadavg().map(v => Math.round(v * 100) / 100), ...details }
  }
  const m = results.machine
  const loadEnd = (results.details.loadAverageAtEnd as number[])[0]
  process.stdout.write(`\nhyphae benchmarks, ${ctx.quick ? 'quick' : 'full'} run, ${results.date}: ${m.cpus} × ${m.cpuModel}, ${m.memoryGiB} GiB, Node ${m.node}, ${results.durationS} s\n`)
  process.stdout.write(`load average (1 min) at start ${m.loadAverageAtStart[0]}, at end ${loadEnd}: anything above ~0.5 means other work shared the CPUs\n\n`)
  process.stdout.write(formatTable(rows, { previous: previous?.values, previousName: previous?.name }) + '\n')
  const file = writeResults(outDir, results)
  process.stdout.write(`\nresults: ${file}\n`)
  return failed > 0 ? 1 : 0
}

// process.exit: a stray timer of a load generator must not keep the benchmark alive.
main().then(code => { process.exit(code) }, err => {
  process.stderr.write(`bench: ${(err as Error).stack ?? String(err)}\n`)
  process.exit(1)
})
