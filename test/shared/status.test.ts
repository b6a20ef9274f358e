import { describe, expect, it } from 'vitest'
import { encodeStatus, MAX_STATUS_BYTES, MAX_STATUS_INSTANCES, MAX_STATUS_SERVICES, type NodeStatus } from '../../shared/protocols/status.js'

const node = (instances: number, services: number, peersEach = 1): NodeStatus => ({
  role: 'proxy',
  mode: 'client',
  host: 'h',
  peerId: '12D3KooWtest',
  version: '0.1.0',
  uptimeS: 1,
  addresses: ['/ip4/127.0.0.1/tcp/1'],
  instances: Array.from({ length: instances }, (_, i) => ({ service: `s${i}`, state: 'healthy', ageS: 1, relaunches: 0, peerId: `12D3KooW${'x'.repeat(44)}${i}` })),
  services: Array.from({ length: services }, (_, i) => ({
    service: `svc-${i}`,
    limits: { softMs: 100, hardMs: 1000 },
    peers: Array.from({ length: peersEach }, (_, p) => ({ peer: `12D3KooW${'y'.repeat(44)}${p}`, level: 'reliable', rttMs: 1.5, inflight: 0 }))
  }))
})

const decode = (bytes: Uint8Array): NodeStatus => JSON.parse(new TextDecoder().decode(bytes)) as NodeStatus

describe('encodeStatus', () => {
  it('sends a small status whole, unmarked', () => {
    const status = node(3, 2)
    expect(decode(encodeStatus(status))).toEqual(status)
  })

  it('cuts lists past their caps and says so', () => {
    const out = decode(encodeStatus(node(MAX_STATUS_INSTANCES + 5, MAX_STATUS_SERVICES + 5)))
    expect(out.instances).toHaveLength(MAX_STATUS_INSTANCES)
    expect(out.services).toHaveLength(MAX_STATUS_SERVICES)
    expect(out.truncated).toBe(true)
  })

  it('halves the caches, then the instances, until the answer fits its frame', () => {
    const bytes = encodeStatus(node(MAX_STATUS_INSTANCES, MAX_STATUS_SERVICES, 64))
    expect(bytes.length).toBeLessThanOrEqual(MAX_STATUS_BYTES)
    const out = decode(bytes)
    expect(out.truncated).toBe(true)
    expect(out.services?.length).toBeLessThan(MAX_STATUS_SERVICES)
  })
})
