import { pino } from 'pino'
import { afterAll, describe, expect, it } from 'vitest'
import { serviceCid } from '../../shared/cids.js'
import { InstanceCounter } from '../../shared/instance-count.js'
import { PeerFinder } from '../../shared/peer-finder.js'
import type { MeshNode } from '../../shared/node.js'
import { parseRecord } from '../../shared/registry/record.js'
import { connectMesh, startTestNode } from '../helpers/nodes.js'
import { waitFor } from '../helpers/wait-for.js'

const log = pino({ level: 'silent' })

describe('InstanceCounter', () => {
  const nodes: MeshNode[] = []
  afterAll(async () => {
    await Promise.all(nodes.map(async n => { try { await n.stop() } catch { /* stopped already */ } }))
  })

  it('counts the distinct live providers of a service, not the stale records of gone ones', async () => {
    for (let i = 0; i < 4; i++) nodes.push(await startTestNode())
    await connectMesh(nodes)
    const [asker, one, two, gone] = nodes
    const record = parseRecord({ name: 'counted', command: 'serve' })
    const cid = await serviceCid(record)
    for (const node of [one, two, gone]) await node.contentRouting.provide(cid, { signal: AbortSignal.timeout(5000) })

    // The walk and ping deadlines (1 s by default) are production trade-offs; here a loaded CI
    // machine must not cut them short: this test is about live versus stale providers.
    const counter = new InstanceCounter({ finder: new PeerFinder({ node: asker, log }), cacheMs: 60_000, lookupTimeoutMs: 10_000, pingTimeoutMs: 5000 })
    // A walk right after the puts may not meet every record yet (twice in full runs, 2 of 3
    // within a second): the DHT's spreading is not what this is about, so walk until it has.
    const all = [one, two, gone].map(n => n.peerId.toString()).sort()
    await waitFor(async () => (await counter.count(record, undefined, 0)) === 3 ? true : undefined, 'a walk meeting all three provider records', 20_000)
    expect([...await counter.providers(record)].sort()).toEqual(all)

    // Its provider record stays in the DHT; its node does not answer any more.
    await gone.stop()
    // Cached within cacheMs ...
    expect(await counter.count(record)).toBe(3)
    // ... a fresh walk pings, and never counts it again (a walk may still miss a live one).
    await waitFor(async () => {
      const peers = await counter.providers(record, undefined, 0)
      expect(peers.has(gone.peerId.toString())).toBe(false)
      return peers.size === 2 ? true : undefined
    }, 'a walk counting the two live providers', 20_000)
  })
})
