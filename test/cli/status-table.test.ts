import { describe, expect, it } from 'vitest'
import type { MeshStatus } from '../../cli/mesh-status.js'
import { duration, formatMeshStatus, serviceSummaries, placedInstances } from '../../cli/status-table.js'
import type { InstanceStats, NodeStatus } from '../../shared/protocols/status.js'

const stats = (ok: number, failed: number, rps: number, p99Ms: number | null): InstanceStats => ({ ok, failed, total: ok + failed, inFlight: 0, rps, avgMs: p99Ms != null ? p99Ms / 2 : null, p99Ms, idleS: 3 })
const base = { version: '0.1.0', uptimeS: 90, addresses: ['/ip4/10.0.0.1/tcp/4001'] }

const survey: MeshStatus = {
  at: 0,
  tookMs: 420,
  partial: false,
  unanswered: [{ peerId: '12D3KooWgone', error: 'timed out' }],
  nodes: [
    { ...base, role: 'allocator', host: 'a', peerId: '12D3KooWallocA', trustedSigners: [], instances: [
      { service: 'hello', instance: 'i1', state: 'healthy', ageS: 30, relaunches: 0, peerId: '12D3KooWinst001', stats: stats(90, 10, 2.5, 12) },
      { service: 'hello', instance: 'i2', state: 'starting', ageS: 1, relaunches: 0 }
    ] },
    { ...base, role: 'proxy', mode: 'server', host: 'b', peerId: '12D3KooWserverB', instances: [
      { service: 'hello', state: 'advertised', ageS: 4000, relaunches: 0, peerId: '12D3KooWserverB', stats: stats(10, 0, 0.5, 40) }
    ] },
    { ...base, role: 'proxy', mode: 'client', host: 'c', peerId: '12D3KooWclientC', instances: [], services: [
      { service: 'hello', limits: { softMs: 100, hardMs: 1000 }, peers: [{ peer: 'x', level: 'reliable', rttMs: 0.4, inflight: 0 }, { peer: 'y', level: 'fresh', rttMs: 3, inflight: 1 }] }
    ] }
  ] satisfies NodeStatus[]
}

describe('the status tables', () => {
  it('sums a service over its instances: serving share, success, rate, worst p99', () => {
    expect(serviceSummaries(placedInstances(survey))).toEqual([{ service: 'hello', instances: 3, serving: 2, ok: 100, failed: 10, rps: 3, p99Ms: 40 }])
  })

  it('prints services, instances, nodes, caches and who did not answer', () => {
    const text = formatMeshStatus(survey).join('\n')
    expect(text).toMatch(/^3 nodes answered in 0\.4 s$/m)
    expect(text).toMatch(/^hello +2\/3 +90\.91% +3 +40ms +110$/m)
    expect(text).toMatch(/^hello +a +…Winst001 +healthy +30s +0 +90\.00% +2\.5 +6\.0ms +12ms +100 +3s$/m)
    expect(text).toMatch(/^hello +a +- +starting +1s +0 +- +- +- +- +- +-$/m)
    expect(text).toMatch(/^hello +b +…WserverB +advertised +1h06m/m)
    expect(text).toMatch(/^…WclientC +client proxy +c +0\.1\.0 +1m30s +0 +\/ip4\/10\.0\.0\.1\/tcp\/4001$/m)
    expect(text).toMatch(/^…WclientC +hello +1 +1 +0 +0\.4ms +100\/1000ms$/m)
    expect(text).toMatch(/^no answer from 12D3KooWgone: timed out$/m)
    expect(text).not.toMatch(/partial/)
  })

  it('says when the survey was cut short', () => {
    expect(formatMeshStatus({ ...survey, partial: true })[0]).toMatch(/partial/)
  })

  it('writes durations as an operator reads them', () => {
    expect([duration(5), duration(65), duration(3600 * 2 + 60 * 5), duration(86_400 * 3 + 3600 * 4)]).toEqual(['5s', '1m05s', '2h05m', '3d4h'])
  })
})
