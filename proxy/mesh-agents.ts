import { setMaxListeners } from 'node:events'
import { Agent, type ClientRequestArgs } from 'node:http'
import type { Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import type { PeerId } from '@libp2p/interface'
import { deadline } from '../shared/abort.js'
import type { MeshNode } from '../shared/node.js'
import { HTTP_PROTOCOL, MAX_HTTP_STREAMS, POOLED_STREAM_IDLE_MS } from '../shared/protocols/http.js'
import { StreamSocket } from './stream-socket.js'

/**
 * Opening a stream takes ~1.3 ms on an open connection, and a dial of a new one a few round
 * trips: one that takes this long is to a peer going away, and the request is better retried
 * elsewhere (it provably never left) than held.
 */
const STREAM_OPEN_TIMEOUT_MS = 5_000

/**
 * An HTTP agent whose connections are libp2p streams to one peer. Keep-alive reuses a stream
 * for many requests: opening a stream costs ~1.3 ms here, most of a request's overhead.
 */
class PeerAgent extends Agent {
  /** Aborts the stream opens in progress when the peer is given up on. */
  private readonly dials = new AbortController()

  constructor (private readonly node: MeshNode, private readonly peer: PeerId, reuseStreams: boolean) {
    super({ keepAlive: reuseStreams, maxSockets: Infinity, maxFreeSockets: 256, scheduling: 'lifo', timeout: POOLED_STREAM_IDLE_MS })
    setMaxListeners(0, this.dials.signal)
  }

  override createConnection (options: ClientRequestArgs, callback?: (err: Error | null, socket: Duplex) => void): Duplex | null | undefined {
    const dial = deadline(STREAM_OPEN_TIMEOUT_MS, this.dials.signal)
    const name = this.getName(options)
    this.node.dialProtocol(this.peer, HTTP_PROTOCOL, { maxOutboundStreams: MAX_HTTP_STREAMS, signal: dial.signal })
      .then(stream => {
        const socket = new StreamSocket(stream, this.peer.toString())
        // Half-open sockets (needed for bodies) do not close when the far end closes its side,
        // so Node's pool would keep one the instance has ended (a draining instance ends them
        // all), and a request sent on it would wait for an answer that cannot come.
        socket.on('end', () => { if (this.freeSockets[name]?.includes(socket as unknown as Socket) === true) socket.destroy() })
        callback?.(null, socket)
      })
      .catch(err => { callback?.(err as Error, undefined as unknown as Duplex) })
      .finally(dial.clear)
    return undefined
  }

  /**
   * A socket whose far end has already closed its side goes, not back to the pool. (Node's
   * typings say void; the Agent pools the socket only when this returns true.)
   */
  override keepSocketAlive (socket: Duplex): void {
    if (socket.readableEnded) return
    return super.keepSocketAlive(socket)
  }

  abortDials (reason: Error): void {
    this.dials.abort(reason)
  }
}

/** Agents kept at most; beyond it, the least recently used idle ones are closed. */
const MAX_AGENTS = 1024

/** One agent per peer, made on first use and dropped with the peer. */
export class MeshAgents {
  private readonly agents = new Map<string, PeerAgent>()

  /**
   * @param reuseStreams keep streams open for further requests (the default between hyphae
   * peers); false: one stream per request, as the libp2p HTTP spec suggests.
   */
  constructor (private readonly node: MeshNode, private readonly reuseStreams = true) {}

  for (peer: PeerId): Agent {
    const key = peer.toString()
    let agent = this.agents.get(key)
    if (agent == null) {
      agent = new PeerAgent(this.node, peer, this.reuseStreams)
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
    for (const sockets of Object.values(agent.freeSockets)) {
      for (const socket of sockets ?? []) socket.destroy()
    }
    if (options.inFlight === true) {
      agent.abortDials(new Error('the instance stopped answering pings'))
      for (const sockets of Object.values(agent.sockets)) {
        for (const socket of sockets ?? []) socket.destroy(new Error('the instance stopped answering pings'))
      }
    }
  }

  /** Instances come and go: agents of peers not used for long must not pile up. */
  private evictIdle (): void {
    for (const [key, agent] of this.agents) {
      if (this.agents.size <= MAX_AGENTS) return
      if (Object.keys(agent.sockets).length > 0 || Object.keys(agent.requests).length > 0) continue
      this.agents.delete(key)
      agent.destroy()
    }
  }

  stop (): void {
    for (const agent of this.agents.values()) agent.destroy()
    this.agents.clear()
  }
}
