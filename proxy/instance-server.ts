import type { Connection, Stream, StreamCloseEvent, StreamMessageEvent } from '@libp2p/interface'
import { Uint8ArrayList } from 'uint8arraylist'
import type { Logger } from '../shared/log.js'
import type { MeshNode } from '../shared/node.js'
import { HTTP_PROTOCOL, MAX_HTTP_STREAMS, SERVER_KEEP_ALIVE_MS } from '../shared/protocols/http.js'
import { AppPool, type AppHandler, type AppLease } from './app-pool.js'
import { asBuffer } from './bytes.js'
import { errorResponseBytes } from './errors.js'
import { forwardRawHeaders, withContentLength } from './headers.js'
import { BodyError, MessageBody } from './http1-body.js'
import { findHeadEnd, HeadError, MAX_HEAD_BYTES, parseRequestHead, ResponseHeadReader, responseFraming, serializeHead, type RequestHead, type ResponseHead } from './http1-head.js'

/**
 * What one untrusted peer, or all of them, may hold of this instance. Without these, a few
 * hundred streams that send half a request (or a body that never comes) pin every
 * connection to the app until the app times them out, if it ever does.
 */
export interface InstanceLimits {
  /** From a request's first byte to the end of its headers. */
  headersTimeoutMs: number
  /** Longest silence while a request body is arriving (not counting time the app is not reading). */
  bodyIdleTimeoutMs: number
  /** Requests being served at once, in all (each holds one connection to the app). */
  maxRequests: number
  /** Requests being served at once for one remote peer. */
  maxRequestsPerPeer: number
}

export const INSTANCE_LIMITS: InstanceLimits = { headersTimeoutMs: 10_000, bodyIdleTimeoutMs: 15_000, maxRequests: 256, maxRequestsPerPeer: 128 }

export interface InstanceServerInit {
  node: MeshNode
  /** The local app this proxy fronts. */
  app: { host: string, port: number }
  log: Logger
  /** Called as each request from the mesh starts and ends (with its status and duration), for idle tracking and metrics. */
  onRequest?: (event: 'start' | 'end', status?: number, durationMs?: number) => void
  limits?: Partial<InstanceLimits>
}

/** Bytes of later (pipelined) requests read while one is served, before the stream is paused. */
const READ_AHEAD_BYTES = 64 * 1024
/** After our last answer on a stream, how long the peer has to close its end before a reset. */
const LINGER_MS = 1000
/** Why the stream is paused: bits, as both may hold at once. */
const PAUSED_FOR_APP = 1
const PAUSED_READ_AHEAD = 2
/** A peer that went away mid-request (nginx's code: no HTTP status fits). */
const PEER_GONE = 499
const CR = 13
const LF = 10

/** A stream's deadlines: between requests, within a head, within a body, after closing. */
type Deadline = 'keep-alive' | 'headers' | 'body' | 'linger'

/** What a stream being served needs of its server. */
interface Serving {
  readonly limits: InstanceLimits
  readonly pool: AppPool
  readonly log: Logger
  readonly appHost: string
  readonly draining: boolean
  /** Why a request of this peer is not taken now, or undefined. */
  refusal: (peer: string) => string | undefined
  started: (peer: string) => void
  finished: (peer: string, status: number, durationMs: number) => void
  closed: (stream: MeshStream) => void
}

/**
 * Serves `/http/1.1` streams from the mesh by relaying them to the local app as bytes: each
 * request head is parsed, checked and rewritten (hop-by-hop headers, Via, Forwarded), and
 * everything else is copied verbatim between the stream and a pooled TCP connection to the
 * app, with only the framing followed to know where each message ends. Both one-request
 * streams (the libp2p HTTP spec) and pooled keep-alive streams from hyphae peers work.
 */
export class InstanceServer {
  private readonly limits: InstanceLimits
  private readonly pool: AppPool
  private readonly streams = new Set<MeshStream>()
  private readonly perPeer = new Map<string, number>()
  private readonly serving: Serving
  private inFlight = 0
  private draining = false
  private idleWaiters: Array<() => void> = []

  constructor (private readonly init: InstanceServerInit) {
    const limits = this.limits = { ...INSTANCE_LIMITS, ...init.limits }
    const pool = this.pool = new AppPool({ host: init.app.host, port: init.app.port, max: limits.maxRequests })
    const draining = (): boolean => this.draining
    this.serving = {
      limits,
      pool,
      log: init.log,
      appHost: `${init.app.host}:${init.app.port}`,
      get draining () { return draining() },
      refusal: peer => this.refusal(peer),
      started: peer => { this.started(peer) },
      finished: (peer, status, durationMs) => { this.finished(peer, status, durationMs) },
      closed: stream => { this.streams.delete(stream) }
    }
  }

  get requestsInFlight (): number {
    return this.inFlight
  }

  async start (): Promise<void> {
    await this.init.node.handle(HTTP_PROTOCOL, this.onStream, { maxInboundStreams: MAX_HTTP_STREAMS, maxOutboundStreams: MAX_HTTP_STREAMS })
  }

  /**
   * Drains: takes no new streams, answers what is in flight (each answer asks the client to
   * close its stream, so pooled streams are not reused), then ends every stream cleanly so
   * the last bytes are flushed, and only then resets what is left.
   */
  async stop (drainMs = 10_000): Promise<void> {
    this.draining = true
    await this.init.node.unhandle(HTTP_PROTOCOL)
    if (this.inFlight > 0) {
      await new Promise<void>(resolve => {
        const timer = setTimeout(resolve, drainMs)
        this.idleWaiters.push(() => { clearTimeout(timer); resolve() })
      })
    }
    await Promise.all([...this.streams].map(async stream => { await stream.shutdown() }))
    this.pool.destroy()
  }

  private readonly onStream = (stream: Stream, connection: Connection): void => {
    try {
      this.streams.add(new MeshStream(stream, connection.remotePeer.toString(), this.serving))
    } catch (err) {
      this.init.log.error({ err }, 'cannot serve a mesh stream')
      stream.abort(err as Error)
    }
  }

  private refusal (peer: string): string | undefined {
    if (this.inFlight >= this.limits.maxRequests) return `the instance is serving its maximum of ${this.limits.maxRequests} requests`
    if ((this.perPeer.get(peer) ?? 0) >= this.limits.maxRequestsPerPeer) return `the instance is serving its maximum of ${this.limits.maxRequestsPerPeer} requests for one peer`
    return undefined
  }

  private started (peer: string): void {
    this.inFlight++
    this.perPeer.set(peer, (this.perPeer.get(peer) ?? 0) + 1)
    this.init.onRequest?.('start')
  }

  private finished (peer: string, status: number, durationMs: number): void {
    this.inFlight--
    const left = (this.perPeer.get(peer) ?? 1) - 1
    if (left > 0) this.perPeer.set(peer, left)
    else this.perPeer.delete(peer)
    this.init.onRequest?.('end', status, durationMs)
    if (this.inFlight === 0) {
      for (const wake of this.idleWaiters.splice(0)) wake()
    }
  }
}

/**
 * One stream from the mesh: reads a request head, relays that exchange, then reads the next
 * head (one request at a time: what a peer pipelines waits, and past READ_AHEAD_BYTES the
 * stream is paused). Every event listener catches what it throws: an exception out of one
 * would take the whole proxy down.
 */
class MeshStream {
  private phase: 'waiting' | 'serving' | 'closing' | 'closed' = 'waiting'
  /** Bytes read and not yet used: a request head arriving, or what came after the request being served. */
  private inbox: Buffer | undefined
  /** How much of the inbox was searched for the end of a head. */
  private scanned = 0
  /** Where a growing inbox lives (see append). */
  private store: Buffer | undefined
  private exchange: Exchange | undefined
  private pauses = 0
  /** The peer closed its end, and every byte it sent has been read. */
  private ended = false
  /** One deadline at a time, each for its phase. */
  private timer: NodeJS.Timeout | undefined
  private timerKind: Deadline | undefined
  private closeWaiters: Array<() => void> = []

  constructor (private readonly stream: Stream, readonly peer: string, private readonly ctx: Serving) {
    stream.addEventListener('message', this.onMessage)
    stream.addEventListener('end', this.onEnd)
    stream.addEventListener('close', this.onClose)
    // Not stream.onDrain(): in @libp2p/utils 7.4 its promise is never renewed after the first
    // drain, so every later wait would resolve at once and buffer without bound.
    stream.addEventListener('drain', this.onDrain)
    this.arm('keep-alive', SERVER_KEEP_ALIVE_MS)
  }

  /** Closes cleanly, and resets what is still open a second later. */
  async shutdown (): Promise<void> {
    if (this.phase === 'closed') return
    const closed = new Promise<void>(resolve => this.closeWaiters.push(resolve))
    this.closeGracefully()
    // A reset, not a quiet close: a client whose request crossed our end must learn it will
    // get no answer (and try elsewhere) rather than wait on a stream left half open.
    const timer = setTimeout(() => { this.abort('the instance is stopping') }, LINGER_MS)
    await closed
    clearTimeout(timer)
  }

  private readonly onMessage = (evt: StreamMessageEvent): void => {
    try {
      // A list's pieces one by one: subarray() would copy them into one buffer.
      if (evt.data instanceof Uint8Array) this.received(asBuffer(evt.data))
      else for (const piece of evt.data) this.received(asBuffer(piece))
    } catch (err) {
      this.crashed(err)
    }
  }

  private received (chunk: Buffer): void {
    const exchange = this.exchange
    if (exchange?.readingBody === true) {
      if (this.timerKind === 'body') this.timer?.refresh()
      exchange.fromPeer(chunk)
      return
    }
    if (this.phase === 'closing' || this.phase === 'closed') return
    this.keep(chunk)
    if (this.phase === 'waiting') this.readHead()
  }

  private readonly onEnd = (): void => {
    try {
      // Also dispatched as the stream is reset or aborted: 'close' follows and cleans up.
      if (this.stream.status !== 'open' && this.stream.status !== 'closing') return
      this.ended = true
      if (this.phase === 'waiting') {
        if (this.inbox != null) this.readHead()
        else this.closeGracefully()
      } else if (this.phase === 'serving') {
        this.exchange?.peerEnded()
      }
    } catch (err) {
      this.crashed(err)
    }
  }

  private readonly onClose = (evt: StreamCloseEvent): void => {
    try {
      this.phase = 'closed'
      this.disarm()
      this.inbox = this.store = undefined
      const exchange = this.exchange
      this.exchange = undefined
      if (exchange != null) {
        if (evt.error != null) this.ctx.log.debug({ peer: this.peer, err: evt.error }, 'mesh stream reset mid-request')
        exchange.abandon()
      }
      this.ctx.closed(this)
      for (const wake of this.closeWaiters.splice(0)) wake()
    } catch (err) {
      this.ctx.log.error({ err, peer: this.peer }, 'cleaning up a closed mesh stream failed')
    }
  }

  private readonly onDrain = (): void => {
    try {
      this.exchange?.peerDrained()
    } catch (err) {
      this.crashed(err)
    }
  }

  private readonly onTimer = (): void => {
    try {
      switch (this.timerKind) {
        case 'keep-alive':
          this.closeGracefully()
          return
        case 'headers':
          this.ctx.log.debug({ peer: this.peer }, 'request headers not complete in time: closing the stream')
          this.abort('request headers not complete in time')
          return
        case 'body':
          // Time the app spends not reading is not the peer's, until the app has answered.
          if ((this.pauses & PAUSED_FOR_APP) !== 0 && this.exchange?.answered === false) {
            this.timer?.refresh()
            return
          }
          this.ctx.log.debug({ peer: this.peer }, 'request body stalled: closing the stream')
          this.abort('request body stalled')
          return
        case 'linger':
          this.abort('the peer did not close its end')
      }
    } catch (err) {
      this.crashed(err)
    }
  }

  /** Bytes that are not the current request's body: a head arriving, or what follows. */
  keep (chunk: Buffer): void {
    if (this.phase === 'closing' || this.phase === 'closed') return
    this.inbox = this.inbox == null ? chunk : this.append(this.inbox, chunk)
    if (this.phase === 'serving' && this.inbox.length > READ_AHEAD_BYTES) this.pause(PAUSED_READ_AHEAD)
  }

  /**
   * inbox + chunk. The store grows by doubling, so that a head arriving a byte at a time
   * costs linear copying, not quadratic. Only bytes past the inbox's end are written, and
   * only while the inbox starts the store: nothing else can see them (what was handed on
   * from an inbox was cut from its start, after which a new store is taken).
   */
  private append (inbox: Buffer, chunk: Buffer): Buffer {
    const length = inbox.length + chunk.length
    const store = this.store
    if (store != null && inbox.buffer === store.buffer && inbox.byteOffset === store.byteOffset && length <= store.length) {
      chunk.copy(store, inbox.length)
      return store.subarray(0, length)
    }
    const grown = this.store = Buffer.allocUnsafe(Math.max(2 * length, 4096))
    inbox.copy(grown)
    chunk.copy(grown, inbox.length)
    return grown.subarray(0, length)
  }

  private readHead (): void {
    let inbox = this.inbox
    if (inbox == null) return
    // RFC 9112 §2.2: empty lines before a request line are skipped.
    let start = 0
    while (start + 1 < inbox.length && inbox[start] === CR && inbox[start + 1] === LF) start += 2
    if (start > 0) {
      this.scanned = 0
      if (start === inbox.length) {
        this.inbox = this.store = undefined
        if (this.ended) this.closeGracefully()
        else if (this.timerKind === 'headers') this.arm('keep-alive', SERVER_KEEP_ALIVE_MS)
        return
      }
      inbox = this.inbox = inbox.subarray(start)
    }
    let head: RequestHead
    let end: number
    try {
      end = findHeadEnd(inbox, this.scanned)
      if (end === -1) {
        if (inbox.length > MAX_HEAD_BYTES) throw new HeadError(431, 'headers_too_large', 'request headers too large')
        if (this.ended) throw new HeadError(400, 'bad_request', 'malformed HTTP request: the stream ended within a request head')
        this.scanned = inbox.length
        // From the head's first byte (a head that comes whole needs no timer).
        if (this.timerKind !== 'headers') this.arm('headers', this.ctx.limits.headersTimeoutMs)
        return
      }
      head = parseRequestHead(inbox, end)
    } catch (err) {
      if (!(err instanceof HeadError)) throw err
      this.ctx.log.debug({ peer: this.peer, err: err.message }, 'bad HTTP on a mesh stream')
      this.answerAndClose(errorResponseBytes(err.status, err.reason, err.message, true))
      return
    }
    this.inbox = end < inbox.length ? inbox.subarray(end) : undefined
    // The rest is a view of the store, handed on as it is: the store is not written again.
    this.store = undefined
    this.scanned = 0
    this.disarm()
    this.begin(head)
  }

  private begin (head: RequestHead): void {
    // Protocol upgrades are not carried over the mesh.
    if (head.upgrade) {
      this.answerAndClose(errorResponseBytes(501, 'upgrade_unsupported', 'protocol upgrades are not carried over the mesh', true))
      return
    }
    const refusal = this.ctx.refusal(this.peer)
    if (refusal != null) {
      // Fast, and the stream is not kept: its unread body must not hold anything.
      this.answerAndClose(errorResponseBytes(503, 'overloaded', refusal, true))
      return
    }
    const exchange = new Exchange(this, this.ctx, head)
    if (!exchange.start()) {
      this.answerAndClose(errorResponseBytes(503, 'overloaded', 'every connection to the app is in use', true))
      return
    }
    this.exchange = exchange
    this.phase = 'serving'
    this.ctx.started(this.peer)
    if (exchange.readingBody) {
      // Only a request with a body can stall in it: the rest pay for no timer.
      this.arm('body', this.ctx.limits.bodyIdleTimeoutMs)
      const rest = this.inbox
      this.inbox = this.store = undefined
      if (rest != null) exchange.fromPeer(rest)
    } else if (this.inbox != null && this.inbox.length > READ_AHEAD_BYTES) {
      this.pause(PAUSED_READ_AHEAD)
    }
  }

  /** The request body is whole: its deadline ends. */
  bodyRead (): void {
    if (this.timerKind === 'body') this.disarm()
  }

  /** Sends to the peer: false when its buffer is full (wait for drain), undefined when the stream is gone. */
  send (data: Uint8Array | Uint8ArrayList): boolean | undefined {
    try {
      return this.stream.send(data)
    } catch (err) {
      this.ctx.log.debug({ peer: this.peer, err }, 'mesh stream closed while sending')
      this.abort('sending failed')
      return undefined
    }
  }

  /** The exchange is over: serve the next request, or close (`close`). */
  exchangeOver (close: boolean): void {
    this.exchange = undefined
    if (this.phase !== 'serving') return
    this.pauses &= ~PAUSED_FOR_APP
    if (close) {
      this.closeGracefully()
      return
    }
    this.phase = 'waiting'
    if (this.inbox != null) this.readHead()
    else if (this.ended) this.closeGracefully()
    else this.arm('keep-alive', SERVER_KEEP_ALIVE_MS)
    // What came meanwhile may be read now: last, so that its listener sees the state settled.
    if ((this.inbox?.length ?? 0) <= READ_AHEAD_BYTES) this.resume(PAUSED_READ_AHEAD)
    else this.resume(0)
  }

  pause (why: number): void {
    this.pauses |= why
    if (this.stream.readStatus === 'readable') this.stream.pause()
  }

  resume (why: number): void {
    this.pauses &= ~why
    if (this.pauses === 0 && this.stream.readStatus === 'paused') this.stream.resume()
  }

  private answerAndClose (bytes: Buffer): void {
    if (this.send(bytes) !== undefined) this.closeGracefully()
  }

  /**
   * Half-closes once what was sent is flushed, reading on and dropping what still comes (a
   * paused stream would hold it), and resets the stream if the peer does not close its end.
   */
  closeGracefully (): void {
    if (this.phase === 'closing' || this.phase === 'closed') return
    this.phase = 'closing'
    const exchange = this.exchange
    this.exchange = undefined
    exchange?.abandon()
    this.inbox = this.store = undefined
    // A peer that reads nothing for a body's idle time is gone.
    this.arm('linger', this.ctx.limits.bodyIdleTimeoutMs)
    this.resume(PAUSED_FOR_APP | PAUSED_READ_AHEAD)
    this.stream.close().then(() => {
      if (this.phase === 'closing') this.arm('linger', LINGER_MS)
    }, (err: unknown) => {
      this.ctx.log.debug({ peer: this.peer, err }, 'closing a mesh stream failed')
      this.abort('closing failed')
    })
  }

  abort (why: string): void {
    if (this.stream.status === 'open' || this.stream.status === 'closing') this.stream.abort(new Error(why))
  }

  /** A bug: the stream goes, the proxy stays. */
  crashed (err: unknown): void {
    this.ctx.log.error({ err, peer: this.peer }, 'serving a mesh stream failed')
    try {
      this.abort('internal error')
    } catch (abortErr) {
      this.ctx.log.error({ err: abortErr, peer: this.peer }, 'resetting a mesh stream failed')
    }
  }

  private arm (kind: Deadline, ms: number): void {
    clearTimeout(this.timer)
    this.timerKind = kind
    this.timer = setTimeout(this.onTimer, ms)
    this.timer.unref()
  }

  private disarm (): void {
    clearTimeout(this.timer)
    this.timer = undefined
    this.timerKind = undefined
  }
}

/**
 * One request relayed to the app and its response relayed back. The request body and the
 * response run at once (an app may answer before it has read everything); the exchange ends
 * when both are whole, or once the response is whole if the stream closes after it anyway.
 */
class Exchange implements AppHandler {
  /** Request body bytes from the peer go to the app. */
  readingBody: boolean
  private readonly body: MessageBody
  private lease: AppLease | undefined
  /** The response body, once the final response head is here. */
  private response: MessageBody | undefined
  private responseUntilClose = false
  /** The response is chunked and the client speaks HTTP/1.0: only the data goes on. */
  private dechunk = false
  private readonly appHeads = new ResponseHeadReader()
  /** The final response head went to the peer: errors can no longer be answered. */
  private headSent = false
  private continued = false
  private responseDone = false
  private status = 0
  private closeAfter = false
  private appReusable = true
  private appIdleMs: number | undefined
  private over = false
  private readonly startedAt = performance.now()

  constructor (private readonly mesh: MeshStream, private readonly ctx: Serving, private readonly head: RequestHead) {
    this.body = new MessageBody(head.framing)
    this.readingBody = !this.body.done
  }

  /** Writes the head to the app; false when no connection to it can be had. */
  start (): boolean {
    const { head } = this
    const chunked = head.framing.kind === 'chunked'
    const headers = forwardRawHeaders(head.rawHeaders, { peer: this.mesh.peer, defaultHost: this.ctx.appHost, chunked })
    // The body goes on verbatim, so its framing must too (forwardRawHeaders drops it as
    // hop-by-hop, or when a Connection header names it).
    if (head.framing.kind === 'length') withContentLength(headers, head.framing.length)
    if (chunked) headers.push('Transfer-Encoding', 'chunked')
    // HTTP/1.1 whatever the client spoke (RFC 9110 §6.2: a proxy sends its own version), as
    // Node's client did: the app answers as it would any other request (Node's apps throw on
    // trailers in an HTTP/1.0 answer), and its connection stays open for the next one.
    const bytes = serializeHead(`${head.method} ${head.target} HTTP/1.1`, headers)
    this.lease = this.ctx.pool.request(bytes, this, !this.readingBody)
    return this.lease != null
  }

  /** Request bytes from the peer while its body is read: the body's part goes to the app. */
  fromPeer (chunk: Buffer): void {
    if (this.over) return
    let n: number
    try {
      n = this.body.take(chunk)
    } catch (err) {
      if (!(err instanceof BodyError)) throw err
      this.requestFailed(`malformed HTTP request body: ${err.message}`)
      return
    }
    // Once the app is gone (its answer was whole), the rest of the body is dropped.
    if (n > 0 && this.lease != null && !this.lease.write(n === chunk.length ? chunk : chunk.subarray(0, n))) this.mesh.pause(PAUSED_FOR_APP)
    if (!this.body.done) return
    this.readingBody = false
    this.mesh.bodyRead()
    if (n < chunk.length) this.mesh.keep(chunk.subarray(n))
    this.maybeOver()
  }

  /** The peer ended its side: mid-body, the request is cut short. */
  peerEnded (): void {
    if (this.over || !this.readingBody) return
    this.requestFailed('malformed HTTP request: the stream ended within the request body')
  }

  peerDrained (): void {
    this.lease?.resume()
  }

  /** The stream is gone (reset, or closing): the app connection goes too. */
  abandon (): void {
    if (this.over) return
    this.over = true
    this.lease?.destroy()
    this.lease = undefined
    this.ctx.finished(this.mesh.peer, PEER_GONE, performance.now() - this.startedAt)
  }

  onData (chunk: Buffer): void {
    try {
      if (this.over) return
      if (this.response == null) this.readHeads(chunk)
      else this.relayBody(chunk)
    } catch (err) {
      this.mesh.crashed(err)
    }
  }

  onEnd (): void {
    try {
      if (this.over) return
      this.appGone()
      if (this.response != null && this.responseUntilClose) {
        this.responseDone = true
        this.maybeOver()
      } else if (!this.responseDone) {
        this.appFailed(new Error('the app closed the connection before its response was complete'))
      }
      this.readOn()
    } catch (err) {
      this.mesh.crashed(err)
    }
  }

  onError (err: Error): void {
    try {
      if (this.over) return
      this.appGone()
      // After a whole response, only the rest of the request body is lost: it is dropped.
      if (!this.responseDone) this.appFailed(err)
      this.readOn()
    } catch (thrown) {
      this.mesh.crashed(thrown)
    }
  }

  onDrain (): void {
    try {
      this.mesh.resume(PAUSED_FOR_APP)
    } catch (err) {
      this.mesh.crashed(err)
    }
  }

  /** The app's answer is whole. */
  get answered (): boolean {
    return this.responseDone
  }

  /** The pool let go of the connection (the app closed it, or it failed). */
  private appGone (): void {
    this.lease = undefined
    this.appReusable = false
  }

  /** Without a connection nothing will drain: what the peer still sends is read (and dropped). */
  private readOn (): void {
    if (!this.over) this.mesh.resume(PAUSED_FOR_APP)
  }

  /** Response heads: 1xx ones are relayed as they come, then the final one. */
  private readHeads (chunk: Buffer): void {
    let next: Buffer | undefined = chunk
    while (next != null) {
      let read
      try {
        read = this.appHeads.read(next)
      } catch (err) {
        if (!(err instanceof HeadError)) throw err
        this.appFailed(err)
        return
      }
      if (read == null) return
      const { head, rest } = read
      if (head.status >= 200) {
        this.relayHead(head, rest)
        return
      }
      this.relayInterim(head)
      if (this.over) return
      next = rest
    }
  }

  private relayInterim (head: ResponseHead): void {
    // RFC 9110 §15.2: no 1xx to an HTTP/1.0 client.
    if (this.head.minor === 0) return
    if (head.status === 100) this.continued = true
    this.toPeer(serializeHead(`HTTP/1.1 ${head.status} ${head.reason}`, forwardRawHeaders(head.rawHeaders)))
  }

  private relayHead (head: ResponseHead, rest: Buffer | undefined): void {
    const req = this.head
    const framing = responseFraming(head, req.method)
    const response = new MessageBody(framing)
    // An HTTP/1.0 client cannot read chunked framing: it gets the data, ended by the close.
    this.dechunk = framing.kind === 'chunked' && req.minor === 0
    let part: Uint8Array | Uint8ArrayList | undefined
    if (rest != null) {
      const taken = this.responsePart(response, rest)
      if (taken === null) return
      part = taken
    }
    this.response = response
    this.responseUntilClose = framing.kind === 'close'
    this.status = head.status
    if (!head.keepAlive || head.minor === 0 || framing.kind === 'close') this.appReusable = false
    // Keep-Alive: timeout=N is when the app closes: give the connection up a second before.
    if (head.keepAliveMs != null) this.appIdleMs = head.keepAliveMs - 1000
    // An answer before the body, to a client that waits for 100 Continue before sending it:
    // that body may never come, so the stream is not kept for another request.
    const unsentBody = req.expectContinue && !this.continued && this.readingBody
    this.closeAfter = this.ctx.draining || !req.keepAlive || framing.kind === 'close' || this.dechunk || unsentBody
    const chunked = framing.kind === 'chunked' && !this.dechunk
    const headers = forwardRawHeaders(head.rawHeaders, { chunked })
    if (framing.kind === 'length') withContentLength(headers, framing.length)
    if (head.transferEncoding != null && framing.kind !== 'none' && !this.dechunk) headers.push('Transfer-Encoding', head.transferEncoding)
    if (this.closeAfter) headers.push('Connection', 'close')
    else if (req.minor === 0) headers.push('Connection', 'keep-alive')
    const bytes = serializeHead(`HTTP/1.1 ${head.status} ${head.reason}`, headers)
    this.headSent = true
    // The head and the body's first bytes in one frame.
    this.toPeer(part != null ? new Uint8ArrayList(bytes, part) : bytes)
    if (this.over) return
    if (response.done) {
      this.responseDone = true
      this.maybeOver()
    }
  }

  private relayBody (chunk: Buffer): void {
    const response = this.response as MessageBody
    if (response.done) {
      // Bytes past the response: the connection is out of step with its requests.
      this.appReusable = false
      return
    }
    const part = this.responsePart(response, chunk)
    if (part === null) return
    if (part !== undefined) this.toPeer(part)
    if (this.over) return
    if (response.done) {
      this.responseDone = true
      this.maybeOver()
    }
  }

  /**
   * The response's bytes in `chunk` as the peer gets them (undefined: none); null when they
   * are no valid framing, and the exchange has failed.
   */
  private responsePart (response: MessageBody, chunk: Buffer): Uint8Array | Uint8ArrayList | undefined | null {
    let n: number
    let runs: Buffer[] | undefined
    try {
      if (this.dechunk) {
        const data: Buffer[] = runs = []
        n = response.take(chunk, 0, (from, to) => { data.push(chunk.subarray(from, to)) })
      } else {
        n = response.take(chunk)
      }
    } catch (err) {
      if (!(err instanceof BodyError)) throw err
      this.appFailed(err)
      return null
    }
    if (n < chunk.length) this.appReusable = false
    if (runs != null) return runs.length === 0 ? undefined : runs.length === 1 ? runs[0] : new Uint8ArrayList(...runs)
    return n === 0 ? undefined : n === chunk.length ? chunk : chunk.subarray(0, n)
  }

  private toPeer (data: Uint8Array | Uint8ArrayList): void {
    // A full stream holds the app back until it drains.
    if (this.mesh.send(data) === false) this.lease?.pause()
  }

  /** Over once the response is whole and so is the request (unless the stream closes after). */
  private maybeOver (): void {
    if (this.over || !this.responseDone || (this.readingBody && !this.closeAfter)) return
    this.over = true
    const lease = this.lease
    this.lease = undefined
    if (lease != null) {
      // A request not wholly sent leaves the connection mid-message.
      if (this.readingBody) lease.destroy()
      else lease.release(this.appReusable, this.appIdleMs)
    }
    this.ctx.finished(this.mesh.peer, this.status, performance.now() - this.startedAt)
    this.mesh.exchangeOver(this.closeAfter)
  }

  /** The app failed (unreachable, reset, malformed): a 502 if nothing was sent yet, else a reset. */
  private appFailed (err: Error): void {
    const malformed = err instanceof HeadError || err instanceof BodyError
    const message = malformed ? `the instance's app sent a malformed response: ${err.message}` : `the instance's app did not answer: ${err.message}`
    if (malformed) this.ctx.log.debug({ err, app: this.ctx.appHost }, 'app sent a malformed response')
    else this.ctx.log.warn({ err, app: this.ctx.appHost }, 'app unreachable')
    this.fail(502, malformed ? 'app_invalid_response' : 'app_unreachable', message)
  }

  /** The peer's request is malformed or cut short past its head. */
  private requestFailed (message: string): void {
    this.ctx.log.debug({ peer: this.mesh.peer, message }, 'bad HTTP on a mesh stream')
    this.readingBody = false
    this.mesh.bodyRead()
    if (this.responseDone) {
      // The answer was whole: only the connection to the app, mid-request, is lost.
      this.lease?.destroy()
      this.lease = undefined
      this.closeAfter = true
      this.maybeOver()
      return
    }
    this.fail(400, 'bad_request', message)
  }

  /** Ends the exchange with an error answer (before the response started) or a reset. */
  private fail (status: number, reason: string, message: string): void {
    if (this.over) return
    this.over = true
    this.lease?.destroy()
    this.lease = undefined
    this.ctx.finished(this.mesh.peer, status, performance.now() - this.startedAt)
    if (this.headSent) {
      this.mesh.abort(message)
      return
    }
    const close = this.readingBody || this.ctx.draining || !this.head.keepAlive || status === 400
    if (this.mesh.send(errorResponseBytes(status, reason, message, close)) !== undefined) this.mesh.exchangeOver(close)
  }
}
