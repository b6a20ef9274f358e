import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { stopAllDaemons, type Daemon } from '../helpers/daemon.js'
import { http, startLoad } from '../helpers/http.js'
import { startClientProxy, startDelayedInstance, writeTestConfig, type DelayedInstance, type TestConfig } from '../helpers/mesh.js'
import { waitFor } from '../helpers/wait-for.js'

/**
 * Routing by soft and hard RTT limits, with instances behind chunk-delaying relays: every
 * connection to an instance goes through its relay (its server proxy announces only the relay's
 * address), so its RTT is the relay's round trip.
 *
 * Two limit sets, each with a mesh of its own, one after the other. One mesh for both (two
 * services) saved no time, as each service needs instances of its own, and its extra nodes
 * made the first set's tests slower and flakier (the ~10 ms instance's first ping went over
 * the 60 ms soft limit now and then).
 */
interface RttMesh {
  client: Daemon
  instances: Map<string, DelayedInstance>
  url: string
  stop: () => Promise<void>
}

/** A bootstrap, one instance per [name, one-way delay in ms] (a round trip takes twice that), then the client. */
async function startRttMesh (limits: { softRttMs: number, hardRttMs: number }, delays: ReadonlyArray<readonly [string, number]>): Promise<RttMesh> {
  const config: TestConfig = await writeTestConfig({ hello: { command: 'node hello.js', health: '/healthz', ...limits } })
  const instances = new Map<string, DelayedInstance>()
  const stop = async (): Promise<void> => {
    await stopAllDaemons()
    await Promise.all([...instances.values()].map(async i => { await i.relay.stop() }))
    await config.cleanup()
  }
  try {
    const bootstrap = await startClientProxy(config, undefined)
    for (const [name, delay] of delays) instances.set(name, await startDelayedInstance(config, bootstrap, 'hello', name, delay))
    // Last, so that every connection to an instance is dialled by the client, through a relay.
    const client = await startClientProxy(config, bootstrap, ['--metrics', '0'])
    return { client, instances, url: `${client.ready.http as string}/hello/`, stop }
  } catch (err) {
    await stop()
    throw err
  }
}

/** Which instance answered each of `count` requests in a row ("status N" for a failure). */
async function servedBy (url: string, count: number): Promise<Record<string, number>> {
  const seen: Record<string, number> = {}
  for (let i = 0; i < count; i++) {
    const result = await http(url)
    const key = result.status === 200 ? result.body.toString().trim().replace('hello from ', '') : `status ${result.status}`
    seen[key] = (seen[key] ?? 0) + 1
  }
  return seen
}

describe('routing by RTT limits: soft 60 ms, hard 150 ms; round trips of ~10, ~100 and ~240 ms', () => {
  let mesh: RttMesh

  beforeAll(async () => {
    mesh = await startRttMesh({ softRttMs: 60, hardRttMs: 150 }, [['near', 5], ['far', 50], ['toofar', 120]])
  })

  afterAll(async () => {
    await mesh?.stop()
  })

  it('sends every request to the nearest instance', async () => {
    expect(await servedBy(mesh.url, 20)).toEqual({ near: 20 })
  })

  it('fails over to the next instance within the hard RTT (over the soft one), never to one over it', async () => {
    await mesh.instances.get('near')?.proxy.stop()
    expect(await servedBy(mesh.url, 20)).toEqual({ far: 20 })
  })

  it('answers 503 when the only instance left is over the hard RTT', async () => {
    await mesh.instances.get('far')?.proxy.stop()
    expect(await servedBy(mesh.url, 5)).toEqual({ 'status 503': 5 })
  })
})

describe('routing by RTT limits: soft 100 ms, hard 300 ms; round trips of ~5, ~50 and ~400 ms', () => {
  let mesh: RttMesh

  beforeAll(async () => {
    mesh = await startRttMesh({ softRttMs: 100, hardRttMs: 300 }, [['i5', 2.5], ['i50', 25], ['i400', 200]])
  })

  afterAll(async () => {
    await mesh?.stop()
  })

  it('never sends a request to the instance over the hard RTT, and most to the nearest', async () => {
    const result = await startLoad(mesh.url, { concurrency: 4, total: 300 }).done
    expect(result.errors).toEqual([])
    expect(result.statuses.get(200)).toBe(300)
    expect(result.bodies.get('hello from i400\n') ?? 0).toBe(0)
    const nearer = result.bodies.get('hello from i5\n') ?? 0
    expect(nearer + (result.bodies.get('hello from i50\n') ?? 0)).toBe(300)
    // Both are within the soft RTT: the balancer weighs latency (~15 vs ~55 ms answers) against
    // requests in flight, so the farther one serves only while the nearer has 3 or more in flight.
    console.log(`the ~5 ms instance served ${nearer} of 300 beside a ~50 ms one`)
    expect(nearer).toBeGreaterThanOrEqual(210)
    const peers = JSON.parse((await http(`http://127.0.0.1:${mesh.client.ready.metrics as number}/peers`)).body.toString()) as Array<{ peers: Array<{ lastRttMs: number }> }>
    expect(peers[0].peers.length).toBeGreaterThan(0)
    expect(peers[0].peers.every(p => p.lastRttMs <= 300)).toBe(true)
  })

  it('moves traffic off an instance whose RTT goes past the hard limit within 3 s', async () => {
    const relay = mesh.instances.get('i5')?.relay
    // Make sure i5 is in use first (and back at its own delay, should this test run again).
    relay?.setDelay(2.5)
    await waitFor(async () => (await http(mesh.url)).body.toString() === 'hello from i5\n', 'i5 serving', 20_000)
    const changedAt = performance.now()
    relay?.setDelay(200)
    let lastServedByI5 = changedAt
    const deadline = changedAt + 6000
    while (performance.now() < deadline) {
      const answer = await http(mesh.url)
      expect(answer.status).toBe(200)
      if (answer.body.toString() === 'hello from i5\n') lastServedByI5 = performance.now()
    }
    const movedAfterMs = lastServedByI5 - changedAt
    console.log(`traffic moved off an instance past its hard RTT after ${movedAfterMs.toFixed(0)} ms`)
    expect(movedAfterMs).toBeLessThan(3000)
  })
})
