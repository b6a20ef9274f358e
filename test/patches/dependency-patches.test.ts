import { Socket } from 'node:net'
import type { Stream } from '@libp2p/interface'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { MeshNode } from '../../shared/node.js'
import { startTestNode } from '../helpers/nodes.js'

/**
 * What each patch in patches/ changes, measured on real nodes: when a dependency update
 * drops or breaks a patch, one of these fails (patch-package already fails the install when
 * a patch no longer applies).
 */
describe('dependency patches', () => {
  const PROTOCOL = '/test/patches/1.0.0'
  const MESSAGE = new Uint8Array(1024).fill(7)
  let a: MeshNode
  let b: MeshNode
  let client: Stream
  let server: Stream
  /** Socket writes (write or writev calls) per local port, while counting. */
  const writes = new Map<number, number>()
  const original = { write: Socket.prototype._write, writev: Socket.prototype._writev }

  beforeAll(async () => {
    a = await startTestNode()
    b = await startTestNode()
    const accepted = new Promise<Stream>(resolve => { void b.handle(PROTOCOL, stream => { resolve(stream) }) })
    client = await a.dialProtocol(b.getMultiaddrs()[0], PROTOCOL, { signal: AbortSignal.timeout(5000) })
    client.send(new Uint8Array(1))
    server = await accepted
    await received(server)
    const count = (socket: Socket): void => { if (socket.localPort != null) writes.set(socket.localPort, (writes.get(socket.localPort) ?? 0) + 1) }
    Socket.prototype._write = function (this: Socket, ...args: Parameters<Socket['_write']>) { count(this); original.write.apply(this, args) }
    Socket.prototype._writev = function (this: Socket, ...args: Parameters<NonNullable<Socket['_writev']>>) { count(this); original.writev?.apply(this, args) }
  })

  afterAll(async () => {
    Socket.prototype._write = original.write
    Socket.prototype._writev = original.writev
    await a?.stop()
    await b?.stop()
  })

  async function received (stream: Stream): Promise<void> {
    await new Promise<void>(resolve => { stream.addEventListener('message', () => { resolve() }, { once: true }) })
  }

  it('@libp2p/tcp: a noise message leaves in one socket write (corked), not one per piece', async () => {
    // b's end of the connection is the socket on b's listen port; every other one is a's.
    const bPort = Number(/\/tcp\/(\d+)/.exec(b.getMultiaddrs()[0].toString())?.[1])
    // Background traffic (DHT, identify) can only add writes: the fewest over several sends is the message's own.
    let fewest = Infinity
    for (let i = 0; i < 20; i++) {
      writes.clear()
      const arrived = received(server)
      client.send(MESSAGE)
      await arrived
      fewest = Math.min(fewest, [...writes].filter(([local]) => local !== bPort).reduce((sum, [, n]) => sum + n, 0))
    }
    expect(fewest).toBe(1)
  })

  it('@libp2p/tcp: messages sent in one turn of the event loop, on two streams, leave in one socket write', async () => {
    const accepted = new Promise<Stream>(resolve => { void b.handle(`${PROTOCOL}/2`, stream => { resolve(stream) }) })
    const client2 = await a.dialProtocol(b.getMultiaddrs()[0], `${PROTOCOL}/2`, { signal: AbortSignal.timeout(5000) })
    client2.send(new Uint8Array(1))
    const server2 = await accepted
    await received(server2)
    const bPort = Number(/\/tcp\/(\d+)/.exec(b.getMultiaddrs()[0].toString())?.[1])
    let fewest = Infinity
    for (let i = 0; i < 20; i++) {
      writes.clear()
      const arrived = Promise.all([received(server), received(server2)])
      // Two requests' worth at once, as a proxy sends them under load: unpatched, one write each.
      client.send(MESSAGE)
      client2.send(MESSAGE)
      await arrived
      fewest = Math.min(fewest, [...writes].filter(([local]) => local !== bPort).reduce((sum, [, n]) => sum + n, 0))
    }
    expect(fewest).toBe(1)
    client2.abort(new Error('test over'))
  })

  it('@chainsafe/libp2p-yamux: no window update for a message far below half the window', async () => {
    const frames: number[] = []
    const yamuxStream = server as unknown as { sendFrame: (header: { type: number }, data?: unknown) => void }
    const sendFrame = yamuxStream.sendFrame.bind(server)
    yamuxStream.sendFrame = (header, data) => { frames.push(header.type); sendFrame(header, data) }
    for (let i = 0; i < 5; i++) {
      const arrived = received(server)
      client.send(MESSAGE)
      await arrived
    }
    // FrameType.WindowUpdate is 1: unpatched, each message above was answered by one.
    expect(frames.filter(type => type === 1)).toEqual([])
  })
})
