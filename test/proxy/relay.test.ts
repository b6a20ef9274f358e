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

  it('is told apart from an upstream failure by relay itself', async () => {
    const { createServer, request, Agent } = await import('node:http')
    const { relay } = await import('../../proxy/relay.js')
    // An upstream that answers slowly, and a front server relaying to it.
    let arrived = (): void => {}
    const reached = new Promise<void>(resolve => { arrived = resolve })
    const upstream = createServer((_req, res) => { arrived(); setTimeout(() => { res.end('late') }, 2000).unref() })
    await new Promise<void>(resolve => upstream.listen(0, '127.0.0.1', resolve))
    const upstreamPort = (upstream.address() as { port: number }).port
    const agent = new Agent({ keepAlive: true })
    const failures: RelayError[] = []
    const front = createServer((inbound, res) => {
      relay(inbound, res, { agent, host: '127.0.0.1', port: upstreamPort, path: '/' }).catch((e: RelayError) => failures.push(e))
    })
    await new Promise<void>(resolve => front.listen(0, '127.0.0.1', resolve))
    try {
      const client = request({ host: '127.0.0.1', port: (front.address() as { port: number }).port, path: '/' })
      client.on('error', () => {})
      client.end()
      // Gone while the upstream is still working on it.
      await reached
      client.destroy()
      const deadline = Date.now() + 5000
      while (failures.length === 0 && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 10))
      expect(failures).toHaveLength(1)
      expect(failures[0].clientGone).toBe(true)
      expect(failures[0].timedOut).toBe(false)
    } finally {
      agent.destroy()
      front.closeAllConnections()
      upstream.closeAllConnections()
      await new Promise(resolve => front.close(resolve))
      await new Promise(resolve => upstream.close(resolve))
    }
  })
})
