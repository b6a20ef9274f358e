#!/usr/bin/env node
// Toy store, service `order`: takes an order, has catalog sell it, and logs it durably in
// $HYPHAE_DATA_DIR/orders.log, one JSON line per order. Calls catalog only through the mesh.
// The order number is catalog's sale number: unique and rising across every order instance,
// on any host, since catalog is the one place that sells.
import { mkdir, open, readFile, truncate, type FileHandle } from 'node:fs/promises'
import { Agent, createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { join } from 'node:path'
import {
  callJson, closeServer, HttpError, isEntryPoint, listen, parseOrderRequest, pathParam,
  readJson, runService, sendError, sendJson, serve, GroupCommit, UpstreamError, type UpstreamReply
} from './http-util.js'

export interface Order { order_number: number, name: string, quantity: number, price: number, at: string }
type Sale = Omit<Order, 'at'>

export interface OrderOptions {
  host?: string
  port: number
  dataDir: string
  /** Base URL of the mesh ($HYPHAE_PROXY): catalog is `${proxy}/catalog/...`. */
  proxy: string
  timeoutMs?: number
}

export class OrderServer {
  private readonly server: Server
  private readonly logFile: string
  private readonly agent = new Agent({ keepAlive: true, maxSockets: 64 })
  private log?: FileHandle
  // The whole log, by number. Fine for an example; a real store would index the file instead.
  private readonly orders = new Map<number, Order>()
  // Appended in one queue, a batch of orders sharing one fsync.
  private readonly appends = new GroupCommit<Sale, Order>(async batch => await this.append(batch))

  constructor (private readonly opts: OrderOptions) {
    this.logFile = join(opts.dataDir, 'orders.log')
    this.server = createServer(serve(async (req, res) => { await this.route(req, res) }))
  }

  async start (): Promise<number> {
    await mkdir(this.opts.dataDir, { recursive: true })
    await this.load()
    this.log = await open(this.logFile, 'a')
    return await listen(this.server, this.opts.host ?? '127.0.0.1', this.opts.port)
  }

  async stop (): Promise<void> {
    await closeServer(this.server)
    this.agent.destroy()
    await this.appends.idle()
    await this.log?.close()
    this.log = undefined
  }

  private async load (): Promise<void> {
    let text: string
    try {
      text = await readFile(this.logFile, 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return
      throw err
    }
    // An append cut short by a crash leaves a last line without its newline, of an order
    // never confirmed: cut it off, or the next append would be glued to it.
    const complete = text.lastIndexOf('\n') + 1
    if (complete < text.length) await truncate(this.logFile, Buffer.byteLength(text.slice(0, complete)))
    for (const line of text.slice(0, complete).split('\n')) {
      if (line === '') continue
      const order = JSON.parse(line) as Order
      this.orders.set(order.order_number, order)
    }
  }

  private async route (req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = new URL(req.url ?? '/', 'http://localhost').pathname
    const method = req.method ?? 'GET'
    if (path === '/orders' && method === 'POST') {
      const order = await this.place(parseOrderRequest(await readJson(req)))
      sendJson(res, 201, { data: { order_number: order.order_number } })
      return
    }
    req.resume()
    const number = pathParam(path, '/orders/')
    if (method === 'GET' && number !== undefined) {
      const order = /^\d{1,15}$/.test(number) ? this.orders.get(Number(number)) : undefined
      if (order === undefined) throw new HttpError(404, 'order not found')
      sendJson(res, 200, { data: order })
      return
    }
    if (method === 'GET' && path === '/healthz') {
      if (this.log === undefined) throw new HttpError(503, 'order log unusable')
      sendJson(res, 200, { data: { status: 'ok' } })
      return
    }
    sendError(res, 404, 'not found')
  }

  private async place (request: { name: string, quantity: number }): Promise<Order> {
    // Outside the queue: catalog serializes buys itself, and waiting on it here would
    // hold every other order's numbering up.
    let reply: UpstreamReply
    try {
      reply = await callJson(`${this.opts.proxy}/catalog/buy`, { method: 'POST', body: request, agent: this.agent, timeoutMs: this.opts.timeoutMs })
    } catch (err) {
      if (err instanceof UpstreamError && err.kind === 'timeout') throw new HttpError(504, 'catalog timed out')
      throw new HttpError(502, 'catalog unavailable')
    }
    const sold = (reply.body as { data?: { price?: unknown, sale?: unknown } }).data
    if (reply.meshError === undefined && reply.status === 200 && typeof sold?.price === 'number' && Number.isSafeInteger(sold.sale)) {
      return await this.appends.add({ order_number: sold.sale as number, ...request, price: sold.price })
    }
    // Catalog's own "product not found" and "out of stock" go back as they came; anything
    // else (its 5xx, the mesh's errors, a body of another shape) means it could not answer.
    const refusal = (reply.body as { error?: { message?: unknown } }).error?.message
    if (reply.meshError === undefined && (reply.status === 400 || reply.status === 404) && typeof refusal === 'string') {
      throw new HttpError(reply.status, refusal)
    }
    throw new HttpError(502, 'catalog unavailable')
  }

  private async append (batch: Sale[]): Promise<Order[]> {
    if (this.log === undefined) throw new Error('order log closed')
    const at = new Date().toISOString()
    const orders = batch.map((sale): Order => ({ ...sale, at }))
    try {
      await this.log.appendFile(orders.map(o => JSON.stringify(o) + '\n').join(''))
      await this.log.datasync()
    } catch (err) {
      // Catalog has sold stock that no order records: without a transaction across both
      // services, the example accepts that and answers 500. A partly written line would be
      // glued to the next one, so take no more orders and fail health checks; a relaunch
      // cuts the torn tail off.
      const log = this.log
      this.log = undefined
      await log.close().catch(() => undefined)
      throw err
    }
    for (const order of orders) this.orders.set(order.order_number, order)
    return orders
  }
}

if (isEntryPoint(import.meta.url)) {
  runService('order', 8082, true, async env => {
    const order = new OrderServer({ ...env, proxy: env.proxy ?? '' })
    return { port: await order.start(), stop: async () => { await order.stop() } }
  })
}
