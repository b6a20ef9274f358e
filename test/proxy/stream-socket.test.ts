import { afterEach, describe, expect, it } from 'vitest'
import type { Stream } from '@libp2p/interface'
import type { MeshNode } from '../../shared/node.js'
import { StreamSocket } from '../../proxy/stream-socket.js'
import { startTestNode } from '../helpers/nodes.js'

const PROTOCOL = '/test/socket/1.0.0'

describe('StreamSocket', () => {
  const nodes: MeshNode[] = []
  afterEach(async () => { await Promise.all(nodes.splice(0).map(async n => await n.stop())) })

  async function pair (): Promise<{ client: StreamSocket, server: Promise<StreamSocket> }> {
    const a = await startTestNode()
    const b = await startTestNode()
    nodes.push(a, b)
    const server = new Promise<StreamSocket>(resolve => {
      void b.handle(PROTOCOL, (stream: Stream, conn) => { resolve(new StreamSocket(stream, conn.remotePeer.toString())) })
    })
    const stream = await a.dialProtocol(b.getMultiaddrs()[0], PROTOCOL, { signal: AbortSignal.timeout(5000) })
    return { client: new StreamSocket(stream, b.peerId.toString()), server }
  }

  it('carries bytes both ways and half-closes', async () => {
    const { client, server: serverSide } = await pair()
    client.end(Buffer.from('ping'))
    const server = await serverSide
    const received: Buffer[] = []
    for await (const chunk of server.iterator({ destroyOnReturn: false })) received.push(chunk as Buffer)
    expect(Buffer.concat(received).toString()).toBe('ping')
    server.end(Buffer.from('pong'))
    const back: Buffer[] = []
    for await (const chunk of client) back.push(chunk as Buffer)
    expect(Buffer.concat(back).toString()).toBe('pong')
  })

  it('holds the writer back while the reader does not read (bounded buffering)', async () => {
    const { client, server: serverSide } = await pair()
    client.write(Buffer.alloc(1))
    const server = await serverSide
    server.pause()
    const chunk = Buffer.alloc(64 * 1024)
    let written = 0
    // Write until the socket asks us to wait, for as long as the writes are accepted.
    const deadline = Date.now() + 5000
    while (Date.now() < deadline) {
      if (!client.write(chunk)) {
        await new Promise<void>(resolve => {
          const timer = setTimeout(resolve, 300)
          client.once('drain', () => { clearTimeout(timer); resolve() })
        })
        if (client.writableNeedDrain) break
      }
      written += chunk.length
    }
    // The yamux window (16 MiB at most) plus socket buffers bound what is in flight.
    expect(client.writableNeedDrain).toBe(true)
    expect(written).toBeLessThan(64 * 1024 * 1024)
    client.destroy()
  })

  it('emits timeout after the idle time', async () => {
    const { client } = await pair()
    const fired = new Promise<number>(resolve => {
      const started = Date.now()
      client.setTimeout(150, () => { resolve(Date.now() - started) })
    })
    expect(await fired).toBeGreaterThanOrEqual(140)
    client.destroy()
  })
})
