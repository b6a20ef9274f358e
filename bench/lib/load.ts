import { existsSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import autocannon from 'autocannon'
import type { ProcessSet } from './procs.js'
import { quantile } from './stats.js'

export const WRK_BIN = '/usr/bin/wrk'

export function wrkAvailable (): boolean {
  return existsSync(WRK_BIN)
}

/**
 * wrk's summary as one JSON line, and a request cap: each thread stops itself after
 * WRK_MAX_REQUESTS responses (wrk itself is bounded only in time).
 */
const WRK_SCRIPT = `local max = tonumber(os.getenv("WRK_MAX_REQUESTS") or "0")
local n = 0
function response(status, headers, body)
  n = n + 1
  if max > 0 and n >= max then wrk.thread:stop() end
end
function done(summary, latency, requests)
  io.write(string.format("WRKJSON {\\"requests\\":%d,\\"duration_us\\":%d,\\"bytes\\":%d,\\"connect\\":%d,\\"read\\":%d,\\"write\\":%d,\\"status\\":%d,\\"timeout\\":%d,\\"p50_us\\":%d,\\"p99_us\\":%d}\\n",
    summary.requests, summary.duration, summary.bytes, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout, latency:percentile(50), latency:percentile(99)))
end
`

export interface ThroughputResult {
  requests: number
  seconds: number
  rps: number
  /** Socket errors and non-2xx/3xx responses. */
  errors: number
  /** wrk's own latency figures under full load, ms. */
  p50Ms: number
  p99Ms: number
  /** The request cap was hit: rps is then an underestimate. */
  capped: boolean
}

export interface ThroughputOptions {
  procs: ProcessSet
  tmp: string
  url: string
  connections: number
  seconds: number
  maxRequests: number
}

/** Max throughput: wrk, one thread, N keep-alive connections, bounded in time and requests. */
export async function wrkThroughput (opts: ThroughputOptions): Promise<ThroughputResult> {
  const script = join(opts.tmp, 'wrk-summary.lua')
  writeFileSync(script, WRK_SCRIPT)
  const child = await opts.procs.start({
    name: 'wrk',
    command: WRK_BIN,
    args: ['-t1', `-c${opts.connections}`, `-d${opts.seconds}s`, '--timeout', '10s', '-s', script, opts.url],
    env: { WRK_MAX_REQUESTS: String(opts.maxRequests) }
  })
  const code = await child.exited
  await child.stop()
  const line = child.stdout.split('\n').find(l => l.startsWith('WRKJSON '))
  if (code !== 0 || line == null) throw new Error(`wrk failed (exit ${String(code)}):\n${child.describe()}`)
  const s = JSON.parse(line.slice('WRKJSON '.length)) as Record<string, number>
  const seconds = s.duration_us / 1e6
  return {
    requests: s.requests,
    seconds,
    rps: s.requests / seconds,
    errors: s.connect + s.read + s.write + s.status + s.timeout,
    p50Ms: s.p50_us / 1000,
    p99Ms: s.p99_us / 1000,
    capped: s.requests >= opts.maxRequests
  }
}

export interface LatencyResult {
  requests: number
  errors: number
  non2xx: number
  p50Ms: number
  p99Ms: number
  p999Ms: number
  maxMs: number
  seconds: number
}

export interface LatencyOptions {
  url: string
  /** Requests per second over all connections (autocannon overallRate). */
  rate: number
  connections: number
  seconds: number
}

/**
 * Latency at a fixed rate: autocannon with overallRate, bounded by request count (rate ×
 * seconds) and by a hard deadline. Percentiles come from every response's own duration
 * (float ms from autocannon's `response` event): autocannon's histogram keeps whole
 * milliseconds, too coarse for sub-millisecond paths.
 */
export async function autocannonLatency (opts: LatencyOptions): Promise<LatencyResult> {
  const samples: number[] = []
  let non2xx = 0
  let errors = 0
  const started = performance.now()
  const amount = opts.rate * opts.seconds
  await new Promise<void>((resolve, reject) => {
    const instance = autocannon({
      url: opts.url,
      connections: opts.connections,
      overallRate: opts.rate,
      amount,
      timeout: 10
    }, err => { clearTimeout(deadline); if (err != null) reject(err); else resolve() })
    instance.on('response', (_client, status, _bytes, ms) => {
      if (status >= 200 && status < 300) samples.push(ms)
      else non2xx++
    })
    instance.on('reqError', () => { errors++ })
    const deadline = setTimeout(() => { instance.stop() }, (opts.seconds * 2 + 10) * 1000)
  })
  return {
    requests: samples.length + non2xx,
    errors,
    non2xx,
    p50Ms: quantile(samples, 0.5),
    p99Ms: quantile(samples, 0.99),
    p999Ms: quantile(samples, 0.999),
    maxMs: quantile(samples, 1),
    seconds: (performance.now() - started) / 1000
  }
}

export interface RateTimeline {
  /** Per response, in order of arrival: when it ended (performance.now(), ms), its duration (ms) and status. */
  endedAt: number[]
  latencyMs: number[]
  status: number[]
  /** performance.now() of each socket error or timeout (autocannon `reqError`). */
  errorsAt: number[]
  /** performance.now() when the load began and when it stopped. */
  startedAt: number
  stoppedAt: number
  /** The deadline, not the request cap, ended the run (the rate fell behind). */
  hitDeadline: boolean
}

export interface RateTimelineOptions {
  url: string
  /** Requests per second over all connections (autocannon overallRate: a budget per second). */
  rate: number
  connections: number
  seconds: number
}

/**
 * A long run at a fixed rate that keeps every response's time, duration and status, for
 * figures over time windows (the soak suite). Bounded twice: autocannon stops after
 * rate × seconds requests, and a deadline stops it `seconds` after the start whatever it has
 * sent, so a run that fell behind (a second whose budget was not used up in that second
 * loses the rest: autocannon resets it every second) ends on time too. Requests in flight
 * at the deadline are dropped uncounted.
 */
export async function autocannonTimeline (opts: RateTimelineOptions): Promise<RateTimeline> {
  const out: RateTimeline = { endedAt: [], latencyMs: [], status: [], errorsAt: [], startedAt: performance.now(), stoppedAt: 0, hitDeadline: false }
  await new Promise<void>((resolve, reject) => {
    const instance = autocannon({
      url: opts.url,
      connections: opts.connections,
      overallRate: opts.rate,
      amount: opts.rate * opts.seconds,
      timeout: 10
    }, err => { clearTimeout(deadline); if (err != null) reject(err); else resolve() })
    instance.on('response', (_client, status, _bytes, ms) => {
      out.endedAt.push(performance.now())
      out.latencyMs.push(ms)
      out.status.push(status)
    })
    instance.on('reqError', () => { out.errorsAt.push(performance.now()) })
    const deadline = setTimeout(() => { out.hitDeadline = true; instance.stop() }, opts.seconds * 1000)
  })
  out.stoppedAt = performance.now()
  return out
}
