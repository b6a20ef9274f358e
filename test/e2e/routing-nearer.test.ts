import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startDaemon, stopAllDaemons, type Daemon } from '../helpers/daemon.js'
import { http } from '../helpers/http.js'
import type { LatencyRelay } from '../helpers/latency-relay.js'
import { HELLO_SCRIPT, startClientProxy, startDelayedInstance, writeTestConfig, type TestConfig } from '../helpers/mesh.js'
import { waitFor } from '../helpers/wait-for.js'

/** The soft RTT at work: an instance over it is used while a nearer one is started. */
describe('a nearer instance when the best is over the soft RTT', () => {
  let config: TestConfig
  let allocator: Daemon
  let client: Daemon
  let relay: LatencyRelay

  beforeAll(async () => {
    config = await writeTestConfig({ hello: { command: `"${process.execPath}" "${HELLO_SCRIPT}"`, health: '/healthz', softRttMs: 100, hardRttMs: 300 } })
    allocator = await startDaemon('hyphae-allocator', ['--configfile', config.file, '--runtime', 'process', '--metrics', '0'])
    // The only instance at first: ~150 ms away, within the hard RTT but over the soft one.
    relay = (await startDelayedInstance(config, allocator, 'hello', 'far', 75)).relay
    client = await startClientProxy(config, allocator)
  })

  afterAll(async () => {
    await stopAllDaemons()
    await relay?.stop()
    await config?.cleanup()
  })

  it('serves from the far instance meanwhile, then moves to a new near one started by the allocator', async () => {
    const base = client.ready.http as string
    const first = await http(`${base}/hello/`)
    expect(first.status).toBe(200)
    expect(first.body.toString()).toBe('hello from far\n')
    const started = performance.now()
    const near = await waitFor(async () => {
      const answer = await http(`${base}/hello/`)
      expect(answer.status).toBe(200)
      return answer.body.toString() !== 'hello from far\n' ? answer.body.toString() : undefined
    }, 'a request served by a nearer instance', 20_000)
    console.log(`a nearer instance took the traffic ${(performance.now() - started).toFixed(0)} ms after the first request (${near.trim()})`)
    for (let i = 0; i < 20; i++) expect((await http(`${base}/hello/`)).body.toString()).toBe(near)
    const instances = JSON.parse((await http(`${allocator.ready.http as string}/instances`)).body.toString()) as unknown[]
    expect(instances).toHaveLength(1)
  })
})
