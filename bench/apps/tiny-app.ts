#!/usr/bin/env node
// The benchmarks' app: plain node:http, nothing else. Any GET answers the 12 bytes
// "hello world\n"; GET /bytes/N streams N bytes and POST|PUT /upload counts the body, for the
// streaming suite. Listens on 127.0.0.1:$PORT (0: any) and prints `listening PORT`.
import { createServer, type ServerResponse } from 'node:http'

const HELLO = Buffer.from('hello world\n')
const BLOCK = Buffer.alloc(256 * 1024, 0x61)

async function sendBytes (res: ServerResponse, n: number): Promise<void> {
  res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': n })
  let sent = 0
  while (sent < n) {
    if (res.destroyed) return
    const size = Math.min(BLOCK.length, n - sent)
    sent += size
    if (!res.write(size === BLOCK.length ? BLOCK : BLOCK.subarray(0, size))) {
      await new Promise<void>(resolve => {
        const done = (): void => { res.off('drain', done); res.off('close', done); resolve() }
        res.on('drain', done)
        res.on('close', done)
      })
    }
  }
  res.end()
}

const server = createServer({ keepAliveTimeout: 60_000 }, (req, res) => {
  const url = req.url ?? '/'
  if ((req.method === 'POST' || req.method === 'PUT') && url.startsWith('/upload')) {
    let bytes = 0
    req.on('data', (chunk: Buffer) => { bytes += chunk.length })
    req.on('end', () => {
      const body = JSON.stringify({ bytes }) + '\n'
      res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) })
      res.end(body)
    })
    return
  }
  req.resume()
  const bytes = /^\/bytes\/(\d{1,13})$/.exec(url)
  if (bytes != null) {
    sendBytes(res, Number(bytes[1])).catch(() => { res.destroy() })
    return
  }
  res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': HELLO.length })
  res.end(HELLO)
})

server.listen(Number(process.env.PORT ?? '0'), '127.0.0.1', () => {
  const address = server.address()
  process.stdout.write(`listening ${typeof address === 'object' && address != null ? address.port : 0}\n`)
})

const shutdown = (): void => {
  server.close(() => process.exit(0))
  server.closeAllConnections()
}
process.on('SIGTERM', shutdown)
process.on('SIGINT', shutdown)
