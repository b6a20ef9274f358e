#!/usr/bin/env node
// One hop of the benchmarks' plain Node.js chain, the baseline of what node:http alone costs
// per hop: every request goes on to 127.0.0.1:$UPSTREAM_PORT over a keep-alive connection,
// bodies streamed both ways, with no encryption and no multiplexing. An upstream that fails
// before answering gets a 502. Listens on 127.0.0.1:$PORT (0: any) and prints `listening PORT`.
import { Agent, createServer, request, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http'

const UPSTREAM_PORT = Number(process.env.UPSTREAM_PORT)
if (!Number.isInteger(UPSTREAM_PORT) || UPSTREAM_PORT <= 0) {
  process.stderr.write('node-hop: UPSTREAM_PORT must be a port number\n')
  process.exit(2)
}

// Connections to the next hop are kept and reused, like nginx's upstream keepalive; without
// it every request would pay a TCP handshake and the chain would measure that instead.
const agent = new Agent({ keepAlive: true })

/**
 * The headers without `connection` and `keep-alive`: they describe one connection, not the
 * request, and passed on they would close the pooled upstream connection (or keep a client's
 * that asked to close) and announce the far hop's timeouts as this one's.
 */
function endToEnd (headers: IncomingHttpHeaders): IncomingHttpHeaders {
  const out = { ...headers }
  delete out.connection
  delete out['keep-alive']
  return out
}

function badGateway (res: ServerResponse): void {
  if (res.headersSent) {
    // Part of the answer is out: a cut is all that can tell the client.
    res.destroy()
    return
  }
  // The client's body may be left unread: the connection cannot carry another request.
  res.writeHead(502, { 'Content-Type': 'text/plain', Connection: 'close' })
  res.end('bad gateway\n')
}

function relay (req: IncomingMessage, res: ServerResponse): void {
  const upstream = request({
    agent,
    host: '127.0.0.1',
    port: UPSTREAM_PORT,
    method: req.method,
    path: req.url,
    headers: endToEnd(req.headers)
  }, upRes => {
    res.writeHead(upRes.statusCode ?? 502, upRes.statusMessage, endToEnd(upRes.headers))
    upRes.pipe(res)
    // An upstream cut mid-answer: the client can only learn of it by a cut of its own.
    upRes.on('close', () => { if (!upRes.complete) res.destroy() })
  })
  upstream.on('error', () => { badGateway(res) })
  // A client gone before its answer is complete takes the upstream exchange with it (half
  // done, that connection cannot be reused); an unfinished upload ends here too.
  res.on('close', () => { if (!res.writableFinished) upstream.destroy() })
  // pipe, not stream.pipeline: pipeline's AbortController and AbortError per call were about
  // a fifth of this relay's CPU in a profile, and the listeners above do its error handling.
  req.pipe(upstream)
}

const server = createServer({ keepAliveTimeout: 60_000 }, relay)

server.listen(Number(process.env.PORT ?? '0'), '127.0.0.1', () => {
  const address = server.address()
  process.stdout.write(`listening ${typeof address === 'object' && address != null ? address.port : 0}\n`)
})

const shutdown = (): void => {
  server.close(() => process.exit(0))
  server.closeAllConnections()
  agent.destroy()
}
process.on('SIGTERM', shutdown)
process.on('SIGINT', shutdown)
