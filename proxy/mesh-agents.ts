import { setMaxListeners } from 'node:events'
import type { PeerId, Stream, StreamCloseEvent, StreamMessageEvent } from '@libp2p/interface'
import type { Uint8ArrayList } from 'uint8arraylist'
import { deadline } from '../shared/abort.js'
import type { Logger } from '../shared/log.js'
import type { MeshNode } from '../shared/node.js'
import { HTTP_PROTOCOL, MAX_HTTP_STREAMS, POOLED_STREAM_IDLE_MS } from '../shared/protocols/http.js'
import { asBuffer } from './bytes.js'

/**
 * Opening a stream takes ~1.3 ms on an open connection, and a dial of a new one a few round
 * trips: one that takes this long is to a peer going away, and the request is better retried
 * elsewhere (it provably never left) than held.
 */
const STREAM_OPEN_TIMEOUT_MS = 5_000
/** Idle streams kept per peer; more than this many requests at once open streams that are closed after. */
const MAX_IDLE_STREAMS = 256
/** Agents kept at most; beyond it, idle ones (no stream in use, no dial) are closed. */
const MAX_AGENTS = 1024
/** After closing our end of a stream not kept, how long the instance has to close its end before a reset. */
const LINGER_MS = 1000

/**
 * Who holds a stream for one exchange, and gets its events. No method may throw (they run in
 * the stream's event listeners, and an exception out of one would take the proxy down).
 */
export interface StreamUser {
  onData: (chunk: Buffer) => void
  /** The instance closed its end: every byte it sent has gone to onData. */
  onEnd: () => void
  /** The stream is gone; `error` when it was reset or aborted, `here` when by this side. */
  onClose: (error: Error | undefined, here: boolean) => void
  /** The send buffer emptied: sending may go on. */
  onDrain: () => void
}

type StreamState = 'busy' | 'idle' | 'closing' | 'closed'

/**
 * One `/http/1.1` stream to a peer, lent to one exchange at a time. Its listeners are added
 * once and pass the events to the exchange that holds it; between exchanges they watch the
 * idle stream, which goes as soon as the instance closes its end or sends anything.
 */
export class PeerStream {
  /** Whether an earlier exchange used it (a stale stream is possible only then). */
  reused = false
  private state: StreamState = 'busy'
  private user: StreamUser | undefined
  /** The idle deadline while pooled, the linger deadline while closing. */
  private timer: NodeJS.Timeout | undefined
  /** This side aborted it: its end is no news about the instance. */
  private abortedHere = false

  constructor (readonly stream: Stream, private readonly agent: PeerAgent) {
    stream.addEventListener('message', this.onMessage)
    stream.addEventListener('end', this.onEnd)
    stream.addEventListener('close', this.onClose)
    // Not stream.onDrain(): in @libp2p/utils 7.4 its promise is never renewed after the first
    // drain, so every later wait would resolve at once and buffer without bound.
    stream.addEventListener('drain', this.onDrain)
  }

  /** Lends the stream to `user` for an exchange. */
  lend (user: StreamUser): void {
    this.user = user
    this.state = 'busy'
  }

  /** Sends (throws once the stream cannot be written); false: wait for onDrain. */
  send (data: Uint8Array | Uint8ArrayList): boolean {
    return this.stream.send(data)
  }

  /** Stops reading (the client is not reading the answer). */
  pause (): void {
    if (this.stream.readStatus === 'readable') this.stream.pause()
  }

  resume (): void {
    if (this.stream.readStatus === 'paused') this.stream.resume()
  }

  /** Closes our end once what was sent is out: a one-request stream's request is whole. */
  closeWrite (): void {
    this.stream.close().catch((err: unknown) => { this.abort(err as Error) })
  }

  /**
   * Resets the stream for the exchange that holds it: what is on it can no longer be told
   * apart from the next exchange. That exchange is not told.
   */
  reset (err: Error): void {
    this.user = undefined
    this.abort(err)
  }

  /** Resets the stream; an exchange holding it learns from onClose. */
  abort (err: Error): void {
    this.abortedHere = true
    if (this.stream.status === 'open' || this.stream.status === 'closing') this.stream.abort(err)
    // A stream already gone dispatches no 'close' again.
    this.toClosed()
  }

  /**
   * The exchange is over. `reusable`: request and answer were whole and the instance keeps the
   * stream; otherwise it is closed.
   */
  release (reusable: boolean): void {
    this.user = undefined
    if (this.state !== 'busy') return
    this.reused = true
    if (reusable && this.agent.keep(this)) {
      this.state = 'idle'
      this.resume()
      // Created once: the deadline restarts as the stream goes back to the pool.
      if (this.timer == null) {
        this.timer = setTimeout(this.onTimer, POOLED_STREAM_IDLE_MS)
        this.timer.unref()
      } else {
        this.timer.refresh()
      }
      return
    }
    this.close()
  }

  /** Closes our end, and resets the stream if the instance does not close its end soon. */
  close (): void {
    if (this.state === 'closing' || this.state === 'closed') return
    this.user = undefined
    this.agent.forget(this)
    this.state = 'closing'
    // What still comes is read and dropped: a paused stream would hold it.
    this.resume()
    clearTimeout(this.timer)
    this.timer = setTimeout(this.onTimer, LINGER_MS)
    this.timer.unref()
    this.stream.close().catch((err: unknown) => { this.abort(err as Error) })
  }

  private toClosed (): void {
    if (this.state === 'closed') return
    this.state = 'closed'
    clearTimeout(this.timer)
    this.agent.forget(this)
  }

  private readonly onMessage = (evt: StreamMessageEvent): void => {
    try {
      // A list's pieces one by one: subarray() would copy them into one buffer.
      if (evt.data instanceof Uint8Array) this.received(evt.data)
      else for (const piece of evt.data) this.received(piece)
    } catch (err) {
      this.crashed(err)
    }
  }

  private received (data: Uint8Array): void {
    const user = this.user
    if (user != null) {
      user.onData(asBuffer(data))
      return
    }
    // Bytes nobody asked for: the stream is out of step with its requests.
    if (this.state === 'idle') this.abort(new Error('the instance sent bytes on an idle stream'))
  }

  private readonly onEnd = (): void => {
    try {
      // Also dispatched as the stream is aborted or reset: 'close' says so.
      if (this.stream.status === 'aborted' || this.stream.status === 'reset') return
      const user = this.user
      if (user != null) {
        user.onEnd()
        if (this.state === 'closed' && this.user === user) {
          this.user = undefined
          user.onClose(undefined, false)
        }
        return
      }
      // Half-open streams do not close when the far end closes its side: one the instance
      // ended while it was pooled (a draining instance ends them all) would take a request
      // that can get no answer.
      if (this.state === 'idle') this.close()
    } catch (err) {
      this.crashed(err)
    }
  }

  private readonly onClose = (evt: StreamCloseEvent): void => {
    try {
      this.toClosed()
      // Closed cleanly with bytes still unread (the stream is paused): they are read, and the
      // exchange told, before 'end'.
      if (evt.error == null && !this.stream.readableEnded) return
      const user = this.user
      this.user = undefined
      user?.onClose(evt.error, this.abortedHere)
    } catch (err) {
      this.crashed(err)
    }
  }

  private readonly onDrain = (): void => {
    try {
      this.user?.onDrain()
    } catch (err) {
      this.crashed(err)
    }
  }

  private readonly onTimer = (): void => {
    try {
      if (this.state === 'idle') this.close()
      else if (this.state === 'closing') this.abort(new Error('the instance did not close its end'))
    } catch (err) {
      this.crashed(err)
    }
  }

  /** A bug: the stream goes, the proxy stays. */
  private crashed (err: unknown): void {
    this.agent.log?.error({ err, peer: this.agent.peer.toString() }, 'a mesh stream\'s listener failed')
    try {
      this.abort(new Error('internal error'))
    } catch (abortErr) {
      this.agent.log?.error({ err: abortErr }, 'resetting a mesh stream failed')
    }
  }
}

/**
 * The streams to one peer: idle ones are reused, the most recently used first (LIFO), so
 * that a quiet period leaves the others idle long enough to be closed.
 */
export class PeerAgent {
  private readonly idle: PeerStream[] = []
  /** Streams lent out, for drop(). */
  private readonly busy = new Set<PeerStream>()
  /** Aborts the stream opens in progress when the peer is given up on. */
  private readonly dials = new AbortController()
  private opening = 0
  private dropped = false

  constructor (private readonly node: MeshNode, readonly peer: PeerId, readonly reuseStreams: boolean, readonly log?: Logger) {
    setMaxListeners(0, this.dials.signal)
  }

  /** An idle stream, lent to `user`; undefined when there is none (open one). */
  take (user: StreamUser): PeerStream | undefined {
    for (;;) {
      const stream = this.idle.pop()
      if (stream == null) return undefined
      const s = stream.stream
      // One whose end the instance closed, or that broke, since it went idle.
      if (s.status !== 'open' || s.writeStatus !== 'writable' || s.remoteWriteStatus !== 'writable') {
        stream.close()
        continue
      }
      this.busy.add(stream)
      stream.lend(user)
      return stream
    }
  }

  /** Opens a new stream for `user`. Rejects when none can be had in time, or the peer is dropped. */
  async open (user: StreamUser): Promise<PeerStream> {
    if (this.dropped) throw new Error('the instance was dropped')
    const dial = deadline(STREAM_OPEN_TIMEOUT_MS, this.dials.signal)
    this.opening++
    try {
      const s = await this.node.dialProtocol(this.peer, HTTP_PROTOCOL, { maxOutboundStreams: MAX_HTTP_STREAMS, signal: dial.signal })
      const stream = new PeerStream(s, this)
      this.busy.add(stream)
      stream.lend(user)
      return stream
    } finally {
      this.opening--
      dial.clear()
    }
  }

  /** Whether a stream from the pool is unused now (no stream lent out, no dial). */
  get unused (): boolean {
    return this.busy.size === 0 && this.opening === 0
  }

  /** @internal A released stream: true when it goes back to the pool. */
  keep (stream: PeerStream): boolean {
    this.busy.delete(stream)
    if (!this.reuseStreams || this.dropped || this.idle.length >= MAX_IDLE_STREAMS) return false
    this.idle.push(stream)
    return true
  }

  /** @internal A stream leaving the pool, or closing. */
  forget (stream: PeerStream): void {
    this.busy.delete(stream)
    const at = this.idle.lastIndexOf(stream)
    if (at !== -1) this.idle.splice(at, 1)
  }

  /** Closes the idle streams; with `inFlight`, also aborts those in use and the dials. */
  drop (inFlight: boolean, reason: Error): void {
    this.dropped = true
    for (const stream of this.idle.splice(0)) stream.close()
    if (!inFlight) return
    this.dials.abort(reason)
    for (const stream of [...this.busy]) stream.abort(reason)
  }
}

/** One agent per peer, made on first use and dropped with the peer. */
export class MeshAgents {
  private readonly agents = new Map<string, PeerAgent>()

  /**
   * @param reuseStreams keep streams open for further requests (the default between hyphae
   * peers); false: one stream per request, as the libp2p HTTP spec suggests.
   * @param log told of bugs in a stream's event listeners (the stream is reset).
   */
  constructor (private readonly node: MeshNode, private readonly reuseStreams = true, private readonly log?: Logger) {}

  for (peer: PeerId): PeerAgent {
    const key = peer.toString()
    let agent = this.agents.get(key)
    if (agent == null) {
      agent = new PeerAgent(this.node, peer, this.reuseStreams, this.log)
      this.agents.set(key, agent)
      if (this.agents.size > MAX_AGENTS) this.evictIdle()
    }
    return agent
  }

  /**
   * Closes the idle pooled streams to a peer that failed, so the next request opens a fresh
   * one. Requests still in flight on it finish or fail on their own, unless `inFlight`: a
   * peer that stopped answering pings will not answer them either, and failing them now lets
   * them go elsewhere instead of waiting out the response timeout.
   */
  drop (peer: PeerId, options: { inFlight?: boolean } = {}): void {
    const key = peer.toString()
    const agent = this.agents.get(key)
    if (agent == null) return
    this.agents.delete(key)
    agent.drop(options.inFlight === true, new Error('the instance stopped answering pings'))
  }

  /** Instances come and go: agents of peers not used for long must not pile up. */
  private evictIdle (): void {
    for (const [key, agent] of this.agents) {
      if (this.agents.size <= MAX_AGENTS) return
      if (!agent.unused) continue
      this.agents.delete(key)
      agent.drop(false, new Error('too many instances'))
    }
  }

  stop (): void {
    for (const agent of this.agents.values()) agent.drop(true, new Error('the proxy is stopping'))
    this.agents.clear()
  }
}
