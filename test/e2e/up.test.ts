import { existsSync, realpathSync } from 'node:fs'
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { createServer } from 'node:net'
import { delimiter, join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { binPath, runCli, startProcess, stopAllDaemons } from '../helpers/daemon.js'
import { http } from '../helpers/http.js'
import { descendantsOf, freePort, isAlive } from '../helpers/mesh.js'
import { waitFor } from '../helpers/wait-for.js'

let npxCacheDir: string | undefined
async function npxCache (): Promise<string> {
  npxCacheDir ??= await mkdtemp(join(tmpdir(), 'hyphae-npx-cache-'))
  return npxCacheDir
}

/** npm's npx script (`npx` on the PATH, links followed), to run with this node. */
function npxScript (): string {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir !== '' && existsSync(join(dir, 'npx'))) return realpathSync(join(dir, 'npx'))
  }
  throw new Error('no npx on the PATH')
}

/** A process that still runs: exists and is not a zombie waiting to be reaped. */
async function running (pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z'
  } catch {
    return false
  }
}

/** Running processes whose command line or environment contains one of `marks`. */
async function processesMarked (marks: string[]): Promise<number[]> {
  const found: number[] = []
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue
    const text = await Promise.all(['cmdline', 'environ'].map(async file => await readFile(`/proc/${entry}/${file}`, 'utf8').catch(() => '')))
    if (marks.some(mark => text.some(t => t.includes(mark))) && await running(Number(entry))) found.push(Number(entry))
  }
  return found
}

describe('hyphae up', () => {
  afterAll(async () => {
    await stopAllDaemons()
    if (npxCacheDir != null) await rm(npxCacheDir, { recursive: true, force: true })
  })

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
    await waitFor(() => processes.every(pid => !isAlive(pid)), 'every process of the mesh gone', 10_000)
  })

  it('runs the toy store with --example toystore: the printed lines query, order and look the order up', async () => {
    const port = await freePort()
    const up = await startProcess(binPath('hyphae'), ['up', '--port', String(port), '--example', 'toystore'], {
      timeoutMs: 30_000,
      isReady: line => /^\s+curl (\S+)/.exec(line)?.[1]
    })
    const store = `http://127.0.0.1:${port}/frontend`
    expect(up.ready).toBe(`${store}/products/robot`)
    const printed = await up.waitForStdout(/^\s+curl -X POST/)
    expect(printed).toContain(`${store}/orders`)
    expect((await http(up.ready)).status).toBe(200)
    const order = await http(`${store}/orders`, { method: 'POST', body: '{"name":"kite","quantity":2}', headers: { 'content-type': 'application/json' } })
    expect(order.status, order.body.toString()).toBe(201)
    const { order_number: number } = (JSON.parse(order.body.toString()) as { data: { order_number: number } }).data
    const looked = await http(`${store}/orders/${number}`)
    expect(JSON.parse(looked.body.toString())).toMatchObject({ data: { order_number: number, name: 'kite', quantity: 2, price: 12 } })
    // The printed status line shows the three tiers the order went through.
    const statusLine = await up.waitForStdout(/^\s+hyphae status /)
    const status = await runCli('hyphae', statusLine.trim().split(/\s+/).slice(1), { timeoutMs: 30_000 })
    expect(status.code, status.stderr).toBe(0)
    for (const service of ['frontend', 'catalog', 'order']) expect(status.stdout).toMatch(new RegExp(`^${service} +1/1 +100\\.00% `, 'm'))
    expect(await up.stop('SIGINT')).toBe(0)
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
    // Killed, it cannot remove its temporary dir (the key's path names it): the test does.
    const dir = /--key (\/\S+)\/publisher\.key/.exec(await up.waitForStdout(/--key /))?.[1]
    try {
      await up.stop('SIGKILL')
      await waitFor(() => processes.every(pid => !isAlive(pid)), 'every process of the mesh gone', 15_000)
    } finally {
      for (const pid of processes.filter(isAlive)) process.kill(pid, 'SIGKILL')
      if (dir?.startsWith(join(tmpdir(), 'hyphae-up-')) === true) await rm(dir, { recursive: true, force: true })
    }
  })

  it('refuses a bad flag with one line and exit 2', async () => {
    const result = await runCli('hyphae', ['up', '--port', 'abc'])
    expect(result.code).toBe(2)
    expect(result.stderr.trim().split('\n')).toHaveLength(1)
    expect(result.stderr).toMatch(/--port/)
  })

  it('says in one line, exit 2, that --runtime docker has no engine to talk to', async () => {
    const result = await runCli('hyphae', ['up', '--runtime', 'docker', '--port', '0'], {
      env: { DOCKER_HOST: 'unix:///nonexistent/hyphae-test/docker.sock' }
    })
    expect(result.code).toBe(2)
    const lines = result.stderr.trim().split('\n')
    expect(lines).toHaveLength(1)
    expect(lines[0]).toMatch(/^hyphae up: --runtime docker: no Docker engine answers \(.*docker\.sock.*\); start dockerd or use --runtime process$/i)
    expect(result.stdout).toBe('')
  })

  it('says in one line, exit 2, that its --port is in use', async () => {
    const blocker = createServer()
    await new Promise<void>(resolve => blocker.listen(0, '127.0.0.1', resolve))
    const port = (blocker.address() as { port: number }).port
    try {
      const result = await runCli('hyphae', ['up', '--port', String(port)])
      expect(result.code).toBe(2)
      expect(result.stderr.trim().split('\n')).toEqual([`hyphae up: 127.0.0.1:${port} is in use: choose another --port (0 picks a free one)`])
      expect(result.stdout).toBe('')
    } finally {
      await new Promise<void>(resolve => { blocker.close(() => { resolve() }) })
    }
  })

  // npx runs `hyphae up` as npm → `sh -c 'hyphae' up …` → node, and npm hands a signal to that
  // shell only. Each way npx goes away must take the whole mesh with it.
  const npxCases: Array<[string, (npxPid: number) => void]> = [
    ['SIGTERM to npx alone (a supervisor stopping it)', pid => { process.kill(pid, 'SIGTERM') }],
    ['SIGKILL to npx alone', pid => { process.kill(pid, 'SIGKILL') }],
    ['SIGINT to its process group (Ctrl-C in a terminal)', pid => { process.kill(-pid, 'SIGINT') }]
  ]

  it.each(npxCases)('run through npx, leaves nothing behind on %s', async (_how, signal) => {
    const port = await freePort()
    // startProcess puts npx in a process group of its own, as a terminal would.
    const npx = await startProcess(npxScript(), ['hyphae', 'up', '--port', String(port)], {
      // A cache of its own: npx keeps its install of a local package by the package's path,
      // with the bin links of the package.json it saw then; a clone at a reused path (or a
      // moved bin) would run a stale link ("hyphae: not found").
      env: { npm_config_cache: await npxCache() },
      timeoutMs: 60_000,
      isReady: line => /^\s+curl (\S+)/.exec(line)?.[1]
    })
    let processes: number[] = []
    try {
      // The first request starts an app instance: it must go too.
      expect((await http(npx.ready)).status).toBe(200)
      processes = await descendantsOf(npx.pid)
      const commands = await Promise.all(processes.map(async pid => (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).replaceAll('\0', ' ')))
      const allocator = commands.find(command => command.includes('allocator/main.js'))
      const configDir = /--configfile (\S+)\/conf\.json/.exec(allocator ?? '')?.[1]
      const allocatorPeer = /^\s+allocator\s+(\S+)/.exec(npx.stdoutLines.find(line => /^\s+allocator\s/.test(line)) ?? '')?.[1]
      expect(configDir).toMatch(/hyphae-up-/)
      // Its state in the temp dir (removed with it below), not in the per-user default.
      expect(allocator).toContain(`--data-dir ${configDir as string}/allocator`)
      expect(allocatorPeer).toMatch(/^12D3/)
      expect(commands.some(command => command.includes('proxy/main.js'))).toBe(true)
      expect(commands.some(command => command.includes('hello/server.js'))).toBe(true)
      // Everything the mesh runs carries the config dir on its command line or the
      // allocator's mark in its environment (app instances).
      const marks = [configDir as string, `HYPHAE_ALLOCATOR=${allocatorPeer as string}`]
      expect((await processesMarked(marks)).length).toBeGreaterThanOrEqual(3)

      signal(npx.pid)
      await waitFor(() => npx.proc.exitCode !== null || npx.proc.signalCode !== null, 'npx exited', 10_000)
      const left = async (): Promise<number[]> => [...new Set([
        ...(await Promise.all(processes.map(async pid => await running(pid) ? pid : undefined))).filter(pid => pid != null),
        ...await processesMarked(marks)
      ])]
      await waitFor(async () => (await left()).length === 0, 'every process of the mesh gone', 15_000)
      // Stopped by `hyphae up` itself, not only by the daemons noticing their parent died.
      expect(existsSync(configDir as string)).toBe(false)
    } finally {
      await npx.stop('SIGKILL')
      for (const pid of processes.filter(isAlive)) {
        try { process.kill(pid, 'SIGKILL') } catch { /* gone meanwhile */ }
      }
    }
  })
})
