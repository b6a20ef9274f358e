import { afterEach, describe, expect, it } from 'vitest'
import { allocatorCid } from '../../shared/cids.js'
import type { MeshNode } from '../../shared/node.js'
import { connectMesh, startTestNode } from '../helpers/nodes.js'

describe('mesh node', () => {
  const nodes: MeshNode[] = []
  afterEach(async () => { await Promise.all(nodes.splice(0).map(async n => await n.stop())) })

  it('provides and finds providers over the /hyphae DHT on loopback', async () => {
    for (let i = 0; i < 3; i++) nodes.push(await startTestNode())
    await connectMesh(nodes)
    const cid = await allocatorCid()
    await nodes[1].contentRouting.provide(cid, { signal: AbortSignal.timeout(10_000) })
    const found: string[] = []
    for await (const provider of nodes[2].contentRouting.findProviders(cid, { signal: AbortSignal.timeout(10_000) })) {
      found.push(provider.id.toString())
      break
    }
    expect(found).toContain(nodes[1].peerId.toString())
    expect(nodes[0].getProtocols()).toContain('/hyphae/kad/1.0.0')
  })
})
