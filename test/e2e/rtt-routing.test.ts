import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { stopAllDaemons, type Daemon } from '../helpers/daemon.js'
import { http } from '../helpers/http.js'
import { startClientProxy, startDelayedInstance, writeTestConfig, type DelayedInstance, type TestConfig } from '../helpers/mesh.js'

/**
 * Instances behind chunk-delaying relays: every connection to a server proxy goes through
 * its relay (it announces only the relay's address), so its RTT is the relay's round trip.
 */
describe('RTT-aware instance choice', () => {
  let config: TestConfig
  let bootstrap: Daemon
  let client: Daemon
  const instances = new Map<string, DelayedInstance>()

  beforeAll(async () => {
    config = await writeTestConfig({ hello: { command: 'node hello.js', health: '/healthz', softRttMs: 60, hardRttMs: 150 } })
    bootstrap = await startClientProxy(config, undefined)
    // Round trips of ~10 ms, ~100 ms and ~240 ms; the hard limit is 150 ms.
    for (const [name, delay] of [['near', 5], ['far', 50], ['toofar', 120]] as const) {
      instances.set(name, await startDelayedInstance(config, bootstrap, 'hello', name, delay))
    }
    // Last, so that every connection to an instance is dialled by the client, through a relay.
    client = await startClientProxy(config, bootstrap)
  })

  afterAll(async () => {
    await stopAllDaemons()
    await Promise.all([...instances.values()].map(async i => { await i.relay.stop() }))
    await config?.cleanup()
  })

  async function servedBy (count: number): Promise<Map<string, number>> {
    const seen = new Map<string, number>()
    for (let i = 0; i < count; i++) {
      const result = await http(`${client.ready.http as string}/hello/`)
      const key = result.status === 200 ? result.body.toString().trim().replace('hello from ', '') : `status ${result.status}`
      seen.set(key, (seen.get(key) ?? 0) + 1)
    }
    return seen
  }

  it('sends every request to the nearest instance', async () => {
    const seen = await servedBy(20)
    expect(Object.fromEntries(seen)).toEqual({ near: 20 })
  })

  it('fails over to the next instance within the hard RTT, never to one over it', async () => {
    await instances.get('near')?.proxy.stop()
    const seen = await servedBy(20)
    expect(Object.fromEntries(seen)).toEqual({ far: 20 })
  })

  it('answers 503 when the only instance left is over the hard RTT', async () => {
    await instances.get('far')?.proxy.stop()
    const seen = await servedBy(5)
    expect(Object.fromEntries(seen)).toEqual({ 'status 503': 5 })
  })
})
