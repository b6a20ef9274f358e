import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startDaemon, stopAllDaemons, type Daemon } from '../helpers/daemon.js'
import { http } from '../helpers/http.js'
import { HELLO_SCRIPT, descendantsOf, isAlive, startClientProxy, writeTestConfig, type TestConfig } from '../helpers/mesh.js'
import { waitFor } from '../helpers/wait-for.js'

/**
 * `--sidecar process`: each instance's server proxy is a `hyphae-proxy` process of its own.
 * It serves like the in-process one, and does not outlive an allocator that is SIGKILLed; the
 * app (a process group of its own, which nothing can tie to the allocator's life) is removed
 * when that allocator starts again.
 */
describe('allocator with process sidecars', () => {
  let config: TestConfig
  let allocator: Daemon
  let client: Daemon
  const allocatorArgs = (): string[] => [
    '--configfile', config.file, '--runtime', 'process', '--metrics', '0', '--sidecar', 'process',
    '--key', join(config.dir, 'allocator.key'), '--health-interval', '200', '--start-timeout', '10000'
  ]

  beforeAll(async () => {
    config = await writeTestConfig({ hello: { command: `"${process.execPath}" "${HELLO_SCRIPT}"`, health: '/healthz' } })
    allocator = await startDaemon('hyphae-allocator', allocatorArgs())
    client = await startClientProxy(config, allocator, ['--cold-start-timeout', '20000'])
  })

  afterAll(async () => {
    await stopAllDaemons()
    await config?.cleanup()
  })

  it('cold-starts an instance behind its own proxy process; after a SIGKILL the sidecar stops and a restart removes the app', async () => {
    const answer = await http(`${client.ready.http as string}/hello/`)
    expect(answer.status).toBe(200)
    expect(answer.body.toString()).toMatch(/^hello from /)
    const children = await descendantsOf(allocator.pid)
    const sidecars: number[] = []
    for (const pid of children) {
      const cmdline = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0')
      if (cmdline.some(arg => arg.endsWith('proxy/main.js'))) sidecars.push(pid)
    }
    expect(sidecars).toHaveLength(1)
    const apps = children.filter(pid => !sidecars.includes(pid))
    expect(apps.length).toBeGreaterThanOrEqual(1)
    try {
      const peerId = allocator.ready.peerId
      await allocator.stop('SIGKILL')
      await waitFor(() => sidecars.every(pid => !isAlive(pid)), 'the sidecar gone after its allocator', 15_000)
      expect(apps.some(isAlive)).toBe(true)
      allocator = await startDaemon('hyphae-allocator', allocatorArgs())
      expect(allocator.ready.peerId).toBe(peerId)
      await waitFor(() => apps.every(pid => !isAlive(pid)), 'the orphaned app removed by the next run', 15_000)
    } finally {
      for (const pid of [...sidecars, ...apps].filter(isAlive)) process.kill(pid, 'SIGKILL')
    }
  })
})
