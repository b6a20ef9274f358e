/**
 * Where a relayed request failed. `connect`: no connection or stream was ever had, so the
 * request provably never left. `request`: it may have reached the upstream, but no response
 * byte came back. `response`: the response had started.
 */
export type RelayPhase = 'connect' | 'request' | 'response'

export class RelayError extends Error {
  override name = 'RelayError'
  constructor (message: string, readonly phase: RelayPhase, readonly timedOut = false, readonly reusedConnection = false, readonly clientGone = false) {
    super(message)
  }
}
