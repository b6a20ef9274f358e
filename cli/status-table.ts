import type { InstanceStats, InstanceStatus, NodeStatus } from '../shared/protocols/status.js'
import type { MeshStatus } from './mesh-status.js'

/** An instance with where it runs, as the tables list it. */
export interface PlacedInstance extends InstanceStatus {
  host: string
  /** The node that reported it: its allocator, or the server proxy itself. */
  reportedBy: string
}

/** Every instance the survey found: the allocators' and the standalone server proxies'. */
export function placedInstances (status: MeshStatus): PlacedInstance[] {
  const out: PlacedInstance[] = []
  for (const node of status.nodes) {
    if (node.role === 'proxy' && node.mode !== 'server') continue
    for (const instance of node.instances) out.push({ ...instance, host: node.host, reportedBy: node.peerId })
  }
  return out.sort((a, b) => a.service.localeCompare(b.service) || a.host.localeCompare(b.host) || (a.peerId ?? '').localeCompare(b.peerId ?? ''))
}

export interface ServiceSummary {
  service: string
  instances: number
  /** Instances in a serving state (healthy, advertised). */
  serving: number
  ok: number
  failed: number
  rps: number
  /** The worst instance's p99 over the last 10 s. */
  p99Ms: number | null
}

const SERVING = new Set(['healthy', 'advertised'])

/** One row per service, summed over its instances, as `linkerd viz stat` shows a deployment. */
export function serviceSummaries (instances: PlacedInstance[]): ServiceSummary[] {
  const byService = new Map<string, ServiceSummary>()
  for (const i of instances) {
    let row = byService.get(i.service)
    if (row == null) {
      row = { service: i.service, instances: 0, serving: 0, ok: 0, failed: 0, rps: 0, p99Ms: null }
      byService.set(i.service, row)
    }
    row.instances++
    if (SERVING.has(i.state)) row.serving++
    if (i.stats != null) {
      row.ok += i.stats.ok
      row.failed += i.stats.failed
      row.rps = Math.round((row.rps + i.stats.rps) * 1000) / 1000
      if (i.stats.p99Ms != null) row.p99Ms = Math.max(row.p99Ms ?? 0, i.stats.p99Ms)
    }
  }
  return [...byService.values()]
}

export function shortPeer (peerId: string | undefined): string {
  return peerId == null ? '-' : `…${peerId.slice(-8)}`
}

export function duration (seconds: number): string {
  if (seconds < 60) return `${Math.round(seconds)}s`
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m${String(Math.round(seconds % 60)).padStart(2, '0')}s`
  if (seconds < 86_400) return `${Math.floor(seconds / 3600)}h${String(Math.floor(seconds % 3600 / 60)).padStart(2, '0')}m`
  return `${Math.floor(seconds / 86_400)}d${Math.floor(seconds % 86_400 / 3600)}h`
}

function ms (value: number | null | undefined): string {
  if (value == null) return '-'
  return value < 10 ? `${value.toFixed(1)}ms` : `${Math.round(value)}ms`
}

function successRate (ok: number, failed: number): string {
  return ok + failed === 0 ? '-' : `${(100 * ok / (ok + failed)).toFixed(2)}%`
}

/** Left-aligned columns, two spaces apart. */
export function columns (rows: string[][]): string[] {
  const widths = rows[0].map((_, c) => Math.max(...rows.map(r => r[c].length)))
  return rows.map(r => r.map((cell, c) => c === r.length - 1 ? cell : cell.padEnd(widths[c])).join('  ').trimEnd())
}

function statsCells (stats: InstanceStats | undefined): string[] {
  if (stats == null) return ['-', '-', '-', '-', '-', '-']
  return [successRate(stats.ok, stats.failed), String(stats.rps), ms(stats.avgMs), ms(stats.p99Ms), String(stats.total), duration(stats.idleS)]
}

function role (node: NodeStatus): string {
  return node.role === 'proxy' ? `${node.mode ?? 'client'} proxy` : node.role
}

/** The survey as tables: services, instances, nodes, the client proxies' caches, then what did not answer. */
export function formatMeshStatus (status: MeshStatus): string[] {
  const instances = placedInstances(status)
  const out: string[] = []
  out.push(`${status.nodes.length} nodes answered in ${(status.tookMs / 1000).toFixed(1)} s${status.partial ? ' (partial: the survey ran out of time or hit its limit)' : ''}`)
  out.push('')
  out.push(...columns([
    ['SERVICE', 'INSTANCES', 'SUCCESS', 'RPS', 'P99', 'REQUESTS'],
    ...serviceSummaries(instances).map(s => [s.service, `${s.serving}/${s.instances}`, successRate(s.ok, s.failed), String(s.rps), ms(s.p99Ms), String(s.ok + s.failed)])
  ]))
  out.push('')
  out.push(...columns([
    ['SERVICE', 'HOST', 'INSTANCE', 'STATE', 'AGE', 'RELAUNCHES', 'SUCCESS', 'RPS', 'AVG', 'P99', 'REQUESTS', 'IDLE'],
    ...instances.map(i => [i.service, i.host, shortPeer(i.peerId), i.state, duration(i.ageS), String(i.relaunches), ...statsCells(i.stats)])
  ]))
  out.push('')
  out.push(...columns([
    ['NODE', 'ROLE', 'HOST', 'VERSION', 'UPTIME', 'INSTANCES', 'ADDRESS'],
    ...status.nodes.map(n => [shortPeer(n.peerId), role(n), n.host, n.version, duration(n.uptimeS), String(n.instances.length), n.addresses[0] ?? '-'])
  ]))
  const caches = status.nodes.flatMap(n => (n.services ?? []).map(c => ({ node: n, cache: c }))).filter(({ cache }) => cache.peers.length > 0)
  if (caches.length > 0) {
    out.push('')
    out.push(...columns([
      ['PROXY', 'SERVICE', 'RELIABLE', 'FRESH', 'REMOVAL', 'NEAREST RTT', 'SOFT/HARD'],
      ...caches.map(({ node, cache }) => {
        const count = (level: string): string => String(cache.peers.filter(p => p.level === level).length)
        const nearest = Math.min(...cache.peers.map(p => p.rttMs))
        return [shortPeer(node.peerId), cache.service, count('reliable'), count('fresh'), count('removal'), ms(nearest), `${cache.limits.softMs}/${cache.limits.hardMs}ms`]
      })
    ]))
  }
  if (status.unanswered.length > 0) {
    out.push('')
    for (const u of status.unanswered) out.push(`no answer from ${u.peerId}: ${u.error}`)
  }
  return out
}
