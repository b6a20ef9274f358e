import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { stopAllDaemons, type Daemon } from '../helpers/daemon.js'
import { http, startLoad } from '../helpers/http.js'
import { LatencyRelay } from '../helpers/latency-relay.js'
import { eventually, startClientProxy, startDelayedInstance, writeTestConfig, type TestConfig } from '../helpers/mesh.js'

/**
 * Soft and hard RTT limits with instances behind chunk-delaying relays (every connection to
 * an instance goes through its relay: it announces only the relay's address, and the client
 * starts last so that it dials every instance itself).
 */
describe('routing by RTT limits (soft 100 ms, hard 300 ms)', () => {
  let config: TestConfig
  let bootstrap: Daemon
  let client: Daemon
  let base: string
  const relays = new Map<string, LatencyRelay>()

  beforeAll(async () => {
    config = await writeTestConfig({ hello: { command: 'node hello.js', health: '/healthz', softRttMs: 100, hardRttMs: 300 } })
    bootstrap = await startClientProxy(config, undefined)
    for (const [name, delay] of [['i5', 2.5], ['i50', 25], ['i400', 200]] as const) {
      relays.set(name, (await startDelayedInstance(config, bootstrap, 'hello', name, delay)).relay)
    }
    client = await startClientProxy(config, bootstrap, ['--metrics', '0'])
    base = client.ready.http as string
  })

  afterAll(async () => {
    await stopAllDaemons()
    await Promise.all([...relays.values()].map(async r => { await r.stop() }))
    await config?.cleanup()
  })

  it('never sends a request to the instance over the hard RTT, and most to the nearest', async () => {
    const result = await startLoad(`${base}/hello/`, { concurrency: 4, total: 300 }).done
    expect(result.errors).toEqual([])
    expect(result.statuses.get(200)).toBe(300)
    expect(result.bodies.get('hello from i400\n') ?? 0).toBe(0)
    const nearer = result.bodies.get('hello from i5\n') ?? 0
    expect(nearer + (result.bodies.get('hello from i50\n') ?? 0)).toBe(300)
    // Both are within the soft RTT: the balancer weighs latency (~15 vs ~55 ms answers) against
    // requests in flight, so the farther one serves only while the nearer has 3 or more in flight.
    console.log(`the ~5 ms instance served ${nearer} of 300 beside a ~50 ms one`)
    expect(nearer).toBeGreaterThanOrEqual(210)
    const peers = JSON.parse((await http(`http://127.0.0.1:${client.ready.metrics as number}/peers`)).body.toString()) as Array<{ peers: Array<{ lastRttMs: number }> }>
    expect(peers[0].peers.every(p => p.lastRttMs <= 300)).toBe(true)
  })

  it('moves traffic off an instance whose RTT goes past the hard limit within 3 s', async () => {
    // Make sure i5 is in use first (and back at its own delay, should this test run again).
    relays.get('i5')?.setDelay(2.5)
    await eventually(async () => (await http(`${base}/hello/`)).body.toString() === 'hello from i5\n' ? true : undefined, 20_000, 'i5 serving')
    const changedAt = performance.now()
    relays.get('i5')?.setDelay(200)
    let lastServedByI5 = changedAt
    const deadline = changedAt + 6000
    while (performance.now() < deadline) {
      const answer = await http(`${base}/hello/`)
      expect(answer.status).toBe(200)
      if (answer.body.toString() === 'hello from i5\n') lastServedByI5 = performance.now()
    }
    const movedAfterMs = lastServedByI5 - changedAt
    console.log(`traffic moved off an instance past its hard RTT after ${movedAfterMs.toFixed(0)} ms`)
    expect(movedAfterMs).toBeLessThan(3000)
  })
})
