import type { IncomingMessage } from 'node:http'
import { describe, expect, it } from 'vitest'
import { mayRetry, RelayError, type RelayPhase } from '../../proxy/relay.js'

function req (method: string, headers: Record<string, string> = {}): IncomingMessage {
  return { method, headers } as unknown as IncomingMessage
}

function err (phase: RelayPhase, opts: { timedOut?: boolean, reused?: boolean } = {}): RelayError {
  return new RelayError('x', phase, opts.timedOut ?? false, opts.reused ?? false)
}

describe('retry rules', () => {
  it('retries any bodiless request that never left', () => {
    for (const method of ['GET', 'POST', 'PATCH', 'DELETE']) expect(mayRetry(req(method), err('connect'))).toBe(true)
  })

  it('retries idempotent requests that failed before any response byte', () => {
    for (const method of ['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE']) expect(mayRetry(req(method), err('request'))).toBe(true)
    for (const method of ['POST', 'PATCH']) expect(mayRetry(req(method), err('request'))).toBe(false)
  })

  it('retries a POST whose pooled stream was reset before it was read', () => {
    expect(mayRetry(req('POST'), err('request', { reused: true }))).toBe(true)
  })

  it('never retries once the response started, after a timeout, or with a streamed body', () => {
    expect(mayRetry(req('GET'), err('response'))).toBe(false)
    expect(mayRetry(req('GET'), err('request', { timedOut: true }))).toBe(false)
    expect(mayRetry(req('PUT', { 'content-length': '10' }), err('connect'))).toBe(false)
    expect(mayRetry(req('PUT', { 'transfer-encoding': 'chunked' }), err('connect'))).toBe(false)
    expect(mayRetry(req('PUT', { 'content-length': '0' }), err('request'))).toBe(true)
  })
})

describe('a client that goes away', () => {
  it('is never retried: no one is waiting for the answer', () => {
    expect(mayRetry(req('GET'), new RelayError('client closed the connection', 'connect', false, false, true))).toBe(false)
    expect(mayRetry(req('GET'), new RelayError('client closed the connection', 'request', false, false, true))).toBe(false)
  })
})
