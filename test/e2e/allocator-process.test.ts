import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { HELLO_SCRIPT, descendantsOf, isAlive, metricValue, startClientProxy, writeTestConfig, type TestConfig } from '../helpers/mesh.js'
import { waitFor } from '../helpers/wait-for.js'
import { runCli, startDaemon, stopAllDaemons, type Daemon } from '../helpers/daemon.js'
import { http, json } from '../helpers/http.js'

/**
 * The allocator with the process runtime, end to end: cold start through a client proxy,
 * crash → relaunch, capacity, idle culling and a shutdown that leaves no process behind.
 */
describe('allocator (process runtime)', () => {
  let config: TestConfig
  let allocator: Daemon
  let client: Daemon
  let base: string
  let metricsUrl: string
  let keys: string
  /** A key listed in RegistryKeys: what it signs, the allocator runs. */
  let publisherKey: string

  const command = `"${process.execPath}" "${HELLO_SCRIPT}"`

  beforeAll(async () => {
    keys = await mkdtemp(join(tmpdir(), 'hyphae-keys-'))
    publisherKey = join(keys, 'publisher.key')
    const publisher = await runCli('hyphae', ['keygen', publisherKey])
    expect(publisher.code).toBe(0)
    config = await writeTestConfig({
      hello: { command, health: '/healthz' },
      held: { command, health: '/healthz' },
      third: { command, health: '/healthz' },
      broken: { command: 'exit 3', health: '/healthz' },
      sluggish: { command: `sleep 2; exec ${command}`, health: '/healthz' },
      pinned: { command, health: '/healthz', env: { INSTANCE: 'pinned-by-operator' } }
    }, undefined, [publisher.stdout.trim()])
    allocator = await startDaemon('hyphae-allocator', [
      '--configfile', config.file, '--runtime', 'process', '--metrics', '0',
      '--health-interval', '200', '--unhealthy-after', '2', '--healthy-after', '2',
      '--idle-timeout', '4', '--max-instances', '2', '--start-timeout', '5000'
    ])
    metricsUrl = allocator.ready.http as string
    client = await startClientProxy(config, allocator, ['--cold-start-timeout', '15000'])
    base = client.ready.http as string
  })

  afterAll(async () => {
    await stopAllDaemons()
    await config?.cleanup()
    if (keys != null) await rm(keys, { recursive: true, force: true })
  })

  async function metrics (): Promise<string> {
    return (await http(`${metricsUrl}/metrics`)).body.toString()
  }

  it('starts an instance on the first request and serves that request', async () => {
    const started = performance.now()
    const first = await http(`${base}/hello/`)
    const coldMs = performance.now() - started
    expect(first.status).toBe(200)
    expect(first.body.toString()).toMatch(/^hello from /)
    expect(metricValue(await metrics(), 'hyphae_allocator_starts_total', { service: 'hello' })).toBe(1)
    // Measured, not asserted against a fixed time: reported for the closing note.
    console.log(`cold start (process runtime, in-process sidecar): ${coldMs.toFixed(0)} ms`)
    expect((await http(`${base}/hello/`)).status).toBe(200)
  })

  it('holds concurrent requests for a cold service and makes one allocation', async () => {
    const answers = await Promise.all(Array.from({ length: 8 }, async () => await http(`${base}/held/`)))
    expect(answers.map(a => a.status)).toEqual(Array(8).fill(200))
    expect(metricValue(await metrics(), 'hyphae_allocator_starts_total', { service: 'held' })).toBe(1)
  })

  it('refuses beyond --max-instances with a clear 503', async () => {
    const refused = await http(`${base}/third/`)
    expect(refused.status).toBe(503)
    expect(json<{ error: { message: string } }>(refused).error.message).toMatch(/capacity|maximum/)
  })

  it('relaunches a crashed instance on the same port and serves again', async () => {
    const crash = await http(`${base}/hello/api/v1/_crash`, { method: 'POST' })
    expect(crash.status).toBe(200)
    expect((await http(`${base}/hello/`)).status).toBe(500)
    await waitFor(async () => (await http(`${base}/hello/`)).status === 200, 'the relaunched instance serving', 20_000)
    expect(metricValue(await metrics(), 'hyphae_allocator_relaunches_total', { service: 'hello' })).toBeGreaterThanOrEqual(1)
  })

  it('culls instances idle longer than --idle-timeout (scale to zero)', async () => {
    await waitFor(async () => {
      const list = json<unknown[]>(await http(`${metricsUrl}/instances`))
      return list.length === 0 ? true : undefined
    }, 'every instance culled', 20_000)
    expect(metricValue(await metrics(), 'hyphae_allocator_culls_total', { service: 'hello' })).toBe(1)
    // The next request starts a fresh instance.
    expect((await http(`${base}/hello/`)).status).toBe(200)
    expect(metricValue(await metrics(), 'hyphae_allocator_starts_total', { service: 'hello' })).toBe(2)
  })

  it('serves a service published with `hyphae registry put` (signed record in the DHT)', async () => {
    const put = await runCli('hyphae', ['registry', 'put', 'published', '--command', command, '--health', '/healthz', '--key', publisherKey, '--configfile', config.file, '--bootstrap', allocator.ready.multiaddrs[0]])
    expect(put.code).toBe(0)
    expect(put.stdout).toMatch(/^stored \/hyphae\/svc\/published seq=\d+ signer=12D3/)
    expect(put.stderr).toMatch(/1 of the 1 allocators seen run records signed by 12D3/)
    const answer = await http(`${base}/published/`)
    expect(answer.status).toBe(200)
    expect(answer.body.toString()).toMatch(/^hello from /)
    // Room again under --max-instances for the tests below.
    await waitFor(async () => json<unknown[]>(await http(`${metricsUrl}/instances`)).length === 0, 'every instance culled again', 20_000)
  })

  it('keeps a static record even when a trusted key publishes another under its name', async () => {
    const put = await runCli('hyphae', ['registry', 'put', 'pinned', '--command', 'exit 7', '--health', '/healthz', '--key', publisherKey, '--configfile', config.file, '--bootstrap', allocator.ready.multiaddrs[0]])
    expect(put.code).toBe(0)
    const answer = await http(`${base}/pinned/`)
    expect(answer.status).toBe(200)
    expect(answer.body.toString()).toMatch(/pinned-by-operator/)
    await waitFor(async () => json<unknown[]>(await http(`${metricsUrl}/instances`)).length === 0, 'pinned culled', 20_000)
  })

  it('answers a coded error fast for an app that cannot start, leaving nothing behind', async () => {
    const before = await descendantsOf(allocator.pid)
    const answer = await http(`${base}/broken/`)
    expect(answer.status).toBe(503)
    expect(json<{ error: { message: string } }>(answer).error.message).toMatch(/start_failed/)
    const after = await descendantsOf(allocator.pid)
    expect(after.filter(pid => !before.includes(pid) && isAlive(pid))).toEqual([])
  })

  it('releases held requests with a 504 when the cold start passes its deadline', async () => {
    const impatient = await startClientProxy(config, allocator, ['--cold-start-timeout', '500'])
    const answers = await Promise.all([1, 2, 3].map(async () => await http(`${impatient.ready.http as string}/sluggish/`)))
    for (const answer of answers) {
      expect(answer.status).toBe(504)
      expect(json<{ error: { message: string } }>(answer).error.message).toMatch(/within 500 ms/)
    }
    await impatient.stop()
  })

  it('stops every instance it started on SIGTERM (checked by PID)', async () => {
    const children = await descendantsOf(allocator.pid)
    expect(children.length).toBeGreaterThan(0)
    expect(await allocator.stop('SIGTERM')).toBe(0)
    await waitFor(() => children.every(pid => !isAlive(pid)), 'all instance processes gone', 10_000)
  })
})
