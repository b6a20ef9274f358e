#!/usr/bin/env node
// `npm run fuzz`: the fuzz suite (test/fuzz) with HYPHAE_FUZZ_RUNS cases per surface (default
// 10,000), then a summary per surface: cases, failures (crashes, malformed answers, wrong error
// types), hangs (no answer and no close within the bound), time, and the RSS of the process
// under test before and after. Extra arguments go to vitest. Exits with vitest's status.
import { spawn } from 'node:child_process'
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..')
const runs = process.env.HYPHAE_FUZZ_RUNS ?? '10000'
const reportDir = mkdtempSync(join(tmpdir(), 'hyphae-fuzz-report-'))
const started = Date.now()
const ORDER = ['ingress', 'stream', 'alloc-parse', 'alloc-stream', 'config-file', 'config-load', 'cli-args', 'cli-values']

const vitest = spawn(process.execPath, [join(root, 'node_modules/vitest/vitest.mjs'), 'run', '--project', 'parallel', 'test/fuzz', ...process.argv.slice(2)], {
  cwd: root,
  stdio: 'inherit',
  env: { ...process.env, HYPHAE_FUZZ_RUNS: runs, HYPHAE_FUZZ_REPORT: reportDir }
})
const forward = signal => { vitest.kill(signal) }
process.on('SIGINT', forward)
process.on('SIGTERM', forward)

vitest.on('close', (code, signal) => {
  const reports = readdirSync(reportDir).filter(name => name.endsWith('.json'))
    .map(name => JSON.parse(readFileSync(join(reportDir, name), 'utf8')))
    .sort((a, b) => ORDER.indexOf(a.surface) - ORDER.indexOf(b.surface))
  rmSync(reportDir, { recursive: true, force: true })
  const mb = bytes => `${(bytes / 1024 / 1024).toFixed(1)} MB`
  const rows = reports.map(r => [r.surface, String(r.cases), String(r.failures), String(r.hangs), `${(r.durationMs / 1000).toFixed(1)} s`, `${r.slowestMs} ms`,
    `${mb(r.rssBefore)} → ${mb(r.rssAfter)}`, r.heapBefore != null ? `${mb(r.heapBefore)} → ${mb(r.heapAfter)}` : '-', r.rssOf])
  const header = ['surface', 'cases', 'failures', 'hangs', 'time', 'slowest', 'RSS before → after', 'heap (after GC)', 'process under test']
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map(row => row[i].length)))
  const line = row => row.map((cell, i) => i === row.length - 1 ? cell : cell.padEnd(widths[i])).join('  ')
  const out = ['', `hyphae fuzz summary: ${runs} cases per surface (parseAllocRequest and the command-line surfaces: 5×), ${((Date.now() - started) / 1000).toFixed(0)} s in all`, line(header), ...rows.map(line)]
  for (const r of reports) {
    out.push('', `${r.surface}: seed ${r.seed}; outcomes ${Object.entries(r.notes).map(([note, n]) => `${note} ${n}`).join(', ')}`)
    for (const [kind, n] of Object.entries(r.problemKinds)) out.push(`  ${n} × ${kind}`)
    for (const [kind, text] of Object.entries(r.minimal)) out.push(`  minimal counterexample for ${kind}:`, `    ${text}`)
  }
  const missing = ORDER.filter(surface => !reports.some(r => r.surface === surface))
  if (missing.length > 0) out.push('', `no report from: ${missing.join(', ')} (a file failed before its surface ran)`)
  process.stdout.write(`${out.join('\n')}\n`)
  process.exit(code ?? (signal != null ? 1 : 0))
})
