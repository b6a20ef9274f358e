import { request } from 'node:http'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { stopAllDaemons, type Daemon } from '../helpers/daemon.js'
import { http, startLoad } from '../helpers/http.js'
import { metricValue, startClientProxy, startHelloApp, startServerProxy, writeTestConfig, type App, type TestConfig } from '../helpers/mesh.js'
import { waitFor } from '../helpers/wait-for.js'

interface Instance {
  name: string
  app: App
  proxy: Daemon
}

/** Balancing and failover over equal instances on one machine. */
describe('balancing and failover', () => {
  let config: TestConfig
  let bootstrap: Daemon
  let client: Daemon
  let base: string
  const instances: Instance[] = []

  async function startInstance (name: string): Promise<Instance> {
    const app = await startHelloApp(name)
    const proxy = await startServerProxy(config, bootstrap, 'hello', app.port)
    const instance = { name, app, proxy }
    instances.push(instance)
    return instance
  }

  beforeAll(async () => {
    config = await writeTestConfig({ hello: { command: 'node hello.js', health: '/healthz' } })
    bootstrap = await startClientProxy(config, undefined)
    for (const name of ['a', 'b', 'c']) await startInstance(name)
    client = await startClientProxy(config, bootstrap, ['--metrics', '0'])
    base = client.ready.http as string
    // Until the client has found all three, the spread would be skewed.
    await waitFor(async () => {
      const peers = JSON.parse((await http(`http://127.0.0.1:${client.ready.metrics as number}/peers`)).body.toString()) as Array<{ peers: unknown[] }>
      if (peers[0]?.peers.length === 3) return true
      await http(`${base}/hello/`)
      return undefined
    }, 'the client knowing all three instances', 15_000)
  })

  afterAll(async () => {
    await stopAllDaemons()
    await config?.cleanup()
  })

  // Peak-EWMA (as Linkerd's) keeps a latency spike for ~10 s, longer than this load runs: on two
  // busy cores one descheduled server proxy is, for the balancer, a slower instance (CI saw
  // 24.3 % and 41.2 %). The bench measures the spread on a quiet machine (0.5 pp); this asserts
  // that none is starved or flooded.
  it('spreads 3,000 requests over three equal instances, 33% ± 10% each', async () => {
    const load = startLoad(`${base}/hello/`, { concurrency: 6, total: 3000 })
    const result = await load.done
    expect(result.errors).toEqual([])
    expect(result.statuses.get(200)).toBe(3000)
    const shares = ['a', 'b', 'c'].map(name => (result.bodies.get(`hello from ${name}\n`) ?? 0) / 3000)
    console.log(`spread over three instances: ${shares.map(s => (s * 100).toFixed(1) + '%').join(' / ')}`)
    for (const share of shares) expect(Math.abs(share - 1 / 3)).toBeLessThanOrEqual(0.10)
  })

  it('loses no GET when an instance is SIGKILLed under load', async () => {
    const load = startLoad(`${base}/hello/`, { concurrency: 4, total: 2000 })
    await waitFor(() => load.result.sent >= 300, '300 requests sent', 20_000)
    const victim = instances.find(i => i.name === 'a') as Instance
    await victim.proxy.stop('SIGKILL')
    await victim.app.stop('SIGKILL')
    const result = await load.done
    console.log(`instance kill under load: ${result.errors.length} failed requests, statuses ${JSON.stringify(Object.fromEntries(result.statuses))}`)
    expect(result.errors).toEqual([])
    expect(result.statuses.get(200)).toBe(2000)
    const metrics = (await http(`http://127.0.0.1:${client.ready.metrics as number}/metrics`)).body.toString()
    expect(metricValue(metrics, 'hyphae_proxy_requests_total', { service: 'hello', status: '200' })).toBeGreaterThanOrEqual(2000)
  })

  it('answers 502 within a second to a POST in flight on an instance that dies', async () => {
    // A POST whose body never ends keeps the request in flight on one instance.
    const answered = new Promise<{ status: number, at: number }>((resolve, reject) => {
      const req = request(`${base}/hello/upload`, { method: 'POST', agent: false, headers: { 'Transfer-Encoding': 'chunked' } }, res => {
        res.resume()
        resolve({ status: res.statusCode ?? 0, at: performance.now() })
      })
      req.on('error', reject)
      req.write('partial body')
    })
    const busy = await waitFor(async () => {
      for (const instance of instances.filter(i => i.name !== 'a')) {
        const text = (await http(`http://127.0.0.1:${instance.proxy.ready.metrics as number}/metrics`)).body.toString()
        if (metricValue(text, 'hyphae_instance_requests_in_flight') > 0) return instance
      }
      return undefined
    }, 'the POST reaching an instance', 10_000)
    const killedAt = performance.now()
    await busy.proxy.stop('SIGKILL')
    await busy.app.stop('SIGKILL')
    instances.splice(instances.indexOf(busy), 1)
    const { status, at } = await answered
    console.log(`POST in flight on a killed instance: ${status} after ${(at - killedAt).toFixed(0)} ms`)
    expect(status).toBe(502)
    expect(at - killedAt).toBeLessThan(1000)
  })

  it('loses nothing in a rolling restart (SIGTERM: stop advertising, drain, exit)', async () => {
    const load = startLoad(`${base}/hello/`, { concurrency: 4, total: 3000 })
    const old = instances.filter(i => i.name !== 'a')
    for (const [n, instance] of old.entries()) {
      await startInstance(`new${n}`)
      expect(await instance.proxy.stop('SIGTERM')).toBe(0)
      await instance.app.stop()
    }
    const result = await load.done
    // The errors themselves, so a run that needed the retry still says what failed.
    console.log(`rolling restart under load: ${result.errors.length} failed, statuses ${JSON.stringify(Object.fromEntries(result.statuses))}, errors ${JSON.stringify(result.errors)}`)
    if (result.errors.length > 0) {
      console.log(`client proxy log:\n${client.stderr.split('\n').slice(-60).join('\n')}`)
      for (const instance of old) console.log(`${instance.name}'s proxy log:\n${instance.proxy.stderr.split('\n').slice(-30).join('\n')}`)
    }
    expect(result.errors).toEqual([])
    expect(result.statuses.get(200)).toBe(3000)
  })
})
