import { afterEach, describe, expect, it } from 'vitest'
import { allocatorCid } from '../../shared/cids.js'
import { waitForRoutingTable, type MeshNode } from '../../shared/node.js'
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

  it('a DHT client node (an in-process sidecar) provides and is found, but serves no DHT and is in no routing table', async () => {
    for (let i = 0; i < 2; i++) nodes.push(await startTestNode())
    await connectMesh(nodes)
    const client = await startTestNode({ dhtClientMode: true })
    nodes.push(client)
    await client.dial(nodes[0].getMultiaddrs()[0])
    expect(await waitForRoutingTable(client, 10_000)).toBe(true)
    const cid = await allocatorCid()
    await client.contentRouting.provide(cid, { signal: AbortSignal.timeout(10_000) })
    const found: string[] = []
    for await (const provider of nodes[1].contentRouting.findProviders(cid, { signal: AbortSignal.timeout(10_000) })) {
      found.push(provider.id.toString())
      break
    }
    expect(found).toEqual([client.peerId.toString()])
    expect(client.getProtocols()).not.toContain('/hyphae/kad/1.0.0')
    const table = (nodes[0].services.dht as unknown as { routingTable: { find: (id: unknown) => Promise<unknown> } }).routingTable
    expect(await table.find(client.peerId)).toBeUndefined()
  })
})

describe('private networks', () => {
  const nodes: MeshNode[] = []
  afterEach(async () => { await Promise.all(nodes.splice(0).map(async n => await n.stop())) })

  const swarmKey = (hex: string): Uint8Array => new TextEncoder().encode(`/key/swarm/psk/1.0.0/\n/base16/\n${hex}\n`)

  it('connects nodes that share the PSK and refuses one without it', async () => {
    const psk = swarmKey('ab'.repeat(32))
    const a = await startTestNode({ psk })
    const b = await startTestNode({ psk })
    const outsider = await startTestNode()
    const otherKey = await startTestNode({ psk: swarmKey('cd'.repeat(32)) })
    nodes.push(a, b, outsider, otherKey)
    await b.dial(a.getMultiaddrs()[0], { signal: AbortSignal.timeout(5000) })
    expect(b.getConnections(a.peerId)).toHaveLength(1)
    await expect(outsider.dial(a.getMultiaddrs()[0], { signal: AbortSignal.timeout(3000) })).rejects.toThrow()
    await expect(otherKey.dial(a.getMultiaddrs()[0], { signal: AbortSignal.timeout(3000) })).rejects.toThrow()
  })

  it('reads a swarm key file and refuses anything else with a clear error', async () => {
    const { readPsk } = await import('../../shared/node.js')
    const good = `/key/swarm/psk/1.0.0/\n/base16/\n${'0f'.repeat(32)}\n`
    expect(await readPsk(undefined, good)).toEqual(new TextEncoder().encode(good))
    await expect(readPsk(undefined, 'not a key')).rejects.toThrow(/not a swarm key/)
    await expect(readPsk('/nonexistent/psk')).rejects.toThrow(/cannot read PSK file/)
  })
})
