import { Duplex } from 'node:stream'
import type { Stream, StreamCloseEvent, StreamMessageEvent } from '@libp2p/interface'

/**
 * A libp2p stream as a Node socket, so that Node's own HTTP/1.1 client and server (llhttp,
 * keep-alive, chunked bodies, trailers, 100-continue) run over the mesh unchanged.
 * Backpressure is carried both ways: a full Node buffer pauses the libp2p stream (which stops
 * yamux window updates, so the remote stops sending), and a full libp2p send buffer holds
 * the write callback until the stream drains.
 */
export class StreamSocket extends Duplex {
  readonly remotePeer: string
  /** Node's HTTP layer reads these; a stream has no IP address of its own. */
  readonly remoteAddress: string | undefined = undefined
  readonly remotePort: number | undefined = undefined
  private idleTimeoutMs = 0
  private idleTimer: NodeJS.Timeout | undefined
  private idleTimerMs = 0

  constructor (private readonly stream: Stream, remotePeer: string) {
    super({ allowHalfOpen: true, readableHighWaterMark: 256 * 1024, writableHighWaterMark: 256 * 1024 })
    this.remotePeer = remotePeer
    stream.addEventListener('message', this.onMessage)
    stream.addEventListener('remoteCloseWrite', this.onRemoteCloseWrite)
    stream.addEventListener('close', this.onClose)
  }

  private readonly onMessage = (evt: StreamMessageEvent): void => {
    const data = evt.data
    const bytes = data instanceof Uint8Array ? data : data.subarray()
    this.touch()
    if (!this.push(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength))) this.stream.pause()
  }

  private readonly onRemoteCloseWrite = (): void => {
    this.push(null)
  }

  private readonly onClose = (evt: StreamCloseEvent): void => {
    if (evt.error != null) {
      this.destroy(evt.error)
      return
    }
    this.push(null)
  }

  override _read (): void {
    if (this.stream.readStatus === 'paused') this.stream.resume()
  }

  override _write (chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.send(chunk, callback)
  }

  override _writev (chunks: Array<{ chunk: Buffer }>, callback: (error?: Error | null) => void): void {
    // Node corks the head and first body chunk of a message together: send them as one frame.
    this.send(chunks.length === 1 ? chunks[0].chunk : Buffer.concat(chunks.map(c => c.chunk)), callback)
  }

  private send (chunk: Buffer, callback: (error?: Error | null) => void): void {
    this.touch()
    try {
      if (this.stream.send(chunk)) {
        callback()
        return
      }
    } catch (err) {
      callback(err as Error)
      return
    }
    // Not stream.onDrain(): in @libp2p/utils 7.4 its promise is never renewed after the first
    // drain, so every later wait resolves at once and the write buffer grows without bound.
    const onDrain = (): void => {
      this.stream.removeEventListener('close', onClose)
      callback()
    }
    const onClose = (): void => {
      this.stream.removeEventListener('drain', onDrain)
      callback(new Error('stream closed while writing'))
    }
    this.stream.addEventListener('drain', onDrain, { once: true })
    this.stream.addEventListener('close', onClose, { once: true })
  }

  override _final (callback: (error?: Error | null) => void): void {
    this.stream.close().then(() => { callback() }, callback)
  }

  override _destroy (error: Error | null, callback: (error?: Error | null) => void): void {
    clearTimeout(this.idleTimer)
    this.stream.removeEventListener('message', this.onMessage)
    this.stream.removeEventListener('remoteCloseWrite', this.onRemoteCloseWrite)
    this.stream.removeEventListener('close', this.onClose)
    // A socket that ended cleanly both ways leaves the stream to finish closing (aborting
    // would drop bytes still queued); anything else resets it.
    const clean = error == null && this.writableFinished && this.readableEnded
    if (!clean && (this.stream.status === 'open' || this.stream.status === 'closing')) {
      this.stream.abort(error ?? new Error('socket destroyed'))
    }
    callback(error)
  }

  /** net.Socket's idle timeout, which Node's keep-alive agent and server rely on. */
  setTimeout (ms: number, callback?: () => void): this {
    this.idleTimeoutMs = ms
    // As net.Socket: a zero timeout with a callback removes that listener (Node's HTTP client
    // relies on it when a keep-alive socket goes back to the pool).
    if (callback != null) {
      if (ms === 0) this.removeListener('timeout', callback)
      else this.once('timeout', callback)
    }
    if (ms === 0) {
      clearTimeout(this.idleTimer)
      this.idleTimer = undefined
    } else {
      this.touch()
    }
    return this
  }

  private touch (): void {
    if (this.idleTimeoutMs === 0) return
    if (this.idleTimer != null && this.idleTimerMs === this.idleTimeoutMs) {
      this.idleTimer.refresh()
      return
    }
    clearTimeout(this.idleTimer)
    this.idleTimerMs = this.idleTimeoutMs
    this.idleTimer = setTimeout(() => this.emit('timeout'), this.idleTimeoutMs)
    this.idleTimer.unref()
  }

  setNoDelay (): this { return this }
  setKeepAlive (): this { return this }
  ref (): this { return this }
  unref (): this { return this }
}
