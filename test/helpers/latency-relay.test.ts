import { createHash, randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { createConnection, createServer, type Server, type Socket } from 'node:net'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { LatencyRelay } from './latency-relay.js'

/** Sends `payload` and resolves with the milliseconds until the same number of bytes came back. */
async function roundTrip (socket: Socket, payload: Buffer): Promise<number> {
  const started = performance.now()
  let received = 0
  const done = new Promise<void>((resolve, reject) => {
    const onData = (chunk: Buffer): void => {
      received += chunk.length
      if (received >= payload.length) { cleanup(); resolve() }
    }
    const onError = (err: Error): void => { cleanup(); reject(err) }
    const cleanup = (): void => { socket.off('data', onData); socket.off('error', onError) }
    socket.on('data', onData)
    socket.on('error', onError)
  })
  socket.write(payload)
  await done
  return performance.now() - started
}

async function connect (port: number): Promise<Socket> {
  const socket = createConnection({ host: '127.0.0.1', port })
  socket.setNoDelay(true)
  await once(socket, 'connect')
  return socket
}

describe('LatencyRelay', () => {
  let echo: Server
  let echoPort: number
  let relay: LatencyRelay | undefined
  const sockets: Socket[] = []
  const echoSockets = new Set<Socket>()

  beforeEach(async () => {
    echo = createServer({ allowHalfOpen: true }, socket => {
      echoSockets.add(socket)
      socket.on('close', () => echoSockets.delete(socket))
      socket.setNoDelay(true)
      socket.pipe(socket)
      socket.on('error', () => { socket.destroy() })
    })
    echo.listen(0, '127.0.0.1')
    await once(echo, 'listening')
    const address = echo.address()
    if (address === null || typeof address === 'string') throw new Error('no echo address')
    echoPort = address.port
  })

  afterEach(async () => {
    for (const socket of sockets.splice(0)) socket.destroy()
    await relay?.stop()
    relay = undefined
    for (const socket of echoSockets) socket.destroy()
    await new Promise<void>(resolve => echo.close(() => { resolve() }))
  })

  it('adds twice the one-way delay to an echo round trip', async () => {
    const oneWay = 40
    relay = new LatencyRelay({ target: { host: '127.0.0.1', port: echoPort }, oneWayDelayMs: oneWay })
    const port = await relay.start()
    const socket = await connect(port)
    sockets.push(socket)

    const rtts: number[] = []
    for (let i = 0; i < 3; i++) rtts.push(await roundTrip(socket, Buffer.from(`ping ${i}`)))
    for (const rtt of rtts) {
      expect(rtt).toBeGreaterThanOrEqual(2 * oneWay - 2)
      expect(rtt).toBeLessThan(2 * oneWay + 150)
    }
  })

  it('applies a new delay to later chunks', async () => {
    relay = new LatencyRelay({ target: { host: '127.0.0.1', port: echoPort }, oneWayDelayMs: 5 })
    const port = await relay.start()
    const socket = await connect(port)
    sockets.push(socket)

    const fast = await roundTrip(socket, Buffer.from('a'))
    expect(fast).toBeGreaterThanOrEqual(8)
    expect(fast).toBeLessThan(10 + 150)

    relay.setDelay(60)
    expect(relay.oneWayDelayMs).toBe(60)
    const slow = await roundTrip(socket, Buffer.from('b'))
    expect(slow).toBeGreaterThanOrEqual(118)
    expect(slow).toBeLessThan(120 + 150)
  })

  it('keeps order and content of a large transfer, and forwards the half-close', async () => {
    relay = new LatencyRelay({ target: { host: '127.0.0.1', port: echoPort }, oneWayDelayMs: 3 })
    const port = await relay.start()
    const socket = await connect(port)
    sockets.push(socket)

    const payload = randomBytes(8 * 1024 * 1024 + 17)
    const hash = createHash('sha256')
    let received = 0
    socket.on('data', (chunk: Buffer) => { received += chunk.length; hash.update(chunk) })
    const ended = once(socket, 'end')
    // Changing the delay mid-transfer must not reorder chunks already queued.
    const flip = setInterval(() => { relay?.setDelay(relay.oneWayDelayMs === 3 ? 0 : 3) }, 5)
    try {
      socket.end(payload)
      await ended
    } finally {
      clearInterval(flip)
    }
    expect(received).toBe(payload.length)
    expect(hash.digest('hex')).toBe(createHash('sha256').update(payload).digest('hex'))
  })

  it('stop() drops open connections', async () => {
    relay = new LatencyRelay({ target: { host: '127.0.0.1', port: echoPort }, oneWayDelayMs: 1 })
    const port = await relay.start()
    const socket = await connect(port)
    sockets.push(socket)
    socket.on('error', () => {})
    const closed = once(socket, 'close')
    await relay.stop()
    await closed
    expect(socket.destroyed).toBe(true)
  })
})
