#!/usr/bin/env node
// Toy store load client, after the seed's client.py: `mix` queries a random toy and, when it
// is in stock, buys it with probability p; `query` and `buy` send a series of one kind.
//   node dist/examples/toystore/client.js --url http://127.0.0.1:PORT/frontend [--mode mix|query|buy]
//     [--requests N] [--concurrency C] [--buy-probability P] [--product NAME] [--quantity Q]
//     [--timeout MS] [--json]
import { Agent } from 'node:http'
import { parseArgs } from 'node:util'
import { INITIAL_STOCK } from './catalog.js'
import { callJson, isEntryPoint, UpstreamError } from './http-util.js'

export type LoadMode = 'mix' | 'query' | 'buy'

export interface LoadOptions {
  /** The frontend's base URL, e.g. http://127.0.0.1:4321/frontend through the mesh. */
  url: string
  mode: LoadMode
  /** Queries (mix, query) or buys (buy) to send; mix's buys come on top. */
  requests: number
  concurrency: number
  buyProbability: number
  quantity: number
  /** Toys to pick from at random. */
  products: string[]
  timeoutMs: number
  random?: () => number
}

export interface LoadSummary {
  requests: number
  ok: number
  /** Failures by `<status> <message>` or by `timeout` / `unreachable`. */
  failed: Record<string, number>
  latencyMs: { p50: number, p90: number, p99: number, max: number }
  orders: number
}

export async function runLoad (opts: LoadOptions): Promise<LoadSummary> {
  const random = opts.random ?? Math.random
  const base = opts.url.replace(/\/+$/, '')
  const agent = new Agent({ keepAlive: true, maxSockets: opts.concurrency })
  const latencies: number[] = []
  const summary: LoadSummary = { requests: 0, ok: 0, failed: {}, latencyMs: { p50: 0, p90: 0, p99: 0, max: 0 }, orders: 0 }

  /** One request, counted; its `data` when it succeeded. */
  const send = async (method: string, path: string, body?: unknown): Promise<Record<string, unknown> | undefined> => {
    const started = performance.now()
    summary.requests++
    let outcome: string
    let data: Record<string, unknown> | undefined
    try {
      const reply = await callJson(base + path, { method, body, agent, timeoutMs: opts.timeoutMs })
      const parsed = reply.body as { data?: Record<string, unknown>, error?: { message?: unknown } }
      if (reply.status >= 200 && reply.status < 300) data = parsed.data ?? {}
      outcome = `${reply.status} ${typeof parsed.error?.message === 'string' ? parsed.error.message : ''}`.trim()
    } catch (err) {
      outcome = err instanceof UpstreamError ? err.kind : 'error'
    }
    latencies.push(performance.now() - started)
    if (data !== undefined) summary.ok++
    else summary.failed[outcome] = (summary.failed[outcome] ?? 0) + 1
    return data
  }
  const pick = (): string => opts.products[Math.floor(random() * opts.products.length)]
  const buy = async (name: string): Promise<void> => {
    if (await send('POST', '/orders', { name, quantity: opts.quantity }) !== undefined) summary.orders++
  }

  let next = 0
  const worker = async (): Promise<void> => {
    // Each worker takes the next slot until all are taken: the count bounds the run, and the
    // per-request timeout bounds each slot.
    while (next < opts.requests) {
      next++
      const name = pick()
      if (opts.mode === 'buy') { await buy(name); continue }
      const product = await send('GET', `/products/${encodeURIComponent(name)}`)
      if (opts.mode === 'mix' && typeof product?.quantity === 'number' && product.quantity > 0 && random() < opts.buyProbability) {
        await buy(name)
      }
    }
  }
  try {
    await Promise.all(Array.from({ length: Math.min(opts.concurrency, opts.requests) }, worker))
  } finally {
    agent.destroy()
  }

  latencies.sort((a, b) => a - b)
  // Nearest rank: the smallest latency that at least q of the requests did not exceed.
  const at = (q: number): number => latencies.length === 0 ? 0 : round(latencies[Math.ceil(q * latencies.length) - 1])
  summary.latencyMs = { p50: at(0.5), p90: at(0.9), p99: at(0.99), max: at(1) }
  return summary
}

function round (ms: number): number { return Math.round(ms * 100) / 100 }

export function formatSummary (s: LoadSummary): string {
  const lines = [`requests ${s.requests}  ok ${s.ok}  failed ${s.requests - s.ok}`]
  for (const [reason, n] of Object.entries(s.failed).sort((a, b) => b[1] - a[1])) lines.push(`  ${reason}: ${n}`)
  const l = s.latencyMs
  lines.push(`latency ms  p50 ${l.p50}  p90 ${l.p90}  p99 ${l.p99}  max ${l.max}`, `orders ${s.orders}`)
  return lines.join('\n') + '\n'
}

/** The command line as LoadOptions; throws a one-line message on anything wrong. */
export function parseClientArgs (argv: string[]): LoadOptions & { json: boolean } {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: false,
    options: {
      url: { type: 'string' },
      mode: { type: 'string', default: 'mix' },
      requests: { type: 'string', default: '100' },
      concurrency: { type: 'string', default: '4' },
      'buy-probability': { type: 'string', default: '0.5' },
      product: { type: 'string' },
      quantity: { type: 'string', default: '1' },
      timeout: { type: 'string', default: '10000' },
      json: { type: 'boolean', default: false }
    }
  })
  const count = (flag: string, text: string, max: number): number => {
    const n = Number(text)
    if (!/^\d+$/.test(text) || n < 1 || n > max) throw new Error(`--${flag} must be an integer from 1 to ${max}, not ${JSON.stringify(text)}`)
    return n
  }
  if (values.url === undefined) throw new Error('--url is required (e.g. --url http://127.0.0.1:4321/frontend)')
  if (!/^https?:\/\//.test(values.url) || !URL.canParse(values.url)) throw new Error(`--url must be an http URL, not ${JSON.stringify(values.url)}`)
  if (!['mix', 'query', 'buy'].includes(values.mode)) throw new Error(`--mode must be mix, query or buy, not ${JSON.stringify(values.mode)}`)
  const p = Number(values['buy-probability'])
  if (values['buy-probability'].trim() === '' || !(p >= 0 && p <= 1)) throw new Error('--buy-probability must be a number from 0 to 1')
  return {
    url: values.url,
    mode: values.mode as LoadMode,
    requests: count('requests', values.requests, 10_000_000),
    concurrency: count('concurrency', values.concurrency, 1000),
    buyProbability: p,
    quantity: count('quantity', values.quantity, 1_000_000),
    products: values.product === undefined ? Object.keys(INITIAL_STOCK) : [values.product],
    timeoutMs: count('timeout', values.timeout, 600_000),
    json: values.json
  }
}

if (isEntryPoint(import.meta.url)) {
  let opts: ReturnType<typeof parseClientArgs>
  try {
    opts = parseClientArgs(process.argv.slice(2))
  } catch (err) {
    // parseArgs' own errors (an unknown flag, a missing value) are one line already.
    process.stderr.write(`client: ${err instanceof Error ? err.message : String(err)}\n`)
    process.exit(2)
  }
  runLoad(opts).then(summary => {
    process.stdout.write(opts.json ? JSON.stringify(summary) + '\n' : formatSummary(summary))
  }, (err: unknown) => {
    process.stderr.write(`client: ${err instanceof Error ? err.message : String(err)}\n`)
    process.exit(1)
  })
}
