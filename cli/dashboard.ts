import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import { option, optionsHelp, parsers } from '../shared/cli-options.js'
import { raceSignal } from '../shared/abort.js'
import { errorMessage, UsageError } from '../shared/errors.js'
import { listenOnLoopback } from '../shared/listen.js'
import type { Logger } from '../shared/log.js'
import { parseCommand, type Io } from './command.js'
import { DASHBOARD_CSP, DASHBOARD_PAGE } from './dashboard-page.js'
import type { MeshStatus } from './mesh-status.js'
import { NODE_OPTIONS, surveyNodeSetup, withShortLivedNode } from './short-lived-node.js'
import { placedInstances, serviceSummaries, type PlacedInstance, type ServiceSummary } from './status-table.js'

const OPTIONS = {
  port: option({ arg: 'PORT', help: 'serve the page on 127.0.0.1:PORT (0: any free port)', default: 0, parse: parsers.port }),
  interval: option({ arg: 'SECONDS', help: 'pause between two surveys of the mesh', default: 2, parse: parsers.positiveInt }),
  ...NODE_OPTIONS
}

const HELP = `usage: hyphae dashboard [OPTIONS]

What \`hyphae status\` shows, as a page that keeps itself up to date: the mesh is surveyed
again every few seconds and each survey is pushed to every open page, with the instances
started and stopped (culled) between two surveys listed as they happen. Serves on 127.0.0.1
only, and prints the page's address as \`dashboard: http://127.0.0.1:PORT/\`.

Routes: / the page (/?surveys=N: it stops following after N surveys, for a headless browser
to capture), /events the surveys as server-sent events, /status.json the latest one.

Options:
${optionsHelp(OPTIONS)}`

/** Pages following the surveys at once; each holds a connection and a copy of every survey. */
const MAX_STREAMS = 32
/** Instances started and stopped that the page lists. */
const MAX_EVENTS = 50
/** How long a page whose stream broke waits before it asks again. */
const STREAM_RETRY_MS = 3000

/** An instance that came or went between two surveys. */
export interface MeshEvent {
  /** The survey that saw it (ms since the epoch). */
  at: number
  kind: 'started' | 'stopped'
  service: string
  host: string
  /** The allocator's name for it; a standalone server proxy has none. */
  instance?: string
  peerId?: string
  /** Its state when seen: the new one's, or the last one the stopped one had. */
  state: string
  /** A stopped one's idle time when last seen: past the idle timeout, it was culled. */
  idleS?: number
}

/** A survey as the page gets it: the survey itself, its services summed up, and the latest events. */
export interface DashboardSurvey extends MeshStatus {
  services: ServiceSummary[]
  events: MeshEvent[]
}

/** `hyphae dashboard`: `hyphae status --watch` as a page on 127.0.0.1. */
export async function dashboard (argv: string[], io: Io): Promise<number> {
  const { values, positionals } = parseCommand(argv, OPTIONS)
  if (values.help === true) {
    io.out(HELP)
    return 0
  }
  if (positionals.length > 0) throw new UsageError(`unexpected argument '${positionals[0]}'`)
  const setup = surveyNodeSetup(values, io.env)

  const stop = new AbortController()
  const interrupt = (): void => { stop.abort() }
  process.once('SIGINT', interrupt)
  process.once('SIGTERM', interrupt)
  const server = new DashboardServer()
  try {
    // Bound before joining the mesh: a port in use is the user's to fix, and said at once.
    const port = await server.listen(values.port)
    io.out(`dashboard: http://127.0.0.1:${port}/`)
    // Loaded on use, as for `hyphae status`: --help and usage errors need not load libp2p.
    const { surveyMesh } = await import('./mesh-status.js')
    return await withShortLivedNode(setup, async (registry, _signal, node) => {
      try {
        const survey = async (): Promise<MeshStatus> => await surveyMesh(node, registry, { services: Object.keys(setup.config.services) })
        await surveyLoop(survey, values.interval * 1000, stop.signal, setup.log, s => { server.publish(s) })
        return 0
      } finally {
        // The pages first, while the node still runs: withShortLivedNode stops it after us.
        await server.close()
      }
    })
  } finally {
    process.off('SIGINT', interrupt)
    process.off('SIGTERM', interrupt)
    await server.close()
  }
}

/** Surveys the mesh, INTERVAL_MS apart, until SIGNAL; one loop whatever the number of pages. */
async function surveyLoop (survey: () => Promise<MeshStatus>, intervalMs: number, signal: AbortSignal, log: Logger, publish: (s: MeshStatus) => void): Promise<void> {
  while (!signal.aborted) {
    try {
      // Stopping does not wait for a survey in progress: it finishes unwatched.
      publish(await raceSignal(survey(), signal))
    } catch (err) {
      if (signal.aborted) return
      // The next survey may well succeed (a bootstrap back, the DHT settled): the page keeps the last one.
      log.error({ err }, `the survey failed: ${errorMessage(err)}`)
    }
    await sleep(intervalMs, undefined, { signal }).catch(() => {})
  }
}

function instanceKey (i: PlacedInstance): string {
  return `${i.reportedBy} ${i.service} ${i.instance ?? i.peerId ?? ''}`
}

function meshEvent (kind: MeshEvent['kind'], i: PlacedInstance, at: number): MeshEvent {
  return {
    at,
    kind,
    service: i.service,
    host: i.host,
    ...(i.instance != null ? { instance: i.instance } : {}),
    ...(i.peerId != null ? { peerId: i.peerId } : {}),
    state: i.state,
    ...(kind === 'stopped' && i.stats != null ? { idleS: i.stats.idleS } : {})
  }
}

/** What was known of the mesh's instances at one survey. */
interface Sighting {
  at: number
  /** By instanceKey. */
  instances: Map<string, PlacedInstance>
  /** Nodes whose whole list of instances the survey got. */
  complete: Set<string>
}

/**
 * The instances started and stopped, from one survey to the next, the latest MAX_EVENTS kept.
 * A node that did not answer a survey in time, or cut its list, says nothing about its
 * instances: only a complete answer without an instance means it stopped, and an instance new
 * to a survey started only if its node answered before too, or if it is younger than the time
 * between the surveys.
 */
class MeshEventLog {
  readonly events: MeshEvent[] = []
  private last?: Sighting

  record (survey: MeshStatus): void {
    const now = this.sighting(survey)
    const before = this.last
    this.last = now
    if (before == null) return
    const gapS = (now.at - before.at) / 1000
    for (const [key, i] of now.instances) {
      if (!before.instances.has(key) && (before.complete.has(i.reportedBy) || i.ageS <= gapS)) this.events.push(meshEvent('started', i, now.at))
    }
    for (const [key, i] of before.instances) {
      if (!now.instances.has(key) && now.complete.has(i.reportedBy)) this.events.push(meshEvent('stopped', i, now.at))
    }
    if (this.events.length > MAX_EVENTS) this.events.splice(0, this.events.length - MAX_EVENTS)
  }

  /**
   * The survey's instances, each with the peer ID and stats it had before when it has none
   * now: a cull stops the sidecar first, so an instance's last sighting often lacks both.
   */
  private sighting (survey: MeshStatus): Sighting {
    const instances = new Map<string, PlacedInstance>()
    for (const i of placedInstances(survey)) {
      const key = instanceKey(i)
      const seen = this.last?.instances.get(key)
      const peerId = i.peerId ?? seen?.peerId
      const stats = i.stats ?? seen?.stats
      instances.set(key, { ...i, ...(peerId != null ? { peerId } : {}), ...(stats != null ? { stats } : {}) })
    }
    return { at: survey.at, instances, complete: new Set(survey.nodes.filter(n => n.truncated !== true).map(n => n.peerId)) }
  }
}

const COMMON_HEADERS = {
  'Cache-Control': 'no-store',
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer'
}

/** Names a browser on this machine uses for us; anything else is another site's name for 127.0.0.1. */
const LOOPBACK_HOSTS = new Set(['127.0.0.1', 'localhost', '[::1]'])

/** The page, the latest survey and the stream of surveys, on 127.0.0.1. */
class DashboardServer {
  private readonly server = createServer((req, res) => { this.handle(req, res) })
  private readonly streams = new Set<ServerResponse>()
  private readonly eventLog = new MeshEventLog()
  /** The latest survey as the page gets it, serialised once for every page. */
  private latest?: string
  private closing?: Promise<void>

  async listen (port: number): Promise<number> {
    return await listenOnLoopback(this.server, port, '--port')
  }

  publish (survey: MeshStatus): void {
    this.eventLog.record(survey)
    const view: DashboardSurvey = { ...survey, services: serviceSummaries(placedInstances(survey)), events: this.eventLog.events }
    this.latest = JSON.stringify(view)
    for (const res of this.streams) this.send(res)
  }

  /** Ends every stream and stops serving; safe to call again. */
  async close (): Promise<void> {
    this.closing ??= new Promise<void>(resolve => {
      for (const res of this.streams) res.end()
      this.streams.clear()
      this.server.close(() => { resolve() })
      this.server.closeAllConnections()
    })
    await this.closing
  }

  private handle (req: IncomingMessage, res: ServerResponse): void {
    const path = (req.url ?? '/').split('?')[0]
    const host = (req.headers.host ?? '').replace(/:\d+$/, '').toLowerCase()
    // DNS rebinding: a site that points its own name at 127.0.0.1 must not read the mesh through a browser.
    if (!LOOPBACK_HOSTS.has(host)) return sendError(res, 403, 'forbidden_host', `host '${host}' is not this machine's loopback name`)
    if (req.method !== 'GET') return sendError(res, 405, 'method_not_allowed', `${req.method ?? ''} ${path}: only GET is served`)
    if (path === '/') return this.sendPage(res)
    if (path === '/status.json') return this.sendLatest(res)
    if (path === '/events') return this.openStream(req, res)
    sendError(res, 404, 'not_found', `no route ${path}`)
  }

  private sendPage (res: ServerResponse): void {
    res.writeHead(200, { ...COMMON_HEADERS, 'Content-Type': 'text/html; charset=utf-8', 'Content-Security-Policy': DASHBOARD_CSP })
    res.end(DASHBOARD_PAGE)
  }

  private sendLatest (res: ServerResponse): void {
    if (this.latest == null) return sendError(res, 503, 'no_survey_yet', 'the first survey of the mesh has not ended yet')
    res.writeHead(200, { ...COMMON_HEADERS, 'Content-Type': 'application/json' })
    res.end(this.latest)
  }

  private openStream (req: IncomingMessage, res: ServerResponse): void {
    if (this.closing != null) return sendError(res, 503, 'shutting_down', 'the dashboard is stopping')
    if (this.streams.size >= MAX_STREAMS) return sendError(res, 503, 'too_many_streams', `the dashboard serves ${MAX_STREAMS} pages at once; close one`)
    res.writeHead(200, { ...COMMON_HEADERS, 'Content-Type': 'text/event-stream; charset=utf-8' })
    res.write(`retry: ${STREAM_RETRY_MS}\n\n`)
    this.streams.add(res)
    req.socket.setNoDelay(true)
    res.once('close', () => { this.streams.delete(res) })
    if (this.latest != null) this.send(res)
  }

  private send (res: ServerResponse): void {
    // A page still behind on the last survey gets no backlog: it is cut off, reconnects
    // after STREAM_RETRY_MS and starts again from the latest survey.
    if (res.writableNeedDrain) {
      this.streams.delete(res)
      res.destroy()
      return
    }
    // JSON.stringify writes no line break: the whole survey is one data line.
    res.write(`data: ${this.latest ?? ''}\n\n`)
  }
}

function sendError (res: ServerResponse, status: number, reason: string, message: string): void {
  res.writeHead(status, { ...COMMON_HEADERS, 'Content-Type': 'application/json' })
  res.end(JSON.stringify({ error: { code: status, reason, message } }))
}
