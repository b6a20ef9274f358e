import type { IncomingMessage, ServerResponse } from 'node:http'
import { Uint8ArrayList } from 'uint8arraylist'
import { forwardRawHeaders, trailerPairs, withContentLength, type ForwardHeaders } from './headers.js'
import { BodyError, MessageBody } from './http1-body.js'
import { HeadError, ResponseHeadReader, responseFraming, serializeHead, type ResponseHead } from './http1-head.js'
import type { PeerAgent, PeerStream, StreamUser } from './mesh-agents.js'
import { RelayError, type RelayPhase } from './relay-error.js'

export interface RelayTarget {
  /** The instance's agent: pooled libp2p streams to its peer. */
  agent: PeerAgent
  /** The request target the instance gets (the app prefix removed). */
  path: string
  forward?: ForwardHeaders
  /** Time allowed until the response headers arrive, from when the request is whole. */
  responseTimeoutMs?: number
  /** Called once the request has been handed to the stream (for latency estimates). */
  onRequestSent?: () => void
  /** Called when the response headers arrive (for latency estimates); `reused`: over a pooled stream. */
  onResponseStart?: (reused: boolean) => void
}

export interface RelayResult {
  status: number
}

const CRLF = Buffer.from('\r\n')

/**
 * Sends `req` to the instance behind `target.agent` on a `/http/1.1` stream (a pooled one if
 * there is one) and relays the answer to `res`: the request head is written directly, its
 * body (framed again, as Node's server decoded it) and the answer's body as they come, with
 * backpressure both ways, trailers and 100-continue carried end to end. Resolves once the
 * response is complete; rejects with a RelayError whose phase says how far it got (nothing
 * was written to `res` unless it is `response`: the caller may answer or retry, mayRetry).
 */
export async function relay (req: IncomingMessage, res: ServerResponse, target: RelayTarget): Promise<RelayResult> {
  return await new Promise((resolve, reject) => {
    new MeshExchange(req, res, target, resolve, reject).start()
  })
}

/**
 * One request and its answer over one stream. Every event handler catches what it throws: an
 * exception out of a listener would take the proxy down.
 */
class MeshExchange implements StreamUser {
  private phase: RelayPhase = 'connect'
  /** The promise is resolved or rejected. */
  private settled = false
  /** The stream, while this exchange holds it. */
  private stream: PeerStream | undefined
  private reused = false
  private timer: NodeJS.Timeout | undefined
  // The request.
  private readonly chunked: boolean
  private readonly hasBody: boolean
  /** Listening to the request body. */
  private readingRequest = false
  /** The request body is paused until the stream drains. */
  private requestPaused = false
  /** The stream's send buffer is full. */
  private needDrain = false
  /** The request is whole but waits in the send buffer: it counts as sent once that drains. */
  private sentOnDrain = false
  private requestSent = false
  // The answer.
  private readonly heads = new ResponseHeadReader()
  /** Any byte of an answer came: a stream that fails after it was no stale one. */
  private answered = false
  private status = 0
  private body: MessageBody | undefined
  /** The answer's body runs until the stream ends. */
  private untilClose = false
  /** The body is chunked: only its data goes to `res`, which frames it again. */
  private dataOnly = false
  /** Where the runs of chunk data lie in the chunk being read: [from, to, …]. */
  private readonly runs: number[] = []
  private responseDone = false
  private reusable = false
  private streamPaused = false

  constructor (
    private readonly req: IncomingMessage,
    private readonly res: ServerResponse,
    private readonly options: RelayTarget,
    private readonly resolve: (result: RelayResult) => void,
    private readonly reject: (err: RelayError) => void
  ) {
    this.chunked = req.headers['content-length'] == null && /chunked/i.test(req.headers['transfer-encoding'] ?? '')
    const length = req.headers['content-length']
    this.hasBody = this.chunked || (length != null && length !== '0')
  }

  start (): void {
    // The client went away: stop the instance too, so nothing is left streaming. Not the
    // instance's fault: callers must not hold it against it.
    this.res.on('close', this.onResponseClose)
    const stream = this.options.agent.take(this)
    if (stream != null) {
      try {
        this.send(stream)
      } catch (err) {
        this.crashed(err)
      }
      return
    }
    this.options.agent.open(this).then(opened => {
      try {
        // The client left while it opened: the stream, unused, serves the next request.
        if (this.settled) opened.release(true)
        else this.send(opened)
      } catch (err) {
        this.crashed(err)
      }
    }, (err: unknown) => {
      this.fail(err as Error)
    })
  }

  /** Writes the head (with the body bytes already read), then the body as it comes. */
  private send (stream: PeerStream): void {
    this.stream = stream
    this.reused = stream.reused
    this.phase = 'request'
    const { req } = this
    const head = this.requestHead()
    if (!this.hasBody || req.readableEnded) {
      const sent = this.write(head)
      if (sent === true) this.requestWhole()
      else if (sent === false) this.sentOnDrain = true
      return
    }
    // The head and the body's first bytes in one frame: what the client sent with its head
    // is already here, read while the instance was picked.
    const first = req.readableLength > 0 ? req.read() as Buffer | null : null
    this.readingRequest = true
    req.on('data', this.onRequestData)
    req.on('end', this.onRequestEnd)
    req.on('error', this.onRequestGone)
    req.on('close', this.onRequestGone)
    if (this.write(first == null || first.length === 0 ? head : new Uint8ArrayList(head, ...this.frame(first))) === false) this.pauseRequest()
  }

  /**
   * The head as the instance gets it: hop-by-hop fields dropped, forwarded ones added, and
   * the framing said again (a chunked body goes on chunked whatever the method: unframed, the
   * app would read it as the start of another request).
   */
  private requestHead (): Buffer {
    const { req } = this
    const headers = forwardRawHeaders(req.rawHeaders, { ...this.options.forward, chunked: this.chunked })
    if (this.chunked) headers.push('Transfer-Encoding', 'chunked')
    else if (req.headers['content-length'] != null) withContentLength(headers, req.headers['content-length'])
    return serializeHead(`${req.method ?? 'GET'} ${this.options.path} HTTP/1.1`, headers)
  }

  /** Body bytes as sent on: chunked again when the client's were. */
  private frame (data: Buffer): Buffer[] {
    return this.chunked ? [Buffer.from(`${data.length.toString(16)}\r\n`, 'latin1'), data, CRLF] : [data]
  }

  /** Sends on the stream: false when its buffer is full, undefined when the stream is gone. */
  private write (data: Uint8Array | Uint8ArrayList): boolean | undefined {
    const stream = this.stream
    if (stream == null) return undefined
    try {
      if (stream.send(data)) return true
      this.needDrain = true
      return false
    } catch (err) {
      // Written to a stream that was reset or closed under it.
      this.streamLost(err as Error)
      return undefined
    }
  }

  private readonly onRequestData = (chunk: Buffer): void => {
    try {
      if (chunk.length === 0 || this.stream == null) return
      if (this.write(this.chunked ? new Uint8ArrayList(...this.frame(chunk)) : chunk) === false) this.pauseRequest()
    } catch (err) {
      this.crashed(err)
    }
  }

  private readonly onRequestEnd = (): void => {
    try {
      this.stopReadingRequest()
      if (this.stream == null) return
      if (this.chunked) {
        let last = '0\r\n'
        const trailers = this.req.rawTrailers
        for (let i = 0; i < trailers.length; i += 2) last += `${trailers[i]}: ${trailers[i + 1]}\r\n`
        if (this.write(Buffer.from(`${last}\r\n`, 'latin1')) === undefined) return
      }
      if (this.needDrain) this.sentOnDrain = true
      else this.requestWhole()
    } catch (err) {
      this.crashed(err)
    }
  }

  /** The client's connection went before its request was whole. */
  private readonly onRequestGone = (): void => {
    try {
      if (!this.readingRequest) return
      this.stopReadingRequest()
      if (this.settled) this.giveUp(new Error('client closed the connection'))
      else this.fail(new Error('client closed the connection'), false, true)
    } catch (err) {
      this.crashed(err)
    }
  }

  private pauseRequest (): void {
    if (!this.readingRequest || this.requestPaused) return
    this.requestPaused = true
    this.req.pause()
  }

  /** Stops reading the request; what is left of its body is read and dropped. */
  private stopReadingRequest (): void {
    if (!this.readingRequest) return
    this.readingRequest = false
    const { req } = this
    req.removeListener('data', this.onRequestData)
    req.removeListener('end', this.onRequestEnd)
    req.removeListener('error', this.onRequestGone)
    req.removeListener('close', this.onRequestGone)
    if (!req.readableEnded) req.resume()
    this.requestPaused = false
  }

  /** The request is with the stream. */
  private requestWhole (): void {
    this.requestSent = true
    this.options.onRequestSent?.()
    // One stream per request: the end of our side says the request is over.
    if (!this.options.agent.reuseStreams) this.stream?.closeWrite()
    // The clock starts once the request is sent: a long upload is not a slow answer.
    const timeoutMs = this.options.responseTimeoutMs
    if (timeoutMs != null && !this.settled && this.phase !== 'response') {
      this.timer = setTimeout(this.onTimeout, timeoutMs)
    }
    this.maybeRelease()
  }

  onDrain (): void {
    try {
      this.needDrain = false
      if (this.sentOnDrain) {
        this.sentOnDrain = false
        this.requestWhole()
      } else if (this.requestPaused) {
        this.requestPaused = false
        this.req.resume()
      }
    } catch (err) {
      this.crashed(err)
    }
  }

  onData (chunk: Buffer): void {
    try {
      this.answered = true
      if (this.responseDone) {
        // Bytes past the answer: the stream is out of step with its requests.
        this.reusable = false
        return
      }
      if (this.body == null) this.readHeads(chunk)
      else this.relayBody(chunk)
    } catch (err) {
      this.crashed(err)
    }
  }

  onEnd (): void {
    try {
      if (this.responseDone) {
        // The instance closed its end after a whole answer: the rest of the request would go nowhere.
        this.stopReadingRequest()
        const stream = this.stream
        this.stream = undefined
        stream?.release(false)
        return
      }
      if (this.body != null && this.untilClose) {
        this.reusable = false
        this.responseWhole()
        return
      }
      this.streamLost(new Error('the instance closed the stream before its response was complete'))
    } catch (err) {
      this.crashed(err)
    }
  }

  onClose (error: Error | undefined, here: boolean): void {
    try {
      this.stream = undefined
      if (this.responseDone) {
        this.stopReadingRequest()
        return
      }
      this.streamLost(error ?? new Error('the stream closed before the response was complete'), here)
    } catch (err) {
      this.crashed(err)
    }
  }

  /** Response heads: a 100 goes to a client that waits for it, other 1xx are dropped, then the final one. */
  private readHeads (chunk: Buffer): void {
    let next: Buffer | undefined = chunk
    while (next != null) {
      let read
      try {
        read = this.heads.read(next)
      } catch (err) {
        if (!(err instanceof HeadError)) throw err
        this.fail(new Error(`the instance sent a malformed response: ${err.message}`))
        return
      }
      if (read == null) return
      const { head, rest } = read
      if (head.status >= 200) {
        this.startResponse(head, rest)
        return
      }
      if (head.status === 100 && this.req.headers.expect != null) this.res.writeContinue()
      next = rest
    }
  }

  private startResponse (head: ResponseHead, rest: Buffer | undefined): void {
    this.phase = 'response'
    clearTimeout(this.timer)
    this.options.onResponseStart?.(this.reused)
    const { req, res } = this
    const framing = responseFraming(head, req.method ?? 'GET')
    this.status = head.status
    this.untilClose = framing.kind === 'close'
    this.dataOnly = framing.kind === 'chunked'
    this.reusable = head.keepAlive && framing.kind !== 'close'
    try {
      res.writeHead(head.status, head.reason, forwardRawHeaders(head.rawHeaders, { chunked: answersChunked(req, head) }))
    } catch (err) {
      // What the instance sent cannot be sent on (Node checks headers as it writes them).
      this.fail(err as Error)
      return
    }
    res.on('drain', this.onResponseDrain)
    res.once('finish', this.onResponseFinish)
    const body = this.body = new MessageBody(framing, true)
    if (rest != null) this.relayBody(rest)
    else if (body.done) this.responseWhole()
  }

  private relayBody (chunk: Buffer): void {
    const body = this.body as MessageBody
    const { res, runs } = this
    let n: number
    try {
      n = this.dataOnly ? body.take(chunk, 0, this.collectRun) : body.take(chunk)
    } catch (err) {
      if (!(err instanceof BodyError)) throw err
      runs.length = 0
      this.fail(new Error(`the instance sent a malformed response body: ${err.message}`))
      return
    }
    if (n < chunk.length) this.reusable = false
    // The body's last bytes go with res.end(): one write to the client, not two.
    let last: Buffer | undefined
    let full = false
    if (this.dataOnly) {
      const pieces = body.done ? runs.length - 2 : runs.length
      for (let i = 0; i < pieces; i += 2) {
        if (!res.write(chunk.subarray(runs[i], runs[i + 1]))) full = true
      }
      if (pieces < runs.length) last = chunk.subarray(runs[pieces], runs[pieces + 1])
      runs.length = 0
    } else if (n > 0) {
      const data = n === chunk.length ? chunk : chunk.subarray(0, n)
      if (body.done) last = data
      else full = !res.write(data)
    }
    if (body.done) this.responseWhole(last)
    else if (full && !this.streamPaused) {
      // A client that does not read holds the instance back, through the stream's window.
      this.streamPaused = true
      this.stream?.pause()
    }
  }

  private readonly collectRun = (from: number, to: number): void => {
    this.runs.push(from, to)
  }

  private readonly onResponseDrain = (): void => {
    try {
      if (!this.streamPaused) return
      this.streamPaused = false
      this.stream?.resume()
    } catch (err) {
      this.crashed(err)
    }
  }

  private responseWhole (last?: Buffer): void {
    this.responseDone = true
    const trailers = (this.body as MessageBody).trailers
    try {
      if (trailers.length > 0) this.res.addTrailers(trailerPairs(trailers))
      if (last != null && last.length > 0) this.res.end(last)
      else this.res.end()
    } catch (err) {
      this.fail(err as Error)
      return
    }
    this.maybeRelease()
  }

  private readonly onResponseFinish = (): void => {
    try {
      if (this.settled) return
      this.settled = true
      this.res.removeListener('close', this.onResponseClose)
      this.resolve({ status: this.status })
    } catch (err) {
      this.crashed(err)
    }
  }

  private readonly onResponseClose = (): void => {
    try {
      if (!this.res.writableFinished) this.fail(new Error('client closed the connection'), false, true)
    } catch (err) {
      this.crashed(err)
    }
  }

  private readonly onTimeout = (): void => {
    try {
      if (this.phase !== 'response') this.fail(new Error(`no response within ${this.options.responseTimeoutMs ?? 0} ms`), true)
    } catch (err) {
      this.crashed(err)
    }
  }

  /** Both the request and the answer are whole: the stream goes back to the pool, or is closed. */
  private maybeRelease (): void {
    if (!this.responseDone || !this.requestSent) return
    const stream = this.stream
    this.stream = undefined
    stream?.release(this.reusable)
  }

  /**
   * The stream failed under the exchange. A pooled stream that the instance closed or reset
   * before any byte of an answer is a stale one (it closed it as the request went out): no
   * fault of the instance, and the request is safe to send again.
   */
  private streamLost (err: Error, here = false): void {
    if (this.responseDone) {
      this.giveUp(err)
      return
    }
    this.fail(err, false, false, this.reused && !this.answered && !here)
  }

  /** Ends the exchange with a RelayError: the stream is reset, and `res` too once it started. */
  private fail (err: Error, timedOut = false, clientGone = false, stale = false): void {
    if (this.settled) {
      this.giveUp(err)
      return
    }
    this.settled = true
    this.giveUp(err)
    this.res.removeListener('close', this.onResponseClose)
    if (this.phase === 'response') this.res.destroy(err)
    this.reject(new RelayError(err.message, this.phase, timedOut, stale, clientGone))
  }

  /** Lets go of everything: the stream (reset), the request (drained). */
  private giveUp (err: Error): void {
    clearTimeout(this.timer)
    this.stopReadingRequest()
    const stream = this.stream
    this.stream = undefined
    stream?.reset(err)
  }

  /** A bug: this request fails, the proxy stays. */
  private crashed (err: unknown): void {
    try {
      this.fail(err instanceof Error ? err : new Error(String(err)))
    } catch {
      // Nothing is left to tell: the stream and the response are being torn down.
    }
  }
}

/** Whether Node answers this on chunked: a body of unknown length, to an HTTP/1.1 client. */
function answersChunked (req: IncomingMessage, head: ResponseHead): boolean {
  const { status } = head
  const bodiless = req.method === 'HEAD' || status === 204 || status === 304 || (status >= 100 && status < 200)
  return !bodiless && head.contentLength == null && (req.httpVersionMajor > 1 || req.httpVersionMinor >= 1)
}
