import { request } from 'node:http'
import { afterEach, describe, expect, it } from 'vitest'
import type { Stream } from '@libp2p/interface'
import { MeshAgents } from '../../proxy/mesh-agents.js'
import { StreamSocket } from '../../proxy/stream-socket.js'
import { HTTP_PROTOCOL } from '../../shared/protocols/http.js'
import type { MeshNode } from '../../shared/node.js'
import { startTestNode } from '../helpers/nodes.js'
import { waitFor } from '../helpers/wait-for.js'

describe('MeshAgents', () => {
  const nodes: MeshNode[] = []
  afterEach(async () => { await Promise.all(nodes.splice(0).map(async n => await n.stop())) })

  it('does not send on a pooled stream the instance has closed its side of (it drains)', async () => {
    const client = await startTestNode()
    const server = await startTestNode()
    nodes.push(client, server)
    const served: StreamSocket[] = []
    // Answers one request per stream with keep-alive, then ends its side, as an instance
    // that starts draining ends every stream it holds, idle pooled ones included.
    await server.handle(HTTP_PROTOCOL, (stream: Stream, connection) => {
      const socket = new StreamSocket(stream, connection.remotePeer.toString())
      served.push(socket)
      // The client resets a stream it will not reuse: nothing to report here.
      socket.on('error', () => {})
      socket.once('data', () => {
        socket.end(`HTTP/1.1 200 OK\r\nContent-Length: ${served.length}\r\nConnection: keep-alive\r\n\r\n${'x'.repeat(served.length)}`)
      })
    })
    await client.peerStore.merge(server.peerId, { multiaddrs: server.getMultiaddrs() })
    const agents = new MeshAgents(client)
    const get = async (): Promise<string> => await new Promise((resolve, reject) => {
      const req = request({ host: 'instance', path: '/', agent: agents.for(server.peerId), timeout: 3000 }, res => {
        let body = ''
        res.setEncoding('utf8')
        res.on('data', (chunk: string) => { body += chunk })
        res.on('end', () => { resolve(body) })
      })
      req.on('timeout', () => { req.destroy(new Error('no answer within 3 s')) })
      req.on('error', reject)
      req.end()
    })
    try {
      expect(await get()).toBe('x')
      // The first stream is back in the pool, and its far side has ended.
      await waitFor(() => served[0]?.writableFinished === true ? true : undefined, 'the instance ending its side')
      expect(await get()).toBe('xx')
      expect(served).toHaveLength(2)
    } finally {
      agents.stop()
    }
  })
})
