import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startDaemon, stopAllDaemons, type Daemon } from '../helpers/daemon.js'
import { http, json, startLoad } from '../helpers/http.js'
import { eventually, HELLO_SCRIPT, startClientProxy, startHelloApp, startServerProxy, writeTestConfig, type App, type TestConfig } from '../helpers/mesh.js'

/** Faults under a bounded load, on real daemons: the mesh routes around them. */
describe('faults under load', () => {
  let config: TestConfig
  let allocator: Daemon
  let client: Daemon
  let app: App
  let hung: Daemon

  beforeAll(async () => {
    config = await writeTestConfig({ hello: { command: `"${process.execPath}" "${HELLO_SCRIPT}"`, health: '/healthz' } })
    allocator = await startDaemon('hyphae-allocator', ['--configfile', config.file, '--runtime', 'process', '--metrics', '0'])
    app = await startHelloApp('standalone')
    hung = await startServerProxy(config, allocator, 'hello', app.port)
    client = await startClientProxy(config, allocator, ['--cold-start-timeout', '15000'])
  })

  afterAll(async () => {
    if (hung != null) process.kill(hung.pid, 'SIGCONT')
    await stopAllDaemons()
    await app?.stop()
    await config?.cleanup()
  })

  it('a server proxy stopped (SIGSTOP) for 10 s costs seconds, not the 10 s: requests fail over and a replacement starts', async () => {
    const base = client.ready.http as string
    // The client proxy knows the standalone instance and sends to it.
    await eventually(async () => (await http(`${base}/hello/`)).body.toString() === 'hello from standalone\n' ? true : undefined, 15_000, 'the standalone instance serving')
    const load = startLoad(`${base}/hello/`, { concurrency: 4, total: 100_000 })
    const stoppedAt = Date.now()
    process.kill(hung.pid, 'SIGSTOP')
    // An allocator-started instance takes over while the first is frozen.
    const servedByReplacement = await eventually<number>(() => {
      for (const body of load.result.bodies.keys()) if (body !== 'hello from standalone\n') return Date.now() - stoppedAt
      return undefined
    }, 9_500, 'a replacement instance answering')
    await eventually(() => Date.now() - stoppedAt >= 10_000 ? true : undefined, 11_000, 'ten seconds frozen')
    process.kill(hung.pid, 'SIGCONT')
    load.stop()
    const result = await load.done
    const failed = [...result.statuses].filter(([status]) => status !== 200).reduce((n, [, count]) => n + count, 0) + result.errors.length
    console.log(`SIGSTOP 10 s: first answer from the replacement after ${servedByReplacement} ms; ${result.sent} requests, ${failed} failed (${JSON.stringify(Object.fromEntries(result.statuses))}, errors ${JSON.stringify(result.errors)})`)
    // Pings find it gone within ~3 s; the walk waits 1 s before a cold start is asked for too.
    expect(servedByReplacement).toBeLessThan(8_000)
    expect(failed).toBe(0)
    const instances = json<Array<{ service: string, state: string }>>(await http(`${allocator.ready.http as string}/instances`))
    expect(instances.filter(i => i.service === 'hello' && i.state === 'healthy')).toHaveLength(1)
  }, 60_000)
})
