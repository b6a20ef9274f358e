import { generateKeyPair } from '@libp2p/crypto/keys'
import { multiaddr } from '@multiformats/multiaddr'
import { createMeshNode, routingTableSize, type MeshNode, type MeshNodeInit } from '../../shared/node.js'

/** A real libp2p node on 127.0.0.1 with an ephemeral port. */
export async function startTestNode (init: Partial<MeshNodeInit> = {}): Promise<MeshNode> {
  const node = await createMeshNode({
    privateKey: init.privateKey ?? await generateKeyPair('Ed25519'),
    listen: [multiaddr('/ip4/127.0.0.1/tcp/0')],
    ...init
  })
  await node.start()
  return node
}

/** Connects every node to the first one and waits until the DHT routing tables are filled. */
export async function connectMesh (nodes: MeshNode[]): Promise<void> {
  const [first, ...rest] = nodes
  await Promise.all(rest.map(async n => await n.dial(first.getMultiaddrs()[0])))
  const deadline = Date.now() + 10_000
  while (Date.now() < deadline) {
    if (nodes.every(n => routingTableSize(n) > 0)) return
    await new Promise(resolve => setTimeout(resolve, 20))
  }
  throw new Error('DHT routing tables did not fill within 10 s')
}
