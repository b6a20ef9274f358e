#!/usr/bin/env node
// Toy store, service `catalog`: the stock, in memory and on disk ($HYPHAE_DATA_DIR/stock.json).
// It alone decides whether a buy succeeds, so it must run as one instance (maxInstances 1):
// two copies would each sell the same stock. Each sale gets the next sale number, kept with
// the stock: order numbers are sale numbers, so they stay unique and rising whichever host
// an order instance runs on (an order instance's log is only its host's).
import { mkdir, readFile } from 'node:fs/promises'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { join } from 'node:path'
import {
  closeServer, HttpError, isEntryPoint, listen, parseOrderRequest, pathParam, readJson, runService,
  sendError, sendJson, serve, GroupCommit, writeFileAtomic, type OrderRequest
} from './http-util.js'

export interface Product { price: number, quantity: number }
type Sold = { name: string, sale: number } & Product

/** What stock.json holds. */
export interface StockFile { lastSale: number, products: Record<string, Product> }

/** The stock of a first start (the seed's four toys, and a few more). */
export const INITIAL_STOCK: Readonly<Record<string, Product>> = {
  robot: { price: 25.00, quantity: 100 },
  'yo-yo': { price: 3.50, quantity: 500 },
  kite: { price: 12.00, quantity: 50 },
  tux: { price: 25.99, quantity: 80 },
  whale: { price: 34.99, quantity: 94 },
  elephant: { price: 29.99, quantity: 87 },
  bird: { price: 39.99, quantity: 98 }
}

export interface CatalogOptions { host?: string, port: number, dataDir: string }

export class CatalogServer {
  private readonly server: Server
  private readonly stockFile: string
  private stock = new Map<string, Product>()
  private lastSale = 0
  // Buys are decided one after another, in one queue, and persisted before any is answered:
  // concurrent buys never oversell, and a buy answered 200 survives a crash.
  private readonly buys = new GroupCommit<OrderRequest, Sold>(async batch => await this.buy(batch))

  constructor (private readonly opts: CatalogOptions) {
    this.stockFile = join(opts.dataDir, 'stock.json')
    this.server = createServer(serve(async (req, res) => { await this.route(req, res) }))
  }

  async start (): Promise<number> {
    await mkdir(this.opts.dataDir, { recursive: true })
    const saved = await this.load()
    this.stock = new Map(Object.entries(saved.products))
    this.lastSale = saved.lastSale
    return await listen(this.server, this.opts.host ?? '127.0.0.1', this.opts.port)
  }

  async stop (): Promise<void> {
    await closeServer(this.server)
    // A buy already queued still gets persisted, even if its client is gone.
    await this.buys.idle()
  }

  private async load (): Promise<StockFile> {
    let text: string
    try {
      text = await readFile(this.stockFile, 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
      return { lastSale: 0, products: Object.fromEntries(Object.entries(INITIAL_STOCK).map(([name, p]) => [name, { ...p }])) }
    }
    // Writes are atomic, so a file that does not parse was edited by hand: refuse to start
    // rather than silently reset the stock.
    const parsed = JSON.parse(text) as Partial<StockFile>
    if (!Number.isSafeInteger(parsed.lastSale) || typeof parsed.products !== 'object' || parsed.products === null) {
      throw new Error(`${this.stockFile}: not a stock file ({"lastSale", "products"})`)
    }
    for (const [name, p] of Object.entries(parsed.products)) {
      if (typeof p?.price !== 'number' || !Number.isSafeInteger(p.quantity) || p.quantity < 0) {
        throw new Error(`${this.stockFile}: bad entry for ${JSON.stringify(name)}`)
      }
    }
    return parsed as StockFile
  }

  private async route (req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = new URL(req.url ?? '/', 'http://localhost').pathname
    const method = req.method ?? 'GET'
    if (path === '/buy' && method === 'POST') {
      const order = parseOrderRequest(await readJson(req))
      sendJson(res, 200, { data: await this.buys.add(order) })
      return
    }
    req.resume()
    const name = pathParam(path, '/products/')
    if (method === 'GET' && name !== undefined) {
      const product = this.stock.get(name)
      if (product === undefined) throw new HttpError(404, 'product not found')
      sendJson(res, 200, { data: { name, price: product.price, quantity: product.quantity } })
      return
    }
    if (method === 'GET' && path === '/healthz') { sendJson(res, 200, { data: { status: 'ok' } }); return }
    sendError(res, 404, 'not found')
  }

  private async buy (batch: OrderRequest[]): Promise<Array<Sold | Error>> {
    const next = new Map(this.stock)
    let sale = this.lastSale
    const results = batch.map(({ name, quantity }): Sold | Error => {
      const product = next.get(name)
      if (product === undefined) return new HttpError(404, 'product not found')
      if (quantity > product.quantity) return new HttpError(400, 'out of stock')
      next.set(name, { price: product.price, quantity: product.quantity - quantity })
      return { name, price: product.price, quantity: product.quantity - quantity, sale: ++sale }
    })
    if (results.every(r => r instanceof Error)) return results
    // On disk first: if the write fails, memory still agrees with the file and the whole
    // batch fails. A whole-file write is fine for a toy store's few products.
    const file: StockFile = { lastSale: sale, products: Object.fromEntries(next) }
    await writeFileAtomic(this.stockFile, JSON.stringify(file, null, 1) + '\n')
    this.stock = next
    this.lastSale = sale
    return results
  }
}

if (isEntryPoint(import.meta.url)) {
  runService('catalog', 8081, false, async env => {
    const catalog = new CatalogServer(env)
    return { port: await catalog.start(), stop: async () => { await catalog.stop() } }
  })
}
