import type { ServiceRecord } from '../shared/registry/record.js'
import type { PeerState, RequestOutcome } from './peer-cache.js'

/**
 * How a request failed, as far as the instance is concerned. `unreachable`: no stream could
 * be had (it is gone, not slow). `failed`: it took the request and did not answer it (a
 * reset, a timeout). `stale_stream`: a pooled stream the instance had just closed, no fault
 * of its own.
 */
export type FailureKind = 'unreachable' | 'failed' | 'stale_stream'

/** What a handle tells the balancer when it learns how the request went. */
export interface LoadReporter {
  report: (record: ServiceRecord, peerKey: string, outcome: RequestOutcome) => void
  unreachable: (record: ServiceRecord, peer: PeerState) => void
}

/**
 * One request's hold on an instance, as tower's peak-EWMA `Handle`: the instance's in-flight
 * count is the number of live handles, its latency is recorded from the handle, and how the
 * request ended reaches outlier detection through one path. Release it in a `finally`.
 */
export class LoadHandle {
  private sentAt = performance.now()
  private released = false

  constructor (readonly peer: PeerState, private readonly record: ServiceRecord, private readonly reporter: LoadReporter) {
    peer.inflight++
  }

  /**
   * The request has left (was handed to the stream). Time spent queued in this proxy before
   * is the same whichever instance is picked, so the latency clock starts here.
   */
  sent (): void {
    this.sentAt = performance.now()
  }

  /**
   * The response headers arrived. Only answers over a pooled stream are timed: the first on a
   * new stream also pays for opening it (protocol negotiation), a one-off cost, not the
   * instance's latency.
   */
  responded (reusedStream: boolean): void {
    if (reusedStream) this.peer.observeLatency(performance.now() - this.sentAt, Date.now())
  }

  /** The whole response was relayed: a 5xx counts against the instance, anything else for it. */
  completed (status: number): void {
    this.reporter.report(this.record, this.peer.key, status >= 500 ? 'failed' : 'ok')
  }

  failed (kind: FailureKind): void {
    if (kind === 'unreachable') this.reporter.unreachable(this.record, this.peer)
    else if (kind === 'failed') this.reporter.report(this.record, this.peer.key, 'failed')
  }

  release (): void {
    if (this.released) return
    this.released = true
    this.peer.inflight--
  }
}
