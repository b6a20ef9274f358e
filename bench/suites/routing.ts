import { writeFileSync } from 'node:fs'
import { Agent, request } from 'node:http'
import { join } from 'node:path'
import type { Suite, SuiteContext, SuiteResult } from '../lib/context.js'
import { LatencyRelay } from '../lib/latency-relay.js'
import { startProxy, type App, type Daemon } from '../lib/mesh.js'
import { HELLO_APP } from '../lib/paths.js'
import { freePort, type ProcessSet } from '../lib/procs.js'
import { median, round } from '../lib/stats.js'
import type { Row } from '../lib/table.js'
import { parseListeningLine } from '../../shared/ready.js'

/**
 * 6. Routing, on the example app (`dist/examples/hello/server.js`, which answers
 * `hello from <INSTANCE>`, so every response names the instance that served it):
 *
 * (a) RTT move: two instances behind chunk-delaying TCP relays (one way 2.5 ms and 25 ms;
 *     each server proxy announces only its relay's address), record softRttMs 100 /
 *     hardRttMs 300, the client proxy started last so that it dials both through the relays.
 *     Sequential GETs until the near instance serves; then its relay's one-way delay goes to
 *     200 ms (RTT ~400 ms, past the hard 300) at t0; GETs go on, one after another. The
 *     figure is the time from t0 to the last response the near instance served (0 if none
 *     after t0). The watch ends 6 s after t0, or 2 s after the last such response. Median of
 *     3 (1 in --quick); before each trial the delay goes back to 2.5 ms and a fresh client
 *     proxy starts (one that never saw the near instance over its limit).
 * (b) Spread: three equal instances (no relays), the client last, waiting until it knows
 *     all three; 4 keep-alive connections send 3000 GETs (1000 in --quick) back to back. The
 *     figure is the largest distance of one instance's share from a third, in percentage points.
 * (c) Kill under load, on the same three right after: as many GETs again; after 500 sent (300
 *     in --quick), one server proxy is SIGKILLed (its app too). Failed = non-2xx + socket
 *     errors, over all requests.
 */

const SERVICE = 'hello'
const NEAR_MS = 2.5
const FAR_MS = 25
const BROKEN_MS = 200

function writeConfig (dir: string, rtt?: { soft: number, hard: number }): string {
  const file = join(dir, rtt != null ? 'routing-rtt.json' : 'routing-kill.json')
  const record = { command: `"${process.execPath}" "${HELLO_APP}"`, health: '/healthz', ...(rtt != null ? { softRttMs: rtt.soft, hardRttMs: rtt.hard } : {}) }
  writeFileSync(file, JSON.stringify({ Perf: { SoftReq: { RTT: 100 }, HardReq: { RTT: 1000 } }, Bootstraps: [], Services: { [SERVICE]: record }, RegistryKeys: [] }))
  return file
}

async function startHello (procs: ProcessSet, instance: string): Promise<App> {
  return await procs.start({
    name: `hello-${instance}`,
    command: process.execPath,
    args: [HELLO_APP],
    env: { PORT: '0', INSTANCE: instance },
    ready: parseListeningLine
  })
}

interface Answer { status: number, body: string }

async function get (url: string, agent: Agent | false, timeoutMs = 10_000): Promise<Answer> {
  return await new Promise((resolve, reject) => {
    const req = request(url, { agent, timeout: timeoutMs }, res => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (text: string) => { body += text })
      res.on('end', () => { resolve({ status: res.statusCode ?? 0, body }) })
      res.on('error', reject)
    })
    req.on('timeout', () => { req.destroy(new Error(`GET ${url}: no answer within ${timeoutMs} ms`)) })
    req.on('error', reject)
    req.end()
  })
}

async function until<T> (what: string, timeoutMs: number, check: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    try {
      const value = await check()
      if (value !== undefined) return value
    } catch { /* not yet */ }
    if (Date.now() > deadline) throw new Error(`routing: ${what}: not within ${timeoutMs} ms`)
    await new Promise(resolve => setTimeout(resolve, 100))
  }
}

interface RttTrial { movedAfterMs: number, requestsAfterChange: number, servedByNearAfterChange: number, errors: number }

async function rttMove (ctx: SuiteContext, trials: number): Promise<RttTrial[]> {
  const configFile = writeConfig(ctx.tmp, { soft: 100, hard: 300 })
  const started: Array<{ stop: (signal?: NodeJS.Signals, graceMs?: number) => Promise<unknown> }> = []
  const relays: LatencyRelay[] = []
  try {
    const bootstrap = await startProxy(ctx.procs, { name: 'rtt-bootstrap', configFile })
    started.push(bootstrap)
    const boot = bootstrap.ready.multiaddrs[0]
    const relayOf: Record<string, LatencyRelay> = {}
    await Promise.all(([['near', NEAR_MS], ['far', FAR_MS]] as const).map(async ([name, delay]) => {
      const app = await startHello(ctx.procs, name)
      started.push(app)
      const listenPort = await freePort()
      const relay = new LatencyRelay({ target: { host: '127.0.0.1', port: listenPort }, oneWayDelayMs: delay })
      relays.push(relay)
      relayOf[name] = relay
      const relayPort = await relay.start()
      const server = await startProxy(ctx.procs, {
        name: `rtt-server-${name}`, configFile, bootstrap: boot, server: { service: SERVICE, appPort: app.ready },
        extraArgs: ['--listen', `/ip4/127.0.0.1/tcp/${listenPort}`, '--announce', `/ip4/127.0.0.1/tcp/${relayPort}`]
      })
      started.push(server)
    }))
    const out: RttTrial[] = []
    for (let t = 0; t < trials; t++) {
      relayOf.near.setDelay(NEAR_MS)
      // Last: the client dials both instances itself, through their relays.
      const client: Daemon = await startProxy(ctx.procs, { name: `rtt-client-${t}`, configFile, bootstrap: boot, extraArgs: ['--metrics', '0'] })
      try {
        const url = `${client.ready.http}/${SERVICE}/`
        await until('the near instance serving', 30_000, async () => (await get(url, false)).body === 'hello from near\n' ? true : undefined)
        const changedAt = performance.now()
        relayOf.near.setDelay(BROKEN_MS)
        let lastNear = changedAt
        let requests = 0
        let byNear = 0
        let errors = 0
        for (;;) {
          const now = performance.now()
          if (now - changedAt > 6000 || (now - lastNear > 2000 && now - changedAt > 2000)) break
          try {
            const answer = await get(url, false)
            requests++
            if (answer.status !== 200) errors++
            if (answer.body === 'hello from near\n') { byNear++; lastNear = performance.now() }
          } catch {
            errors++
          }
        }
        const trial = { movedAfterMs: round(lastNear - changedAt, 1), requestsAfterChange: requests, servedByNearAfterChange: byNear, errors }
        ctx.log(`routing: RTT move trial ${t + 1}: last response from the near instance ${trial.movedAfterMs.toFixed(0)} ms after the change (${byNear} of ${requests} after it, ${errors} errors)`)
        out.push(trial)
      } finally {
        await client.stop('SIGINT', 10_000)
      }
    }
    return out
  } finally {
    for (const child of started.reverse()) await child.stop('SIGINT', 10_000)
    for (const relay of relays) await relay.stop()
  }
}

interface KillResult { loadSeconds: number, rps: number, total: number, ok: number, non2xx: number, errors: number, failed: number, killedAfterSent: number, servedBy: Record<string, number>, firstFailureAfterKillMs: number | null, lastFailureAfterKillMs: number | null }
interface SpreadResult { total: number, servedBy: Record<string, number>, worstPointsFromThird: number }

async function spreadThenKill (ctx: SuiteContext, total: number, killAt: number): Promise<{ spread: SpreadResult, kill: KillResult }> {
  const configFile = writeConfig(ctx.tmp)
  const started: Array<{ stop: (signal?: NodeJS.Signals, graceMs?: number) => Promise<unknown> }> = []
  const agent = new Agent({ keepAlive: true, maxSockets: 4 })
  try {
    const bootstrap = await startProxy(ctx.procs, { name: 'kill-bootstrap', configFile })
    started.push(bootstrap)
    const boot = bootstrap.ready.multiaddrs[0]
    const servers: Record<string, { app: App, proxy: Daemon }> = {}
    // In parallel: three instances start in the time of one.
    await Promise.all(['a', 'b', 'c'].map(async name => {
      const app = await startHello(ctx.procs, name)
      started.push(app)
      const proxy = await startProxy(ctx.procs, { name: `kill-server-${name}`, configFile, bootstrap: boot, server: { service: SERVICE, appPort: app.ready } })
      started.push(proxy)
      servers[name] = { app, proxy }
    }))
    const client = await startProxy(ctx.procs, { name: 'kill-client', configFile, bootstrap: boot, extraArgs: ['--metrics', '0'] })
    started.push(client)
    const url = `${client.ready.http}/${SERVICE}/`
    // Until the client knows all three, the victim might not be in use at all.
    await until('the client knowing all three instances', 30_000, async () => {
      const peers = JSON.parse((await get(`http://127.0.0.1:${client.ready.metrics as number}/peers`, false)).body) as Array<{ peers: unknown[] }>
      if (peers[0]?.peers.length === 3) return true
      await get(url, false)
      return undefined
    })

    const spreadBy: Record<string, number> = {}
    let spreadSent = 0
    const spreadWorker = async (): Promise<void> => {
      while (spreadSent < total) {
        spreadSent++
        const servedBy = (await get(url, agent)).body.trim()
        spreadBy[servedBy] = (spreadBy[servedBy] ?? 0) + 1
      }
    }
    await Promise.all([spreadWorker(), spreadWorker(), spreadWorker(), spreadWorker()])
    const shares = ['a', 'b', 'c'].map(name => (spreadBy[`hello from ${name}`] ?? 0) / total)
    const spread = { total, servedBy: spreadBy, worstPointsFromThird: round(Math.max(...shares.map(share => Math.abs(share - 1 / 3))) * 100, 1) }
    ctx.log(`routing: spread over three equal instances: ${shares.map(share => (share * 100).toFixed(1) + '%').join(' / ')}`)

    const loadStarted = performance.now()
    let sent = 0
    let ok = 0
    let non2xx = 0
    let errors = 0
    let killedAt: number | undefined
    const failures: number[] = []
    const servedBy: Record<string, number> = {}
    let killing: Promise<void> | undefined
    const worker = async (): Promise<void> => {
      while (sent < total) {
        sent++
        if (sent === killAt && killing == null) {
          killing = (async () => {
            killedAt = performance.now()
            await servers.a.proxy.stop('SIGKILL')
            await servers.a.app.stop('SIGKILL')
          })()
        }
        try {
          const answer = await get(url, agent)
          if (answer.status >= 200 && answer.status < 300) {
            ok++
            servedBy[answer.body.trim()] = (servedBy[answer.body.trim()] ?? 0) + 1
          } else {
            non2xx++
            failures.push(performance.now())
          }
        } catch {
          errors++
          failures.push(performance.now())
        }
      }
    }
    await Promise.all([worker(), worker(), worker(), worker()])
    await killing
    const rel = (t: number | undefined): number | null => t == null || killedAt == null ? null : round(t - killedAt, 1)
    const loadSeconds = (performance.now() - loadStarted) / 1000
    const result = {
      loadSeconds: round(loadSeconds, 2), rps: round((ok + non2xx + errors) / loadSeconds, 0),
      total: ok + non2xx + errors, ok, non2xx, errors, failed: non2xx + errors, killedAfterSent: killAt, servedBy,
      firstFailureAfterKillMs: rel(failures[0]), lastFailureAfterKillMs: rel(failures[failures.length - 1])
    }
    ctx.log(`routing: kill under load: ${result.failed} failed of ${result.total} (${non2xx} non-2xx, ${errors} socket errors) in ${result.loadSeconds} s, served ${JSON.stringify(servedBy)}`)
    return { spread, kill: result }
  } finally {
    agent.destroy()
    for (const child of started.reverse()) await child.stop('SIGINT', 10_000)
  }
}

export const routing: Suite = {
  name: 'routing',
  about: 'traffic moved off an instance over its hard RTT; spread over three equal instances; failures during an instance kill under load',
  async run (ctx: SuiteContext): Promise<SuiteResult> {
    const suite = 'routing'
    const trials = ctx.quick ? 1 : 3
    const total = ctx.quick ? 1000 : 3000
    const killAt = ctx.quick ? 300 : 500
    ctx.log(`routing: RTT move, ${trials} trial(s)`)
    const rtt = await rttMove(ctx, trials)
    ctx.log(`routing: spread of ${total} requests over three instances, then as many with a server proxy SIGKILLed after ${killAt}`)
    const { spread, kill } = await spreadThenKill(ctx, total, killAt)
    const rows: Row[] = [
      { id: 'routing.rtt-move', suite, metric: `time to move traffic off a hard-RTT breaker, median of ${trials}`, value: round(median(rtt.map(t => t.movedAfterMs)), 0), unit: 'ms', better: 'lower', target: { op: '<=', value: 3000 } },
      { id: 'routing.spread', suite, metric: `spread over three equal instances (${total} requests): worst share's distance from 33.3%`, value: spread.worstPointsFromThird, unit: 'pp', better: 'lower', digits: 1, target: { op: '<=', value: 5 } },
      { id: 'routing.kill-failures', suite, metric: `failed requests during an instance kill (of ${kill.total})`, value: kill.failed, unit: 'req', better: 'lower', digits: 0 },
      { id: 'routing.kill-total', suite, metric: '  requests sent, 4 connections', value: kill.total, unit: 'req', digits: 0 }
    ]
    return { rows, details: { rttMove: { softRttMs: 100, hardRttMs: 300, oneWayMs: { near: NEAR_MS, far: FAR_MS, broken: BROKEN_MS }, trials: rtt }, spread, kill } }
  }
}
