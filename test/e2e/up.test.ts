import { afterAll, describe, expect, it } from 'vitest'
import { binPath, startProcess, stopAllDaemons } from '../helpers/daemon.js'
import { http } from '../helpers/http.js'
import { descendantsOf, eventually, freePort, isAlive } from '../helpers/mesh.js'

describe('hyphae up', () => {
  afterAll(async () => { await stopAllDaemons() })

  it('runs a local mesh that serves the example service, and stops it all on SIGINT', async () => {
    const port = await freePort()
    const up = await startProcess(binPath('hyphae'), ['up', '--port', String(port)], {
      timeoutMs: 30_000,
      isReady: line => /^\s+curl (\S+)/.exec(line)?.[1]
    })
    expect(up.ready).toBe(`http://127.0.0.1:${port}/hello/`)
    const answer = await http(up.ready)
    expect(answer.status).toBe(200)
    expect(answer.body.toString()).toMatch(/^hello from /)
    const processes = await descendantsOf(up.pid)
    expect(processes.length).toBeGreaterThanOrEqual(3)
    expect(await up.stop('SIGINT')).toBe(0)
    await eventually(() => processes.every(pid => !isAlive(pid)) ? true : undefined, 10_000, 'every process of the mesh gone')
  })

  it('leaves nothing running when it is SIGKILLed', async () => {
    const port = await freePort()
    const up = await startProcess(binPath('hyphae'), ['up', '--port', String(port)], {
      timeoutMs: 30_000,
      isReady: line => /^\s+curl (\S+)/.exec(line)?.[1]
    })
    expect((await http(up.ready)).status).toBe(200)
    // Allocator, client proxy and the instance it started.
    const processes = await descendantsOf(up.pid)
    expect(processes.length).toBeGreaterThanOrEqual(3)
    try {
      await up.stop('SIGKILL')
      await eventually(() => processes.every(pid => !isAlive(pid)) ? true : undefined, 15_000, 'every process of the mesh gone')
    } finally {
      for (const pid of processes.filter(isAlive)) process.kill(pid, 'SIGKILL')
    }
  })

  it('refuses a bad flag with one line and exit 2', async () => {
    const { runCli } = await import('../helpers/daemon.js')
    const result = await runCli('hyphae', ['up', '--port', 'abc'])
    expect(result.code).toBe(2)
    expect(result.stderr.trim().split('\n')).toHaveLength(1)
    expect(result.stderr).toMatch(/--port/)
  })
})
