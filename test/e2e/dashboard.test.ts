import { spawn } from 'node:child_process'
import { mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises'
import { request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { DashboardSurvey } from '../../cli/dashboard.js'
import { binPath, REPO_ROOT, runCli, startDaemon, startProcess, stopAllDaemons, type Daemon, type StartedProcess } from '../helpers/daemon.js'
import { http, json } from '../helpers/http.js'
import { bootstrapAddr, HELLO_SCRIPT, startClientProxy, writeTestConfig, type TestConfig } from '../helpers/mesh.js'
import { waitFor } from '../helpers/wait-for.js'

/** Long enough for the page checks to see the instance, short enough to wait for its cull. */
const IDLE_TIMEOUT_S = 25
const REQUESTS = 20
/** Surveys the page in Chromium draws before it closes its stream. */
const PAGE_SURVEYS = 3
const CHROMIUM = '/usr/bin/chromium'
const CHROMIUM_FLAGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--disable-crash-reporter', '--hide-scrollbars',
  // Virtual time runs out only once the page is idle: with ?surveys=N its stream closes after N surveys.
  '--virtual-time-budget=10000'
]
const CHROMIUM_TIMEOUT_MS = 60_000
const SCREENSHOT = join(REPO_ROOT, 'test-artifacts', 'dashboard.png')
const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])

/**
 * `hyphae dashboard` on real daemons: an allocator (culling idle instances after
 * IDLE_TIMEOUT_S) and a client proxy. The dashboard starts before any instance does, so a
 * request's cold start and the later cull are events it sees happen. Its page is loaded in
 * headless Chromium, whose script must draw the survey it gets from the stream.
 */
describe('hyphae dashboard on a live mesh', () => {
  let config: TestConfig
  let allocator: Daemon
  let client: Daemon
  let dashboard: StartedProcess<string>

  const get = async (path: string, headers: Record<string, string> = {}): Promise<Awaited<ReturnType<typeof http>>> =>
    await http(new URL(path, dashboard.ready).toString(), { headers, timeoutMs: 10_000 })
  const latest = async (): Promise<DashboardSurvey | undefined> => {
    const res = await get('/status.json')
    return res.status === 200 ? json<DashboardSurvey>(res) : undefined
  }
  const nodeArgs = (): string[] => ['--configfile', config.file, '--bootstrap', bootstrapAddr(allocator)]

  beforeAll(async () => {
    config = await writeTestConfig({ hello: { command: `"${process.execPath}" "${HELLO_SCRIPT}"`, health: '/healthz' } })
    allocator = await startDaemon('hyphae-allocator', ['--configfile', config.file, '--runtime', 'process', '--metrics', '0', '--idle-timeout', String(IDLE_TIMEOUT_S)])
    client = await startClientProxy(config, allocator, ['--metrics', '0'])
    dashboard = await startProcess(binPath('hyphae'), ['dashboard', '--port', '0', '--interval', '1', ...nodeArgs()], {
      isReady: line => /^dashboard: (http:\/\/127\.0\.0\.1:\d+\/)$/.exec(line)?.[1]
    })
  }, 120_000)

  afterAll(async () => {
    await stopAllDaemons()
    await config?.cleanup()
  })

  it('serves the latest survey as JSON and streams each new one, with the cold start a request caused', async () => {
    // The allocator in a survey without instances: whatever comes next is a start the dashboard sees.
    await waitFor(async () => (await latest())?.nodes.some(n => n.peerId === allocator.ready.peerId), 'a survey with the allocator', { timeoutMs: 30_000, everyMs: 200 })
    for (let i = 0; i < REQUESTS; i++) expect((await http(`${client.ready.http as string}/hello/`)).status).toBe(200)

    const survey = await waitFor(async () => {
      const s = await latest()
      const hello = s?.services.find(x => x.service === 'hello')
      return hello != null && hello.ok + hello.failed === REQUESTS ? s : undefined
    }, `a survey with hello's ${REQUESTS} requests`, { timeoutMs: 30_000, everyMs: 200 })
    expect(survey.services.find(s => s.service === 'hello')).toMatchObject({ instances: 1, serving: 1, ok: REQUESTS, failed: 0 })
    expect(survey.events).toContainEqual(expect.objectContaining({ kind: 'started', service: 'hello' }))
    expect(survey.unanswered).toEqual([])

    const stream = await openStream(new URL('/events', dashboard.ready).toString())
    try {
      expect(stream.contentType).toMatch(/^text\/event-stream/)
      const first = await stream.next()
      expect(first.services.find(s => s.service === 'hello')).toMatchObject({ ok: REQUESTS })
      const second = await stream.next()
      expect(second.at).toBeGreaterThan(first.at)
    } finally {
      stream.close()
    }
  }, 90_000)

  it('is a page whose script draws the streamed survey', async () => {
    const page = await get('/')
    expect(page.status).toBe(200)
    expect(page.headers['content-type']).toMatch(/^text\/html/)
    const html = page.body.toString('utf8')
    expect(html).toContain('<table id="services">')
    // Nothing of the mesh is in the page as served: what Chromium shows below, its script drew.
    expect(html).not.toContain('hello')
    expect(html).not.toContain('data-service=')

    const dom = (await chromium(['--dump-dom', new URL(`/?surveys=${PAGE_SURVEYS}`, dashboard.ready).toString()])).stdout
    // The script closes the stream once it drew PAGE_SURVEYS surveys, and says so; each one
    // added a point to the service's rps line.
    expect(dom).toMatch(/<span id="connection" class="snapshot">snapshot<\/span>/)
    expect(/<polyline points="([^"]*)"/.exec(rowCells(dom, 'services', 'hello', true).spark)?.[1].split(' ')).toHaveLength(PAGE_SURVEYS)
    expect(Number(/<b id="node-count">(\d+)<\/b>/.exec(dom)?.[1])).toBeGreaterThanOrEqual(2)
    expect(dom).toMatch(/<div id="notice" hidden="" data-partial="false" data-unanswered="0">/)
    expect(rowCells(dom, 'services', 'hello')).toMatchObject({ 'instances num': '1/1', 'success num': '100.00%', 'requests num': String(REQUESTS), 'p99 num': expect.stringMatching(/^[\d.]+ms$/) })
    expect(rowCells(dom, 'instances', 'hello')).toMatchObject({ 'success num': '100.00%', 'requests num': String(REQUESTS), state: expect.stringContaining('healthy') })
    expect(rowCells(dom, 'nodes', allocator.ready.peerId)).toMatchObject({ role: 'allocator' })
    // One instance known to the client proxy, at whatever level its RTT and age put it.
    const cache = rowCells(dom, 'caches', 'hello')
    expect(Number(cache['reliable num']) + Number(cache['fresh num']) + Number(cache['removal num'])).toBe(1)
    expect(dom).toMatch(/<li data-kind="started" data-service="hello">/)

    await mkdir(join(REPO_ROOT, 'test-artifacts'), { recursive: true })
    await rm(SCREENSHOT, { force: true })
    await chromium([`--screenshot=${SCREENSHOT}`, '--window-size=1280,900', new URL(`/?surveys=${PAGE_SURVEYS}`, dashboard.ready).toString()])
    expect((await readFile(SCREENSHOT)).subarray(0, 8)).toEqual(PNG_SIGNATURE)
    expect((await stat(SCREENSHOT)).size).toBeGreaterThan(20_000)
  }, 180_000)

  it('lists the cull of the idle instance as it happens', async () => {
    const survey = await waitFor(async () => {
      const s = await latest()
      return s?.events.some(e => e.kind === 'stopped' && e.service === 'hello') === true ? s : undefined
    }, 'the cull of hello in the events', { timeoutMs: (IDLE_TIMEOUT_S + 30) * 1000, everyMs: 500 })
    const [started, stopped] = ['started', 'stopped'].map(kind => survey.events.find(e => e.kind === kind && e.service === 'hello'))
    expect(stopped?.peerId, JSON.stringify(survey.events)).toBe(started?.peerId)
    expect(stopped?.at).toBeGreaterThan(started?.at ?? Infinity)
    expect(survey.services.find(s => s.service === 'hello')).toBeUndefined()
  }, 90_000)

  it('answers an unknown path and a foreign host name with a JSON error', async () => {
    const missing = await get('/nope')
    expect(missing.status).toBe(404)
    expect(missing.headers['content-type']).toBe('application/json')
    expect(json(missing)).toEqual({ error: { code: 404, reason: 'not_found', message: 'no route /nope' } })
    // What a site that points its own name at 127.0.0.1 would send from a browser.
    const rebound = await get('/status.json', { Host: `attacker.example:${new URL(dashboard.ready).port}` })
    expect(rebound.status).toBe(403)
    expect(json<{ error: { code: number } }>(rebound).error.code).toBe(403)
  })

  it('says in one line which option to change when its port is in use, or what to give without a bootstrap', async () => {
    const taken = await runCli('hyphae', ['dashboard', '--port', new URL(dashboard.ready).port, ...nodeArgs()], { timeoutMs: 30_000 })
    expect(taken.code).toBe(2)
    expect(taken.stderr.trim().split('\n')).toHaveLength(1)
    expect(taken.stderr).toMatch(/is in use: choose another --port/)
    expect(taken.stdout).toBe('')

    const alone = await runCli('hyphae', ['dashboard', '--configfile', config.file], { env: { P2P_BOOTSTRAPS: '' } })
    expect(alone.code).toBe(2)
    expect(alone.stderr.trim().split('\n')).toHaveLength(1)
    expect(alone.stderr).toMatch(/--bootstrap/)
  }, 60_000)

  it('ends the open streams and exits 0 on SIGTERM', async () => {
    const stream = await openStream(new URL('/events', dashboard.ready).toString())
    await stream.next()
    expect(await dashboard.stop('SIGTERM')).toBe(0)
    await stream.ended
  }, 30_000)
})

/** One table row's cells by class, from a serialised DOM: the row whose `data-*` is KEY; MARKUP keeps the cells' tags. */
function rowCells (dom: string, table: string, key: string, markup = false): Record<string, string> {
  const body = new RegExp(`<table id="${table}">.*?</table>`, 's').exec(dom)?.[0] ?? ''
  const row = [...body.matchAll(/<tr ([^>]*)>(.*?)<\/tr>/gs)].find(([, attributes]) => attributes.includes(`="${key}"`))
  if (row == null) throw new Error(`no row ${key} in #${table}: ${body.slice(0, 2000)}`)
  return Object.fromEntries([...row[2].matchAll(/<td class="([^"]*)"[^>]*>(.*?)<\/td>/gs)].map(([, cls, content]) => [cls, markup ? content : content.replace(/<[^>]*>/g, '')]))
}

interface SurveyStream {
  contentType: string
  /** The next survey the stream carries, waited for at most TIMEOUT_MS. */
  next: (timeoutMs?: number) => Promise<DashboardSurvey>
  /** Resolves when the dashboard ends the stream. */
  ended: Promise<void>
  close: () => void
}

/** GET /events, read event by event. */
async function openStream (url: string): Promise<SurveyStream> {
  const surveys: DashboardSurvey[] = []
  return await new Promise<SurveyStream>((resolve, reject) => {
    const req = request(url, { agent: false, timeout: 10_000 }, res => {
      let buffer = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => {
        buffer += chunk
        const events = buffer.split('\n\n')
        buffer = events.pop() ?? ''
        for (const event of events) {
          const data = /^data: (.*)$/m.exec(event)?.[1]
          if (data != null) surveys.push(JSON.parse(data) as DashboardSurvey)
        }
      })
      const ended = new Promise<void>(resolve => { res.once('end', resolve) })
      const next = async (timeoutMs = 10_000): Promise<DashboardSurvey> => {
        await waitFor(() => surveys.length > 0, 'a survey on the stream', { timeoutMs, everyMs: 50 })
        return surveys.shift() as DashboardSurvey
      }
      resolve({ contentType: res.headers['content-type'] ?? '', next, ended, close: () => { req.destroy() } })
    })
    req.once('timeout', () => { req.destroy(new Error(`no answer from ${url} in time`)) })
    req.once('error', reject)
    req.end()
  })
}

/**
 * Runs headless Chromium with a profile of its own, to its end within CHROMIUM_TIMEOUT_MS;
 * its process group is killed when it outlives it. Missing Chromium fails the test: .ci/run installs it.
 */
async function chromium (args: string[]): Promise<{ stdout: string, stderr: string }> {
  const profile = await mkdtemp(join(tmpdir(), 'hyphae-chromium-'))
  try {
    return await new Promise((resolve, reject) => {
      const proc = spawn(CHROMIUM, [...CHROMIUM_FLAGS, `--user-data-dir=${profile}`, ...args], { stdio: ['ignore', 'pipe', 'pipe'], detached: true })
      let stdout = ''
      let stderr = ''
      proc.stdout.setEncoding('utf8').on('data', (text: string) => { stdout += text })
      proc.stderr.setEncoding('utf8').on('data', (text: string) => { stderr = (stderr + text).slice(-20_000) })
      const timer = setTimeout(() => {
        killGroup(proc.pid)
        reject(new Error(`chromium ${args.join(' ')}: still running after ${CHROMIUM_TIMEOUT_MS} ms\n${stderr}`))
      }, CHROMIUM_TIMEOUT_MS)
      proc.once('error', err => {
        clearTimeout(timer)
        reject(new Error(`cannot run ${CHROMIUM} (install Debian's chromium package): ${err.message}`))
      })
      proc.once('close', (code, signal) => {
        clearTimeout(timer)
        // Helpers it started must not outlive it.
        killGroup(proc.pid)
        if (code === 0) resolve({ stdout, stderr })
        else reject(new Error(`chromium ${args.join(' ')}: exit ${String(code ?? signal)}\n${stderr}`))
      })
    })
  } finally {
    await rm(profile, { recursive: true, force: true })
  }
}

function killGroup (pid: number | undefined): void {
  if (pid == null) return
  try {
    process.kill(-pid, 'SIGKILL')
  } catch {
    // Gone already.
  }
}
