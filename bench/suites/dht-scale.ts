import { createHash, randomBytes } from 'node:crypto'
import { peerIdFromString } from '@libp2p/peer-id'
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { sha256 } from 'multiformats/hashes/sha2'
import type { Suite, SuiteContext, SuiteResult } from '../lib/context.js'
import { DHT_WORKER, REPO_ROOT } from '../lib/paths.js'
import { rssBytes } from '../lib/proc-stats.js'
import type { Child, ProcessSet } from '../lib/procs.js'
import { MB, median, quantile, round } from '../lib/stats.js'
import { naRow, type Row } from '../lib/table.js'

/**
 * 4. DHT scale: N libp2p nodes (shared/node.ts createMeshNode, as every daemon runs) on
 * 127.0.0.1, spread over child processes of NODES_PER_PROCESS nodes each (one event loop
 * for fifty nodes makes every lookup wait behind the others' work). Every node dials node 0
 * (the bootstrap), then runs one self-lookup, as kad-dht's periodic self-query would.
 * Trials: a random node provides a fresh CID; the node farthest from that CID in XOR
 * distance (so not one that stored the record) looks it up through
 * node.contentRouting.findProviders, timed to the first provider. Then the time from a new
 * node starting (fresh key, dial the bootstrap, provide, as a server proxy does) to a client
 * that never saw it finding it, looking up again and again.
 */

const NODES_PER_PROCESS = 10
const LOOKUP_TIMEOUT_MS = 10_000

interface Reply { id: number, result?: unknown, error?: string }

class Worker {
  private next = 1
  private readonly pending = new Map<number, { resolve: (v: unknown) => void, reject: (e: Error) => void }>()

  constructor (readonly child: Child<boolean>) {
    child.proc.on('message', (msg: Reply) => {
      const p = this.pending.get(msg.id)
      if (p == null) return
      this.pending.delete(msg.id)
      if (msg.error != null) p.reject(new Error(`${child.name}: ${msg.error}`))
      else p.resolve(msg.result)
    })
    void child.exited.then(code => {
      for (const p of this.pending.values()) p.reject(new Error(`${child.name} exited (${String(code)})\n${child.describe()}`))
      this.pending.clear()
    })
  }

  async call<T> (cmd: string, args: Record<string, unknown> = {}, timeoutMs = 120_000): Promise<T> {
    const id = this.next++
    return await new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id)
        reject(new Error(`${this.child.name}: ${cmd} took over ${timeoutMs} ms`))
      }, timeoutMs)
      this.pending.set(id, {
        resolve: v => { clearTimeout(timer); resolve(v as T) },
        reject: e => { clearTimeout(timer); reject(e) }
      })
      this.child.proc.send({ id, cmd, args })
    })
  }
}

interface NodeRef { worker: number, index: number, peerId: string, addr: string, kadId: Buffer }
interface Lookup { found: boolean, ms: number, hops: number | null, queries: number }
interface NewInstance { totalMs: number | null, joinMs: number, provideMs: number, findAfterProvideMs: number | null, attempts: number, hops: number | null, error?: string }

export interface ScaleResult {
  nodes: number
  processes: number
  startS: number
  settleS: number
  routingTable: { min: number, median: number, max: number }
  routingTableAfterTrials: { min: number, median: number, max: number }
  rssPerProcessMb: number[]
  lookups: Lookup[]
  provideMs: number[]
  provideErrors: string[]
  dialFailures: number
  selfQueryFailures: number
  newInstance: NewInstance[]
}

function nullIfNaN (value: number): number | null {
  return Number.isNaN(value) ? null : value
}

function kadId (bytes: Uint8Array): Buffer {
  return createHash('sha256').update(bytes).digest()
}

/** XOR distance comparison of two 32-byte kad IDs to a key: negative when a is closer. */
function compareDistance (a: Buffer, b: Buffer, key: Buffer): number {
  for (let i = 0; i < key.length; i++) {
    const da = a[i] ^ key[i]
    const db = b[i] ^ key[i]
    if (da !== db) return da - db
  }
  return 0
}

async function randomCid (): Promise<CID> {
  return CID.createV1(raw.code, await sha256.digest(randomBytes(32)))
}

async function startWorkers (procs: ProcessSet, count: number): Promise<Worker[]> {
  return await Promise.all(Array.from({ length: count }, async (_, i) => new Worker(await procs.start<boolean>({
    name: `dht-worker-${i}`,
    command: DHT_WORKER,
    args: [],
    cwd: REPO_ROOT,
    ipc: true,
    ready: line => line === 'ready' ? true : undefined
  }))))
}

async function runScale (ctx: SuiteContext, n: number): Promise<ScaleResult> {
  const trials = ctx.quick ? 5 : 50
  const newTrials = ctx.quick ? 1 : 5
  const processes = Math.ceil(n / NODES_PER_PROCESS)
  const t0 = performance.now()
  const workers = await startWorkers(ctx.procs, processes)
  try {
    const nodes: NodeRef[] = []
    const lists = await Promise.all(workers.map(async (w, i) => await w.call<Array<{ peerId: string, addr: string }>>('start', {
      count: Math.floor(n / processes) + (i < n % processes ? 1 : 0)
    })))
    lists.forEach((list, worker) => list.forEach((node, index) => {
      nodes.push({ worker, index, ...node, kadId: kadId(peerIdFromString(node.peerId).toMultihash().bytes) })
    }))
    const startS = (performance.now() - t0) / 1000
    const bootstrap = nodes[0].addr.includes('/p2p/') ? nodes[0].addr : `${nodes[0].addr}/p2p/${nodes[0].peerId}`
    const t1 = performance.now()
    const dialFailures = (await Promise.all(workers.map(async w => await w.call<number>('dial', { addr: bootstrap })))).reduce((a, b) => a + b, 0)
    const selfQueryFailures = (await Promise.all(workers.map(async w => await w.call<number>('selfQuery')))).reduce((a, b) => a + b, 0)
    if (dialFailures + selfQueryFailures > 0) ctx.log(`dht-scale: ${dialFailures} nodes could not dial the bootstrap, ${selfQueryFailures} self-lookups failed`)
    const settleS = (performance.now() - t1) / 1000
    const tables = (await Promise.all(workers.map(async w => await w.call<number[]>('tables')))).flat()
    ctx.log(`dht-scale: ${n} nodes in ${processes} processes up in ${startS.toFixed(1)} s, settled in ${settleS.toFixed(1)} s; routing tables ${Math.min(...tables)}–${Math.max(...tables)} peers`)

    // One trial at a time: a provide, then the lookup. (Providing several at once was tried:
    // the walks and their dials contend on this machine's two cores and take many times longer.)
    const provideMs: number[] = []
    const provideErrors: string[] = []
    const lookups: Lookup[] = []
    for (let t = 0; t < trials; t++) {
      const cid = await randomCid()
      const key = kadId(cid.multihash.bytes)
      const provider = nodes[Math.floor(Math.random() * nodes.length)]
      const finder = nodes.filter(x => x !== provider).sort((a, b) => compareDistance(b.kadId, a.kadId, key))[0]
      try {
        const p = await workers[provider.worker].call<{ ms: number }>('provide', { index: provider.index, cid: cid.toString() })
        provideMs.push(p.ms)
      } catch (err) {
        // Counted and reported; the trial goes on (the record may have reached some peers).
        provideErrors.push((err as Error).message.split('\n')[0])
      }
      lookups.push(await workers[finder.worker].call<Lookup>('find', { index: finder.index, cid: cid.toString(), timeoutMs: LOOKUP_TIMEOUT_MS }))
    }
    ctx.log(`dht-scale: ${n} nodes: lookup p50 ${median(lookups.map(l => l.ms)).toFixed(1)} ms over ${trials} trials`)

    const newInstance: NewInstance[] = []
    for (let t = 0; t < newTrials; t++) {
      const cid = await randomCid()
      const key = kadId(cid.multihash.bytes)
      const client = [...nodes].sort((a, b) => compareDistance(b.kadId, a.kadId, key))[0]
      // The new node lives in another process than the client's, when there is one.
      const host = workers[(client.worker + 1) % workers.length]
      // Both at once: the node starts while the client already looks. The CID is fresh, so
      // any provider the client finds is the new node.
      const [spawn, find] = await Promise.allSettled([
        host.call<{ peerId: string, startedAt: number, joinedAt: number, providedAt: number }>('spawnExtra', { bootstrap, cid: cid.toString() }),
        workers[client.worker].call<{ foundAt: number | null, attempts: number, hops: number | null }>('findUntil', {
          index: client.index, cid: cid.toString(), timeoutMs: 30_000
        }, 60_000)
      ])
      if (spawn.status === 'rejected' || find.status === 'rejected') {
        const reason = spawn.status === 'rejected' ? spawn.reason as Error : (find as PromiseRejectedResult).reason as Error
        newInstance.push({ totalMs: null, joinMs: NaN, provideMs: NaN, findAfterProvideMs: null, attempts: 0, hops: null, error: reason.message.split('\n')[0] })
      } else {
        const s = spawn.value
        const found = find.value
        newInstance.push({
          totalMs: found.foundAt == null ? null : found.foundAt - s.startedAt,
          joinMs: s.joinedAt - s.startedAt,
          provideMs: s.providedAt - s.joinedAt,
          findAfterProvideMs: found.foundAt == null ? null : found.foundAt - s.providedAt,
          attempts: found.attempts,
          hops: found.hops
        })
      }
      await host.call('stopExtra').catch(() => {})
    }
    const tablesAfter = (await Promise.all(workers.map(async w => await w.call<number[]>('tables')))).flat().sort((a, b) => a - b)
    const rssPerProcessMb = workers.map(w => round(rssBytes(w.child.pid) / MB, 1))
    const sorted = [...tables].sort((a, b) => a - b)
    return {
      nodes: n,
      processes,
      startS: round(startS, 2),
      settleS: round(settleS, 2),
      routingTable: { min: sorted[0], median: median(sorted), max: sorted[sorted.length - 1] },
      routingTableAfterTrials: { min: tablesAfter[0], median: median(tablesAfter), max: tablesAfter[tablesAfter.length - 1] },
      rssPerProcessMb,
      lookups: lookups.map(l => ({ ...l, ms: round(l.ms) })),
      provideMs: provideMs.map(v => round(v)),
      provideErrors,
      dialFailures,
      selfQueryFailures,
      newInstance: newInstance.map(x => ({ ...x, totalMs: x.totalMs == null ? null : round(x.totalMs), joinMs: round(x.joinMs), provideMs: round(x.provideMs), findAfterProvideMs: x.findAfterProvideMs == null ? null : round(x.findAfterProvideMs) }))
    }
  } finally {
    await Promise.allSettled(workers.map(async w => { await w.call('stop', {}, 20_000) }))
    // (stop answers, then the worker leaves on its own; SIGTERM below is for one that hangs.)
    for (const w of workers) await w.child.stop('SIGTERM', 3000)
  }
}

export const dhtScale: Suite = {
  name: 'dht-scale',
  about: '25 and 50 DHT nodes on 127.0.0.1: lookup p50/p99 and hops, new instance to found',
  async run (ctx: SuiteContext): Promise<SuiteResult> {
    // --quick: 50 nodes only (the target's scale); a 25-node mesh takes another ~40 s to set up.
    const sizes = ctx.quick ? [50] : [25, 50]
    const results: ScaleResult[] = []
    for (const n of sizes) results.push(await runScale(ctx, n))
    const suite = 'dht-scale'
    const rows: Row[] = []
    if (ctx.quick) {
      for (const [key, metric] of [['lookup-p50', 'lookup p50 (farthest node)'], ['lookup-p99', 'lookup p99'], ['hops-p50', 'hops p50'], ['new-instance-p50', 'new node start -> found']]) {
        rows.push(naRow(`dht.25.${key}`, suite, `25 nodes: ${metric}`, key.startsWith('hops') ? 'hops' : 'ms', 'n/a (full run only)'))
      }
    }
    for (const r of results) {
      const found = r.lookups.filter(l => l.found)
      const ms = found.map(l => l.ms)
      const hops = found.map(l => l.hops ?? 0)
      const noneFound = 'n/a (no lookup found it)'
      const fresh = r.newInstance.map(x => x.totalMs).filter((v): v is number => v != null)
      rows.push(
        { id: `dht.${r.nodes}.lookup-p50`, suite, metric: `${r.nodes} nodes: lookup p50 (farthest node)`, value: nullIfNaN(round(median(ms), 1)), na: noneFound, unit: 'ms', better: 'lower', ...(r.nodes === 50 ? { target: { op: '<=' as const, value: 100 } } : {}) },
        { id: `dht.${r.nodes}.lookup-p99`, suite, metric: `${r.nodes} nodes: lookup p99`, value: nullIfNaN(round(quantile(ms, 0.99), 1)), na: noneFound, unit: 'ms', better: 'lower' },
        { id: `dht.${r.nodes}.hops-p50`, suite, metric: `${r.nodes} nodes: hops p50`, value: nullIfNaN(median(hops)), na: noneFound, unit: 'hops', better: 'lower', digits: 1 },
        { id: `dht.${r.nodes}.hops-max`, suite, metric: `${r.nodes} nodes: hops max`, value: hops.length === 0 ? null : Math.max(...hops), na: noneFound, unit: 'hops', better: 'lower', digits: 0 },
        { id: `dht.${r.nodes}.found`, suite, metric: `${r.nodes} nodes: lookups that found it`, value: round(found.length / r.lookups.length * 100, 1), unit: '%', better: 'higher', digits: 0 },
        { id: `dht.${r.nodes}.provide-p50`, suite, metric: `${r.nodes} nodes: provide p50`, value: nullIfNaN(round(median(r.provideMs), 1)), na: 'n/a (every provide failed)', unit: 'ms', better: 'lower' },
        { id: `dht.${r.nodes}.new-instance-p50`, suite, metric: `${r.nodes} nodes: new node start -> found, p50 of ${r.newInstance.length}`, value: fresh.length === 0 ? null : round(median(fresh), 0), unit: 'ms', better: 'lower', na: 'n/a (never found)' },
        { id: `dht.${r.nodes}.new-instance-join-p50`, suite, metric: '  of which: start, dial bootstrap, table', na: 'n/a', value: nullIfNaN(round(median(r.newInstance.map(x => x.joinMs).filter(Number.isFinite)), 0)), unit: 'ms', better: 'lower' },
        { id: `dht.${r.nodes}.new-instance-provide-p50`, suite, metric: '  its provide (found often before it ends)', na: 'n/a', value: nullIfNaN(round(median(r.newInstance.map(x => x.provideMs).filter(Number.isFinite)), 0)), unit: 'ms', better: 'lower' }
      )
    }
    return { rows, details: { nodesPerProcess: NODES_PER_PROCESS, scales: results } }
  }
}
