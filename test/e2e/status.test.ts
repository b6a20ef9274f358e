import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { MeshStatus } from '../../cli/mesh-status.js'
import type { InstanceStatus, NodeStatus } from '../../shared/protocols/status.js'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { requestAllocation } from '../../shared/protocols/alloc.js'
import { binPath, runCli, startDaemon, startProcess, stopAllDaemons, type Daemon } from '../helpers/daemon.js'
import { http } from '../helpers/http.js'
import { startTestNode } from '../helpers/nodes.js'
import { bootstrapAddr, HELLO_SCRIPT, metricValue, startClientProxy, startServerProxy, writeTestConfig, type TestConfig } from '../helpers/mesh.js'
import { parseListeningLine } from '../../shared/ready.js'
import { waitFor } from '../helpers/wait-for.js'

/**
 * The operator's view on real daemons: two allocators (in-process and process sidecars), a
 * client proxy, and two standalone server proxies of one service, one of whose apps fails
 * most requests (FAILURE_RATE). `hyphae status` must show all of them with what each served,
 * and the client's outlier ejection must have moved the traffic off the failing instance.
 */
describe('hyphae status on a live mesh', () => {
  let config: TestConfig
  let allocator: Daemon
  let processAllocator: Daemon
  let client: Daemon
  let base: string
  const flaky: Record<'good' | 'bad', Daemon | undefined> = { good: undefined, bad: undefined }
  const command = `"${process.execPath}" "${HELLO_SCRIPT}"`

  const status = async (...args: string[]): Promise<{ code: number | null, stdout: string, stderr: string }> =>
    await runCli('hyphae', ['status', '--configfile', config.file, '--bootstrap', bootstrapAddr(allocator), ...args], { timeoutMs: 30_000 })
  const survey = async (): Promise<MeshStatus> => {
    const { code, stdout, stderr } = await status('--json')
    expect(code, stderr).toBe(0)
    return JSON.parse(stdout) as MeshStatus
  }
  const instancesOf = (s: MeshStatus, service: string): Array<InstanceStatus & { node: NodeStatus }> =>
    s.nodes.flatMap(node => node.instances.filter(i => i.service === service).map(i => ({ ...i, node })))

  beforeAll(async () => {
    config = await writeTestConfig({
      hello: { command, health: '/healthz' },
      other: { command, health: '/healthz' },
      flaky: { command, health: '/healthz' }
    })
    allocator = await startDaemon('hyphae-allocator', ['--configfile', config.file, '--runtime', 'process', '--metrics', '0'])
    processAllocator = await startDaemon('hyphae-allocator', ['--configfile', config.file, '--runtime', 'process', '--metrics', '0', '--sidecar', 'process', '--bootstrap', bootstrapAddr(allocator)])
    client = await startClientProxy(config, allocator, ['--metrics', '0'])
    base = client.ready.http as string
    for (const [which, rate] of [['good', '0'], ['bad', '0.8']] as const) {
      const app = await startProcess(HELLO_SCRIPT, [], { env: { PORT: '0', INSTANCE: which, FAILURE_RATE: rate }, isReady: parseListeningLine })
      flaky[which] = await startServerProxy(config, allocator, 'flaky', app.ready)
    }
  }, 120_000)

  afterAll(async () => {
    await stopAllDaemons()
    await config?.cleanup()
  })

  it('lists every node and instance with what each served; traffic left the failing instance', async () => {
    // hello: started on an allocator by the first request.
    for (let i = 0; i < 20; i++) expect((await http(`${base}/hello/`)).status).toBe(200)
    const statuses = new Map<number, number>()
    const get = async (): Promise<void> => {
      const { status } = await http(`${base}/flaky/`)
      statuses.set(status, (statuses.get(status) ?? 0) + 1)
    }
    // A walk ends 300 ms after its first provider answers, and a loaded machine can yield the
    // second later (CI saw all 200 go to the good one): it then comes with the next walk, 5 s
    // on. Until the client knows both, no request can show the failing one being left. A
    // first walk slower than the cold-start grace also has an allocator start a third
    // instance (a healthy one, as the good one).
    const standalone = [flaky.good?.ready.peerId, flaky.bad?.ready.peerId]
    await waitFor(async () => {
      const cache = JSON.parse((await http(`http://127.0.0.1:${client.ready.metrics as number}/peers`)).body.toString()) as Array<{ service: string, peers: Array<{ peer: string }> }>
      const known = new Set(cache.find(entry => entry.service === 'flaky')?.peers.map(p => p.peer))
      if (standalone.every(peer => known.has(peer as string))) return true
      await get()
      return undefined
    }, 'the client knowing both flaky instances', { timeoutMs: 15_000, everyMs: 50 })
    for (let i = 0; i < 200; i++) await get()
    const sent = [...statuses.values()].reduce((sum, n) => sum + n, 0)
    // The client proxy advertises itself in the background: wait until the survey meets it.
    const s = await waitFor(async () => {
      const answer = await survey()
      return answer.nodes.some(n => n.peerId === client.ready.peerId) ? answer : undefined
    }, 'the client proxy in the survey', { timeoutMs: 30_000, everyMs: 500 })
    console.log(`status: ${s.nodes.length} nodes in ${s.tookMs} ms; flaky from the client: ${JSON.stringify(Object.fromEntries(statuses))}; ` +
      `instances: ${JSON.stringify(instancesOf(s, 'flaky').map(i => ({ peer: i.peerId?.slice(-6), total: i.stats?.total, failed: i.stats?.failed })))}`)

    const roles = s.nodes.map(n => `${n.role}${n.mode != null ? `:${n.mode}` : ''}`).sort()
    expect(roles).toEqual(['allocator', 'allocator', 'proxy:client', 'proxy:server', 'proxy:server'])
    expect(s.unanswered).toEqual([])

    // hello: run by the allocators, its stats from the sidecars. A cold start slow to answer
    // (a loaded machine) asks a second allocator too, so there may be two instances.
    const hellos = instancesOf(s, 'hello')
    for (const hello of hellos) {
      expect(hello.node.role).toBe('allocator')
      expect(hello).toMatchObject({ state: 'healthy', relaunches: 0 })
      expect(hello.stats).toMatchObject({ failed: 0, inFlight: 0 })
    }
    expect(hellos.reduce((sum, i) => sum + (i.stats?.ok ?? 0), 0)).toBe(20)
    expect(Math.max(...hellos.map(i => i.stats?.p99Ms ?? 0))).toBeGreaterThan(0)

    // flaky: the failing instance was ejected after a few runs of failures; the healthy ones
    // (the good one, and a cold-started one if there is one) took the rest.
    const flakies = instancesOf(s, 'flaky')
    const bad = flakies.find(i => i.peerId === flaky.bad?.ready.peerId)?.stats
    const healthy = flakies.filter(i => i.peerId !== flaky.bad?.ready.peerId).map(i => i.stats)
    const sum = (stats: typeof healthy, key: 'total' | 'ok' | 'failed'): number => stats.reduce((n, st) => n + (st?.[key] ?? 0), 0)
    expect(flakies.length).toBeLessThanOrEqual(3)
    expect(sum(healthy, 'total')).toBeGreaterThan(150)
    expect(sum(healthy, 'failed')).toBe(0)
    expect(bad?.total).toBeLessThan(50)
    expect(bad?.failed).toBeGreaterThan(0)
    expect(sum(healthy, 'total') + (bad?.total ?? 0)).toBe(sent)
    // What the client saw is what the instances say they answered.
    expect(statuses.get(200)).toBe(sum(healthy, 'ok') + (bad?.ok ?? 0))
    expect(statuses.get(500)).toBe(bad?.failed)

    // The client proxy's cache: every flaky instance known.
    const clientNode = s.nodes.find(n => n.peerId === client.ready.peerId)
    expect(clientNode?.services?.find(c => c.service === 'flaky')?.peers).toHaveLength(flakies.length)
  }, 120_000)

  it('prints the same as tables, and the allocator exports each instance\'s stats to Prometheus', async () => {
    const { code, stdout } = await status()
    expect(code).toBe(0)
    expect(stdout).toMatch(/^SERVICE +INSTANCES +SUCCESS +RPS +P99 +REQUESTS$/m)
    expect(stdout).toMatch(/^hello +([12])\/\1 +100\.00% /m)
    expect(stdout).toMatch(/^flaky +([23])\/\1 /m)
    expect(stdout).toMatch(/ client proxy /)
    const scrapes = await Promise.all([allocator, processAllocator].map(async a => (await http(`http://127.0.0.1:${a.ready.metrics as number}/metrics`)).body.toString()))
    const served = scrapes.reduce((sum, text) => sum + (/^hyphae_instance_requests\{service="hello"/m.test(text) ? metricValue(text, 'hyphae_instance_requests', { service: 'hello', result: 'ok' }) : 0), 0)
    expect(served).toBe(20)
    expect(scrapes.some(text => /^hyphae_instance_age_seconds\{service="hello",instance="[^"]+"\} \d+$/m.test(text))).toBe(true)
  }, 60_000)

  it('reads a process sidecar\'s stats over its metrics port', async () => {
    // other: started by the allocator with process sidecars, asked directly.
    const node = await startTestNode()
    try {
      await node.dial(multiaddr(processAllocator.ready.multiaddrs[0]))
      const started = await requestAllocation(node, peerIdFromString(processAllocator.ready.peerId), 'other', AbortSignal.timeout(30_000))
      expect(started.ok).toBe(true)
    } finally {
      await node.stop()
    }
    for (let i = 0; i < 5; i++) expect((await http(`${base}/other/`)).status).toBe(200)
    const s = await survey()
    // The client may not have met that instance in the DHT yet and had another started.
    const others = instancesOf(s, 'other')
    expect(others.reduce((sum, i) => sum + (i.stats?.total ?? 0), 0)).toBe(5)
    const mine = others.find(i => i.node.peerId === processAllocator.ready.peerId)
    expect(mine?.stats).toMatchObject({ failed: 0, inFlight: 0 })
    expect(mine?.stats?.ok).toBe(mine?.stats?.total)
    // Its sidecar is a hyphae-proxy of its own, which answers too, but is not listed twice.
    expect(s.nodes.filter(n => n.instances.some(i => i.peerId === mine?.peerId))).toHaveLength(1)
  }, 60_000)

  it('surveys again every --watch seconds until interrupted', async () => {
    const watch = await startProcess(binPath('hyphae'), ['status', '--watch', '1', '--configfile', config.file, '--bootstrap', bootstrapAddr(allocator)], {
      timeoutMs: 30_000,
      isReady: line => line.startsWith('--- ') ? line : undefined
    })
    const surveys = (): string[] => watch.stdoutLines.filter(line => line.startsWith('--- '))
    const tables = (): string[] => watch.stdoutLines.filter(line => /^SERVICE +INSTANCES +SUCCESS/.test(line))
    // Each survey prints its tables again (what hello shows in each may differ: a cold start
    // on a loaded machine can have started a second instance meanwhile). Waited for as such:
    // a survey's '---' line can be read before the tables written after it (CI saw it once).
    await waitFor(() => tables().length >= 2, 'a second survey', 15_000)
    const [first, second] = surveys().map(line => Date.parse(line.slice(4)))
    expect(second - first).toBeGreaterThanOrEqual(1000)
    expect(watch.stdoutLines.some(line => /^hello +\d\/\d /.test(line))).toBe(true)
    expect(await watch.stop('SIGINT')).toBe(0)
  }, 60_000)

  it('says in one line what to give when there is no bootstrap', async () => {
    const { code, stderr } = await runCli('hyphae', ['status', '--configfile', config.file], { env: { P2P_BOOTSTRAPS: '' } })
    expect(code).toBe(2)
    expect(stderr.trim().split('\n')).toHaveLength(1)
    expect(stderr).toMatch(/--bootstrap/)
  })
})
