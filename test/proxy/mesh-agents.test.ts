import { afterEach, describe, expect, it } from 'vitest'
import type { Stream } from '@libp2p/interface'
import { HTTP_PROTOCOL } from '../../shared/protocols/http.js'
import type { MeshNode } from '../../shared/node.js'
import { http } from '../helpers/http.js'
import { MeshFront } from '../helpers/mesh-front.js'
import { startTestNode } from '../helpers/nodes.js'
import { waitFor } from '../helpers/wait-for.js'

describe('MeshAgents', () => {
  const nodes: MeshNode[] = []
  const fronts: MeshFront[] = []
  afterEach(async () => {
    await Promise.all(fronts.splice(0).map(async f => { await f.stop() }))
    await Promise.all(nodes.splice(0).map(async n => { await n.stop() }))
  })

  it('does not send on a pooled stream the instance has closed its side of (it drains)', async () => {
    const client = await startTestNode()
    const server = await startTestNode()
    nodes.push(client, server)
    const served: Stream[] = []
    // Answers one request per stream with keep-alive, then ends its side, as an instance
    // that starts draining ends every stream it holds, idle pooled ones included.
    await server.handle(HTTP_PROTOCOL, (stream: Stream) => {
      served.push(stream)
      const n = served.length
      stream.addEventListener('message', () => {
        stream.send(Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: ${n}\r\nConnection: keep-alive\r\n\r\n${'x'.repeat(n)}`))
        stream.close().catch(() => {})
      }, { once: true })
    })
    await client.peerStore.merge(server.peerId, { multiaddrs: server.getMultiaddrs() })
    const front = await new MeshFront(client, server.peerId).start()
    fronts.push(front)
    const get = async (): Promise<string> => (await http(`${front.base}/`, { timeoutMs: 3000 })).body.toString()
    expect(await get()).toBe('x')
    // The first stream went back to the pool, its far side ended, and the pool let it go.
    const httpStreams = (): number => client.getConnections(server.peerId).flatMap(c => c.streams).filter(s => s.protocol === HTTP_PROTOCOL).length
    await waitFor(() => served[0]?.writeStatus === 'closed' && httpStreams() === 0, 'the instance ending its side, and the client closing the stream')
    expect(await get()).toBe('xx')
    expect(served).toHaveLength(2)
    expect(front.outcomes.map(o => o.error)).toEqual([undefined, undefined])
  })
})
