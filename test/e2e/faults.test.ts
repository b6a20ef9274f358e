import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startDaemon, stopAllDaemons, type Daemon } from '../helpers/daemon.js'
import { http, json, startLoad } from '../helpers/http.js'
import { descendantsOf, freePort, HELLO_SCRIPT, isAlive, startClientProxy, startHelloApp, startServerProxy, writeTestConfig, type App, type TestConfig } from '../helpers/mesh.js'
import { waitFor } from '../helpers/wait-for.js'

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
    await waitFor(async () => (await http(`${base}/hello/`)).body.toString() === 'hello from standalone\n', 'the standalone instance serving', 15_000)
    const load = startLoad(`${base}/hello/`, { concurrency: 4, total: 100_000 })
    const stoppedAt = Date.now()
    process.kill(hung.pid, 'SIGSTOP')
    // An allocator-started instance takes over while the first is frozen.
    const servedByReplacement = await waitFor<number>(() => {
      for (const body of load.result.bodies.keys()) if (body !== 'hello from standalone\n') return Date.now() - stoppedAt
      return undefined
    }, 'a replacement instance answering', 9_500)
    // The fault lasts 10 s (a fixed span, not a condition), with the load running throughout.
    await delay(Math.max(0, stoppedAt + 10_000 - Date.now()))
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

describe('an allocator SIGKILLed during a cold start', () => {
  let config: TestConfig
  let dataDir: string

  beforeAll(async () => {
    config = await writeTestConfig({
      // Never healthy: the allocator is still waiting for it whenever the test kills it.
      stuck: { command: 'exec sleep 60', health: '/healthz' },
      hello: { command: `"${process.execPath}" "${HELLO_SCRIPT}"`, health: '/healthz' }
    })
    dataDir = await mkdtemp(join(tmpdir(), 'hyphae-fault-data-'))
  })

  afterAll(async () => {
    await stopAllDaemons()
    await config?.cleanup()
    if (dataDir != null) await rm(dataDir, { recursive: true, force: true })
  })

  it('fails the waiting request fast, and the restarted allocator removes what the dead one left, then serves', async () => {
    const port = await freePort()
    const args = ['--configfile', config.file, '--runtime', 'process', '--metrics', '0', '--data-dir', dataDir, '--listen', `/ip4/127.0.0.1/tcp/${port}`]
    const first = await startDaemon('hyphae-allocator', args)
    const client = await startClientProxy(config, first, ['--cold-start-timeout', '20000'])
    const base = client.ready.http as string
    const started = Date.now()
    const waiting = http(`${base}/stuck/`)
    // The app is being started (waiting for its health): now the allocator dies.
    const apps = await waitFor(async () => { const pids = await descendantsOf(first.pid); return pids.length > 0 ? pids : undefined }, 'the app being started', 10_000)
    expect(await first.stop('SIGKILL')).toBeNull()
    const answer = await waiting
    const waited = Date.now() - started
    console.log(`allocator SIGKILLed during a cold start: the request got ${answer.status} after ${waited} ms`)
    expect([502, 503]).toContain(answer.status)
    expect(waited).toBeLessThan(10_000)
    // Left running by the dead allocator, until the same allocator (same data dir: same key) is back.
    const second = await startDaemon('hyphae-allocator', args)
    expect(second.ready.peerId).toBe(first.ready.peerId)
    await waitFor(() => apps.every(pid => !isAlive(pid)), 'the orphaned app removed', 10_000)
    const again = await waitFor(async () => { const r = await http(`${base}/hello/`); return r.status === 200 ? r : undefined }, 'served by the restarted allocator', 30_000)
    expect(again.body.toString()).toMatch(/^hello from /)
  }, 90_000)
})
