import { spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { Agent, createServer, request, type Server } from 'node:http'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { CatalogServer, type StockFile } from '../../examples/toystore/catalog.js'
import { parseClientArgs, runLoad } from '../../examples/toystore/client.js'
import { FrontendServer } from '../../examples/toystore/frontend.js'
import { OrderServer, type Order } from '../../examples/toystore/order.js'
import { REPO_ROOT } from '../helpers/daemon.js'
import { http, json } from '../helpers/http.js'

/**
 * Stands in for $HYPHAE_PROXY: `/<service>/<path>` goes to that service's port, with the
 * prefix removed as the mesh does. An unknown or stopped service gets the mesh's kind of
 * error (X-Hyphae-Error), so the services' handling of it is tested too.
 */
class Router {
  readonly targets = new Map<string, number>()
  private readonly agent = new Agent({ keepAlive: true })
  private readonly server: Server = createServer((req, res) => {
    const match = /^\/([a-z0-9-]+)(\/.*)?$/.exec(req.url ?? '')
    const port = match === null ? undefined : this.targets.get(match[1])
    const meshError = (status: number, message: string): void => {
      req.resume()
      res.writeHead(status, { 'Content-Type': 'application/json', 'X-Hyphae-Error': 'test' })
      res.end(JSON.stringify({ error: { code: status, reason: 'test', message } }))
    }
    if (match === null || port === undefined) { meshError(404, 'no such service'); return }
    // Hop-by-hop: the client's "close" is not the router's to pass on to its pooled connection.
    const headers = { ...req.headers }
    delete headers.connection
    const upstream = request({ host: '127.0.0.1', port, path: match[2] ?? '/', method: req.method, headers, agent: this.agent }, answer => {
      res.writeHead(answer.statusCode ?? 502, answer.headers)
      answer.pipe(res)
    })
    upstream.on('error', () => { if (!res.headersSent) meshError(502, 'app unreachable'); else res.destroy() })
    req.pipe(upstream)
  })

  async start (): Promise<string> {
    this.server.listen(0, '127.0.0.1')
    await new Promise(resolve => this.server.once('listening', resolve))
    const address = this.server.address()
    return `http://127.0.0.1:${typeof address === 'object' && address !== null ? address.port : 0}`
  }

  async stop (): Promise<void> {
    this.agent.destroy()
    this.server.closeAllConnections()
    await new Promise(resolve => this.server.close(resolve))
  }
}

interface Stack {
  dataDir: string
  router: Router
  proxy: string
  catalog: CatalogServer
  order: OrderServer
  frontend: FrontendServer
  /** The frontend's base URL. */
  url: string
}

const dirs: string[] = []

async function startStack (dataDir?: string): Promise<Stack> {
  const dir = dataDir ?? await mkdtemp(join(tmpdir(), 'hyphae-toystore-'))
  dirs.push(dir)
  const router = new Router()
  const proxy = await router.start()
  const catalog = new CatalogServer({ port: 0, dataDir: join(dir, 'catalog') })
  const order = new OrderServer({ port: 0, dataDir: join(dir, 'order'), proxy })
  const frontend = new FrontendServer({ port: 0, proxy })
  router.targets.set('catalog', await catalog.start())
  router.targets.set('order', await order.start())
  const url = `http://127.0.0.1:${await frontend.start()}`
  return { dataDir: dir, router, proxy, catalog, order, frontend, url }
}

async function stopStack (s: Stack): Promise<void> {
  await s.frontend.stop()
  await s.order.stop()
  await s.catalog.stop()
  await s.router.stop()
}

type Body = { data?: Record<string, unknown>, error?: { code: number, message: string } }

async function get (url: string): Promise<{ status: number, body: Body }> {
  const reply = await http(url)
  return { status: reply.status, body: json<Body>(reply) }
}

async function post (url: string, body: unknown): Promise<{ status: number, body: Body }> {
  const text = typeof body === 'string' ? body : JSON.stringify(body)
  const reply = await http(url, { method: 'POST', body: text, headers: { 'Content-Type': 'application/json' } })
  return { status: reply.status, body: json<Body>(reply) }
}

describe('examples/toystore', () => {
  let stack: Stack

  beforeEach(async () => { stack = await startStack() })
  afterEach(async () => {
    await stopStack(stack)
    for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true })
  })

  it('answers a product query through frontend and mesh, 404 for an unknown toy', async () => {
    expect(await get(`${stack.url}/products/robot`)).toEqual({ status: 200, body: { data: { name: 'robot', price: 25, quantity: 100 } } })
    expect(await get(`${stack.url}/products/yo-yo`)).toEqual({ status: 200, body: { data: { name: 'yo-yo', price: 3.5, quantity: 500 } } })
    expect(await get(`${stack.url}/products/unicorn`)).toEqual({ status: 404, body: { error: { code: 404, message: 'product not found' } } })
    expect(await get(`${stack.url}/nowhere`)).toEqual({ status: 404, body: { error: { code: 404, message: 'not found' } } })
    expect((await http(`${stack.url}/healthz`)).status).toBe(200)
  })

  it('places orders with rising numbers, logs them and looks them up', async () => {
    const first = await post(`${stack.url}/orders`, { name: 'kite', quantity: 3 })
    const second = await post(`${stack.url}/orders`, { name: 'robot', quantity: 1 })
    expect(first).toEqual({ status: 201, body: { data: { order_number: 1 } } })
    expect(second).toEqual({ status: 201, body: { data: { order_number: 2 } } })
    expect((await get(`${stack.url}/products/kite`)).body.data?.quantity).toBe(47)

    const looked = await get(`${stack.url}/orders/1`)
    expect(looked.status).toBe(200)
    expect(looked.body.data).toMatchObject({ order_number: 1, name: 'kite', quantity: 3, price: 12 })
    expect(Number.isNaN(Date.parse(String(looked.body.data?.at)))).toBe(false)
    expect(await get(`${stack.url}/orders/3`)).toEqual({ status: 404, body: { error: { code: 404, message: 'order not found' } } })
    expect((await get(`${stack.url}/orders/abc`)).status).toBe(404)

    const log = (await readFile(join(stack.dataDir, 'order', 'orders.log'), 'utf8')).trimEnd().split('\n').map(line => JSON.parse(line) as Order)
    expect(log.map(o => [o.order_number, o.name, o.quantity])).toEqual([[1, 'kite', 3], [2, 'robot', 1]])
  })

  it('refuses more than the stock with 400 "out of stock", an unknown toy with 404', async () => {
    expect(await post(`${stack.url}/orders`, { name: 'kite', quantity: 51 })).toEqual({ status: 400, body: { error: { code: 400, message: 'out of stock' } } })
    expect(await post(`${stack.url}/orders`, { name: 'kite', quantity: 50 })).toMatchObject({ status: 201 })
    expect(await post(`${stack.url}/orders`, { name: 'kite', quantity: 1 })).toEqual({ status: 400, body: { error: { code: 400, message: 'out of stock' } } })
    expect(await post(`${stack.url}/orders`, { name: 'unicorn', quantity: 1 })).toEqual({ status: 404, body: { error: { code: 404, message: 'product not found' } } })
    expect((await get(`${stack.url}/products/kite`)).body.data?.quantity).toBe(0)
  })

  it('answers 400 "invalid request" to malformed orders, at every service', async () => {
    const invalid = { status: 400, body: { error: { code: 400, message: 'invalid request' } } }
    const bad: unknown[] = [
      '{"name": "robot", "quantity": ', 'null', '[]', '"robot"',
      { name: 'robot', quantity: 0 }, { name: 'robot', quantity: -1 }, { name: 'robot', quantity: 1.5 },
      { name: 'robot', quantity: '1' }, { quantity: 1 }, { name: '', quantity: 1 }, { name: 7, quantity: 1 },
      // Valid JSON, just over 64 KiB.
      JSON.stringify({ name: 'robot', quantity: 1, pad: 'x'.repeat(64 * 1024) })
    ]
    const catalogUrl = `${stack.proxy}/catalog/buy`
    const orderUrl = `${stack.proxy}/order/orders`
    for (const body of bad) {
      for (const url of [`${stack.url}/orders`, orderUrl, catalogUrl]) {
        expect(await post(url, body), `${url} ${String(body).slice(0, 40)}`).toEqual(invalid)
      }
    }
    // A body over the limit sent without Content-Length (chunked) is cut off as well.
    const chunked = await new Promise<number>((resolve, reject) => {
      const req = request(`${stack.url}/orders`, { method: 'POST', agent: false }, res => { res.resume(); resolve(res.statusCode ?? 0) })
      req.on('error', reject)
      req.write('{"name":"robot","quantity":1,"pad":"')
      req.end('x'.repeat(70 * 1024) + '"}')
    })
    expect(chunked).toBe(400)
    expect((await get(`${stack.url}/products/robot`)).body.data?.quantity).toBe(100)
    expect(existsSync(join(stack.dataDir, 'order', 'orders.log'))).toBe(true)
    expect(await readFile(join(stack.dataDir, 'order', 'orders.log'), 'utf8')).toBe('')
  })

  it('sells exactly the stock to 200 concurrent buyers of 100 robots', async () => {
    const replies = await Promise.all(Array.from({ length: 200 }, async () => await post(`${stack.url}/orders`, { name: 'robot', quantity: 1 })))
    const sold = replies.filter(r => r.status === 201)
    const refused = replies.filter(r => r.status === 400 && r.body.error?.message === 'out of stock')
    expect(sold).toHaveLength(100)
    expect(refused).toHaveLength(100)
    const numbers = sold.map(r => r.body.data?.order_number as number)
    expect(new Set(numbers).size).toBe(100)
    expect([...numbers].sort((a, b) => a - b)).toEqual(Array.from({ length: 100 }, (_, i) => i + 1))
    expect((await get(`${stack.url}/products/robot`)).body.data?.quantity).toBe(0)

    const lines = (await readFile(join(stack.dataDir, 'order', 'orders.log'), 'utf8')).trimEnd().split('\n')
    expect(lines).toHaveLength(100)
    const logged = lines.map(line => (JSON.parse(line) as Order).order_number)
    expect(new Set(logged)).toEqual(new Set(numbers))
    const stock = JSON.parse(await readFile(join(stack.dataDir, 'catalog', 'stock.json'), 'utf8')) as StockFile
    expect(stock.products.robot.quantity).toBe(0)
    expect(stock.lastSale).toBe(100)
  })

  it('keeps the stock and the order numbers across a restart on the same data dir', async () => {
    for (let i = 0; i < 3; i++) expect((await post(`${stack.url}/orders`, { name: 'whale', quantity: 2 })).status).toBe(201)
    await stopStack(stack)
    stack = await startStack(stack.dataDir)
    expect((await get(`${stack.url}/products/whale`)).body.data?.quantity).toBe(94 - 6)
    expect((await get(`${stack.url}/products/robot`)).body.data?.quantity).toBe(100)
    expect((await get(`${stack.url}/orders/3`)).body.data).toMatchObject({ order_number: 3, name: 'whale', quantity: 2 })
    const next = await post(`${stack.url}/orders`, { name: 'whale', quantity: 1 })
    expect(next).toEqual({ status: 201, body: { data: { order_number: 4 } } })
  })

  it('answers 502 "catalog unavailable" when the mesh cannot reach catalog', async () => {
    await stack.catalog.stop()
    const down = { status: 502, body: { error: { code: 502, message: 'catalog unavailable' } } }
    expect(await post(`${stack.url}/orders`, { name: 'robot', quantity: 1 })).toEqual(down)
    expect(await get(`${stack.url}/products/robot`)).toEqual(down)
    stack.router.targets.delete('order')
    expect(await get(`${stack.url}/orders/1`)).toEqual({ status: 502, body: { error: { code: 502, message: 'order unavailable' } } })
  })

  it('runs the load client: mix, query and buy, with summary counts', async () => {
    const base = { url: stack.url, concurrency: 4, quantity: 1, products: ['yo-yo', 'tux'], timeoutMs: 5_000 }
    const mix = await runLoad({ ...base, mode: 'mix', requests: 30, buyProbability: 1 })
    expect(mix).toMatchObject({ requests: 60, ok: 60, failed: {}, orders: 30 })
    expect(mix.latencyMs.p50).toBeGreaterThan(0)
    expect(mix.latencyMs.p50).toBeLessThanOrEqual(mix.latencyMs.p90)
    expect(mix.latencyMs.p99).toBeLessThanOrEqual(mix.latencyMs.max)

    const query = await runLoad({ ...base, mode: 'query', requests: 20, buyProbability: 1 })
    expect(query).toMatchObject({ requests: 20, ok: 20, orders: 0 })

    // 50 kites in stock, 12 buys of 5: 10 orders, 2 refused.
    const buy = await runLoad({ ...base, mode: 'buy', requests: 12, quantity: 5, products: ['kite'], buyProbability: 0 })
    expect(buy).toMatchObject({ requests: 12, ok: 10, orders: 10, failed: { '400 out of stock': 2 } })
    expect((await get(`${stack.url}/orders/40`)).body.data).toMatchObject({ name: 'kite', quantity: 5 })
  })

  it('parses the client command line, and rejects a wrong flag in one line with exit 2', () => {
    const opts = parseClientArgs(['--url', 'http://127.0.0.1:1/frontend', '--mode', 'buy', '--requests', '7', '--buy-probability', '0.25'])
    expect(opts).toMatchObject({ mode: 'buy', requests: 7, concurrency: 4, buyProbability: 0.25, quantity: 1 })
    expect(() => parseClientArgs(['--url', 'http://x', '--mode', 'sell'])).toThrow(/--mode/)
    expect(() => parseClientArgs(['--url', 'http://x', '--requests', '0'])).toThrow(/--requests/)
    expect(() => parseClientArgs(['--url', 'http://x', '--buy-probability', '2'])).toThrow(/--buy-probability/)
    expect(() => parseClientArgs([])).toThrow(/--url/)

    const client = resolve(REPO_ROOT, 'dist/examples/toystore/client.js')
    const run = spawnSync(process.execPath, [client, '--url', 'http://127.0.0.1:1', '--bogus'], { encoding: 'utf8', timeout: 10_000 })
    expect(run.status).toBe(2)
    expect(run.stderr.trim().split('\n')).toHaveLength(1)
    expect(run.stderr).toMatch(/^client: .*--bogus/)
  })
})
