// A TCP relay on 127.0.0.1 that delays every chunk in both directions, to give loopback peers
// a real RTT. Used by the benchmarks and, through test/helpers/latency-relay.ts, the tests.
import { once } from 'node:events'
import { createConnection, createServer, type Server, type Socket } from 'node:net'

export interface LatencyRelayOptions {
  target: { host: string, port: number }
  /** Added to each direction, so a round trip through the relay gains twice this. */
  oneWayDelayMs: number
}

interface Pending {
  due: number
  chunk?: Buffer
  /** Set on the marker that forwards a half-close once the data before it is delivered. */
  end?: true
}

/** Pauses the sender while this much is held back in one direction, so memory stays bounded. */
const HIGH_WATER_BYTES = 4 * 1024 * 1024

/**
 * One direction of one connection. A single FIFO queue and a single timer keep the order of
 * chunks even when the delay changes between them (a timer per chunk could reorder).
 */
class DelayedPipe {
  private readonly queue: Pending[] = []
  private queuedBytes = 0
  private timer: NodeJS.Timeout | undefined
  private waitingForDrain = false

  constructor (
    private readonly from: Socket,
    private readonly to: Socket,
    private readonly delayMs: () => number
  ) {
    from.on('data', (chunk: Buffer) => {
      this.queue.push({ due: performance.now() + this.delayMs(), chunk })
      this.queuedBytes += chunk.length
      if (this.queuedBytes > HIGH_WATER_BYTES) from.pause()
      this.schedule()
    })
    from.on('end', () => {
      this.queue.push({ due: performance.now() + this.delayMs(), end: true })
      this.schedule()
    })
    to.on('drain', () => {
      this.waitingForDrain = false
      this.pump()
    })
  }

  stop (): void {
    if (this.timer !== undefined) clearTimeout(this.timer)
    this.timer = undefined
    this.queue.length = 0
  }

  private schedule (): void {
    if (this.timer !== undefined || this.waitingForDrain) return
    const head = this.queue[0]
    if (head === undefined) return
    // Timers may fire a little early, so pump() re-checks and comes back here if needed.
    const wait = Math.max(0, Math.ceil(head.due - performance.now()))
    this.timer = setTimeout(() => {
      this.timer = undefined
      this.pump()
    }, wait)
  }

  private pump (): void {
    while (this.queue.length > 0 && !this.waitingForDrain) {
      const head = this.queue[0]
      if (head.due > performance.now()) break
      this.queue.shift()
      if (this.to.destroyed) { this.stop(); return }
      if (head.end === true) {
        this.to.end()
        continue
      }
      const chunk = head.chunk as Buffer
      this.queuedBytes -= chunk.length
      if (!this.to.write(chunk)) this.waitingForDrain = true
    }
    if (this.queuedBytes <= HIGH_WATER_BYTES / 2 && this.from.isPaused() && !this.from.destroyed) this.from.resume()
    this.schedule()
  }
}

/**
 * A TCP relay on 127.0.0.1 that delays every chunk in both directions, to give loopback
 * peers a real round-trip time in tests.
 */
export class LatencyRelay {
  private readonly server: Server
  private readonly sockets = new Set<Socket>()
  private readonly pipes = new Set<DelayedPipe>()
  private delayMs: number
  private listenPort = 0

  constructor (private readonly opts: LatencyRelayOptions) {
    this.delayMs = checkDelay(opts.oneWayDelayMs)
    // Half-open on both sides: a client that has sent everything still awaits its delayed reply.
    this.server = createServer({ allowHalfOpen: true }, client => { this.accept(client) })
  }

  /** Resolves with the relay's port. */
  async start (): Promise<number> {
    this.server.listen(0, '127.0.0.1')
    await once(this.server, 'listening')
    const address = this.server.address()
    if (address === null || typeof address === 'string') throw new Error('relay has no TCP address')
    this.listenPort = address.port
    return this.listenPort
  }

  get port (): number {
    return this.listenPort
  }

  get oneWayDelayMs (): number {
    return this.delayMs
  }

  /** Applies to chunks that arrive from now on; chunks already held keep their due time. */
  setDelay (oneWayDelayMs: number): void {
    this.delayMs = checkDelay(oneWayDelayMs)
  }

  async stop (): Promise<void> {
    for (const pipe of this.pipes) pipe.stop()
    this.pipes.clear()
    for (const socket of this.sockets) socket.destroy()
    this.sockets.clear()
    if (!this.server.listening) return
    await new Promise<void>(resolve => this.server.close(() => { resolve() }))
  }

  private accept (client: Socket): void {
    const upstream = createConnection({ host: this.opts.target.host, port: this.opts.target.port, allowHalfOpen: true })
    client.setNoDelay(true)
    upstream.setNoDelay(true)
    const delay = (): number => this.delayMs
    const pipes = [new DelayedPipe(client, upstream, delay), new DelayedPipe(upstream, client, delay)]
    for (const pipe of pipes) this.pipes.add(pipe)
    this.sockets.add(client)
    this.sockets.add(upstream)

    let closed = false
    const teardown = (): void => {
      if (closed) return
      closed = true
      for (const pipe of pipes) { pipe.stop(); this.pipes.delete(pipe) }
      client.destroy()
      upstream.destroy()
      this.sockets.delete(client)
      this.sockets.delete(upstream)
    }
    // A reset on one side is passed on at once: delaying failures only slows tests down.
    client.on('error', teardown)
    upstream.on('error', teardown)
    // Both halves must be done before the pair goes: a half-closed side may still receive.
    let halvesClosed = 0
    const onClose = (): void => { if (++halvesClosed === 2) teardown() }
    client.on('close', onClose)
    upstream.on('close', onClose)
  }
}

function checkDelay (ms: number): number {
  if (!Number.isFinite(ms) || ms < 0) throw new Error(`invalid one-way delay ${ms}`)
  return ms
}
