import { connect, type Socket } from 'node:net'

/**
 * Keep-alive TCP connections to the local app, for a relay that writes requests as raw bytes
 * and reads responses the same way. The most recently used connection is reused first (LIFO),
 * so a quiet period leaves the others idle long enough to be closed.
 */

/**
 * How long an idle connection is kept: below Node's default keepAliveTimeout (5 s), so the app
 * rarely closes one just as a request is written on it (undici keeps 4 s for the same reason).
 */
export const APP_IDLE_MS = 4000

/** What the app's answer on a leased connection is handed to. No method may throw. */
export interface AppHandler {
  onData: (chunk: Buffer) => void
  /** The app closed its end: a response delimited by the close ends here. */
  onEnd: () => void
  onError: (err: Error) => void
  /** The app read what was written: writing may go on. */
  onDrain: () => void
}

export interface AppPoolInit {
  host: string
  port: number
  /** Connections open at once, busy and idle together. */
  max: number
  idleMs?: number
}

/** One connection, and the request it carries now (none while idle). */
interface Connection {
  socket: Socket
  lease: AppLease | undefined
  idle: boolean
}

export class AppPool {
  private readonly idle: Connection[] = []
  private readonly open = new Set<Connection>()
  private readonly idleMs: number
  private destroyed = false

  constructor (private readonly init: AppPoolInit) {
    this.idleMs = init.idleMs ?? APP_IDLE_MS
  }

  /** Connections open, busy and idle. */
  get size (): number {
    return this.open.size
  }

  get idleCount (): number {
    return this.idle.length
  }

  /**
   * Writes a request head on a connection (an idle one, else a new one) and returns its lease,
   * or undefined when `max` connections are busy. `replayable`: the request has no body, so
   * that on a reused connection that fails before any response byte (the app closed it as the
   * request went out) it is written again once on a new connection, unseen by the handler.
   */
  request (head: Uint8Array, handler: AppHandler, replayable: boolean): AppLease | undefined {
    const idle = this.take()
    const conn = idle ?? this.connect()
    if (conn == null) return undefined
    return new AppLease(this, conn, idle != null, handler, head, replayable)
  }

  /** Closes every connection; leases in use get onError. */
  destroy (): void {
    this.destroyed = true
    for (const conn of this.open) conn.socket.destroy()
    this.idle.length = 0
  }

  private take (): Connection | undefined {
    for (;;) {
      const conn = this.idle.pop()
      if (conn == null) return undefined
      conn.idle = false
      if (conn.socket.destroyed || !conn.socket.writable) {
        this.forget(conn)
        continue
      }
      conn.socket.setTimeout(0)
      return conn
    }
  }

  /** @internal A new connection (for a request, or for its one replay). */
  connect (): Connection | undefined {
    if (this.destroyed || this.open.size >= this.init.max) return undefined
    const socket = connect({ host: this.init.host, port: this.init.port, noDelay: true })
    const conn: Connection = { socket, lease: undefined, idle: false }
    this.open.add(conn)
    socket.on('data', (chunk: Buffer) => {
      if (conn.lease != null) conn.lease.data(chunk)
      // Bytes nobody asked for: the connection is out of step with its requests.
      else this.close(conn)
    })
    socket.on('end', () => {
      if (conn.lease != null) conn.lease.ended()
      else this.forget(conn)
    })
    socket.on('error', (err: Error) => { conn.lease?.failed(err) })
    socket.on('close', () => {
      this.forget(conn)
      conn.lease?.failed(new Error('the connection to the app closed'))
    })
    socket.on('drain', () => { conn.lease?.drained() })
    socket.on('timeout', () => {
      if (conn.lease == null) this.close(conn)
    })
    return conn
  }

  /** @internal Back to the pool after a request, or closed. */
  putBack (conn: Connection, reusable: boolean, idleMs: number | undefined): void {
    const { socket } = conn
    const keepMs = Math.min(this.idleMs, idleMs ?? Infinity)
    if (!reusable || keepMs <= 0 || this.destroyed || socket.destroyed || !socket.writable || !socket.readable) {
      this.close(conn)
      return
    }
    // Reading on while idle: a close from the app is seen at once.
    if (socket.isPaused()) socket.resume()
    socket.setTimeout(keepMs)
    conn.idle = true
    this.idle.push(conn)
  }

  /** @internal */
  close (conn: Connection): void {
    this.forget(conn)
    conn.socket.destroy()
  }

  private forget (conn: Connection): void {
    this.open.delete(conn)
    if (conn.idle) {
      conn.idle = false
      const at = this.idle.indexOf(conn)
      if (at !== -1) this.idle.splice(at, 1)
    }
  }
}

/** One request's hold on a connection to the app, from its head to the end of its response. */
export class AppLease {
  private conn: Connection | undefined
  /** Kept until the first response byte, for the one replay. */
  private head: Uint8Array | undefined

  constructor (private readonly pool: AppPool, conn: Connection, private reused: boolean, private readonly handler: AppHandler, head: Uint8Array, private replayable: boolean) {
    this.head = head
    this.attach(conn)
    // The head and the body's first bytes go out in one write.
    conn.socket.cork()
    conn.socket.write(head)
    process.nextTick(uncork, conn.socket)
  }

  /** Whether the request went out on a connection an earlier request used. */
  get wasReused (): boolean {
    return this.reused
  }

  /** Request body bytes; false when the app is not reading: wait for onDrain. */
  write (chunk: Uint8Array): boolean {
    const socket = this.conn?.socket
    if (socket == null || socket.destroyed) return true
    return socket.write(chunk)
  }

  /** Stops reading the response (the peer is not reading it). */
  pause (): void {
    this.conn?.socket.pause()
  }

  resume (): void {
    this.conn?.socket.resume()
  }

  /**
   * The exchange is over. `reusable`: request and response were whole and the app keeps the
   * connection; `idleMs`: how long the app said it keeps an idle connection.
   */
  release (reusable: boolean, idleMs?: number): void {
    const conn = this.detach()
    if (conn != null) this.pool.putBack(conn, reusable, idleMs)
  }

  /** Closes the connection: what is on it can no longer be told apart from the next request. */
  destroy (): void {
    const conn = this.detach()
    if (conn != null) this.pool.close(conn)
  }

  /** @internal */
  data (chunk: Buffer): void {
    this.head = undefined
    this.handler.onData(chunk)
  }

  /** @internal */
  ended (): void {
    if (this.replay()) return
    this.destroy()
    this.handler.onEnd()
  }

  /** @internal */
  failed (err: Error): void {
    if (this.replay()) return
    this.destroy()
    this.handler.onError(err)
  }

  /** @internal */
  drained (): void {
    this.handler.onDrain()
  }

  /** Sends the request again on a new connection, if it may be: true when it was. */
  private replay (): boolean {
    const head = this.head
    if (head == null || !this.replayable || !this.reused) return false
    this.replayable = false
    this.destroy()
    const conn = this.pool.connect()
    if (conn == null) return false
    this.reused = false
    this.attach(conn)
    conn.socket.write(head)
    return true
  }

  private attach (conn: Connection): void {
    this.conn = conn
    conn.lease = this
  }

  private detach (): Connection | undefined {
    const conn = this.conn
    if (conn == null) return undefined
    this.conn = undefined
    conn.lease = undefined
    return conn
  }
}

function uncork (socket: Socket): void {
  socket.uncork()
}
