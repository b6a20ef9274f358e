import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { describe, expect, it } from 'vitest'
import { LoadHandle, type LoadReporter } from '../../proxy/load-handle.js'
import { PeerState, type RequestOutcome } from '../../proxy/peer-cache.js'
import { parseRecord } from '../../shared/registry/record.js'

const record = parseRecord({ name: 'svc', command: 'serve' })

async function setup (): Promise<{ peer: PeerState, reports: Array<RequestOutcome | 'unreachable'>, reporter: LoadReporter }> {
  const peer = new PeerState(peerIdFromPrivateKey(await generateKeyPair('Ed25519')), 1, { softRttMs: 100, hardRttMs: 300 }, Date.now())
  const reports: Array<RequestOutcome | 'unreachable'> = []
  const reporter: LoadReporter = {
    report: (_record, key, outcome) => { expect(key).toBe(peer.key); reports.push(outcome) },
    unreachable: (_record, p) => { expect(p).toBe(peer); reports.push('unreachable') }
  }
  return { peer, reports, reporter }
}

describe('LoadHandle', () => {
  it('counts in flight while held, once, however often it is released', async () => {
    const { peer, reporter } = await setup()
    const a = new LoadHandle(peer, record, reporter)
    const b = new LoadHandle(peer, record, reporter)
    expect(peer.inflight).toBe(2)
    a.release()
    a.release()
    expect(peer.inflight).toBe(1)
    b.release()
    expect(peer.inflight).toBe(0)
  })

  it('times answers over a pooled stream only, from when the request left', async () => {
    const { peer, reporter } = await setup()
    const fresh = new LoadHandle(peer, record, reporter)
    fresh.sent()
    fresh.responded(false)
    expect(peer.measured).toBe(false)
    const pooled = new LoadHandle(peer, record, reporter)
    pooled.sent()
    pooled.responded(true)
    expect(peer.measured).toBe(true)
    expect(peer.latencyMs).toBeLessThan(50)
  })

  it('reports how the request ended through one path', async () => {
    const { peer, reports, reporter } = await setup()
    const outcomes: Array<(h: LoadHandle) => void> = [
      h => { h.completed(200) },
      h => { h.completed(404) },
      h => { h.completed(503) },
      h => { h.failed('failed') },
      h => { h.failed('stale_stream') },
      h => { h.failed('unreachable') }
    ]
    for (const outcome of outcomes) {
      const handle = new LoadHandle(peer, record, reporter)
      outcome(handle)
      handle.release()
    }
    expect(reports).toEqual(['ok', 'ok', 'failed', 'failed', 'unreachable'])
    expect(peer.inflight).toBe(0)
  })
})
