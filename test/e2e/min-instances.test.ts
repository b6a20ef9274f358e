import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startDaemon, stopAllDaemons, type Daemon } from '../helpers/daemon.js'
import { http, json } from '../helpers/http.js'
import { HELLO_SCRIPT, metricValue, startClientProxy, writeTestConfig, type TestConfig } from '../helpers/mesh.js'
import { waitFor } from '../helpers/wait-for.js'

/**
 * A record's minInstances, end to end on one process-runtime allocator: once the service runs,
 * a second instance is started with no load at all, and neither is culled however idle — while
 * a service without the floor, idle for the same time on the same allocator, is culled.
 */
describe('minInstances kept warm (process runtime)', () => {
  let config: TestConfig
  let allocator: Daemon
  let client: Daemon
  let metricsUrl: string

  beforeAll(async () => {
    const command = `"${process.execPath}" "${HELLO_SCRIPT}"`
    config = await writeTestConfig({
      warm: { command, health: '/healthz', minInstances: 2 },
      plain: { command, health: '/healthz' }
    })
    allocator = await startDaemon('hyphae-allocator', [
      '--configfile', config.file, '--runtime', 'process', '--metrics', '0',
      '--health-interval', '200', '--idle-timeout', '2', '--start-timeout', '5000'
    ])
    metricsUrl = allocator.ready.http as string
    client = await startClientProxy(config, allocator, ['--cold-start-timeout', '15000'])
  })

  afterAll(async () => {
    await stopAllDaemons()
    await config?.cleanup()
  })

  async function running (service: string): Promise<number> {
    const list = json<Array<{ service: string, state: string }>>(await http(`${metricsUrl}/instances`))
    return list.filter(i => i.service === service && i.state !== 'stopped').length
  }

  async function metric (name: string, service: string): Promise<number> {
    return metricValue((await http(`${metricsUrl}/metrics`)).body.toString(), name, { service })
  }

  it('starts a second instance without load, and culls neither while a floorless service is culled', async () => {
    const started = performance.now()
    expect((await http(`${client.ready.http as string}/warm/`)).status).toBe(200)
    await waitFor(async () => await running('warm') >= 2, 'a second instance of warm', 20_000)
    console.log(`minInstances 2: second instance running ${((performance.now() - started) / 1000).toFixed(1)} s after the first request`)
    const asked = allocator.stderr.split('\n').filter(line => line.includes('"msg":"scale-up requested"'))
    expect(asked.length).toBeGreaterThanOrEqual(1)
    expect(asked.every(line => line.includes('"reason":"min_instances"'))).toBe(true)

    // The floorless service idles from later than warm does: once it is culled, warm has
    // been idle past the timeout at least as long.
    expect((await http(`${client.ready.http as string}/plain/`)).status).toBe(200)
    await waitFor(async () => await metric('hyphae_allocator_culls_total', 'plain') >= 1, 'the idle floorless instance culled', 20_000)
    expect(await running('warm')).toBe(2)
    expect(await metric('hyphae_allocator_culls_total', 'warm')).toBe(0)
    // Exactly the floor: no third instance was asked for.
    expect(await metric('hyphae_allocator_starts_total', 'warm')).toBe(2)
  })
})
