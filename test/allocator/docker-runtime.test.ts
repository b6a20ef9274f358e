import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { networkInterfaces } from 'node:os'
import Docker from 'dockerode'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { DEFAULT_PIDS_LIMIT, DockerRuntime, LABEL_ALLOCATOR, LABEL_INSTANCE, LABEL_SERVICE } from '../../allocator/docker-runtime.js'
import { AllocationError } from '../../shared/protocols/alloc-errors.js'
import { freeLocalPort, type InstanceSpec, type RuntimeInstance } from '../../allocator/runtime.js'
import { InstanceSupervisor, type SupervisorEvent } from '../../allocator/supervisor.js'
import { parseRecord, type ServiceRecordInput } from '../../shared/registry/record.js'
import { dockerAvailable, ensureTestImage } from '../helpers/docker-image.js'
import { waitFor } from '../helpers/wait-for.js'
import { FakeSidecar } from './fake-sidecar.js'
import { httpCall, statusOf, testLogger } from './util.js'

/**
 * Capabilities, no_new_privs and uid of a container's main process, from /proc on this host;
 * undefined when the engine's processes are not visible here (another PID namespace).
 */
function processSecurity (pid: number): { capEff: string, noNewPrivs: string, uid: number } | undefined {
  let status: string
  try {
    if (!readFileSync(`/proc/${pid}/cmdline`, 'latin1').includes('/app/server.js')) return undefined
    status = readFileSync(`/proc/${pid}/status`, 'utf8')
  } catch {
    return undefined
  }
  const field = (name: string): string => new RegExp(`^${name}:\\s+(\\S+)`, 'm').exec(status)?.[1] ?? ''
  return { capEff: field('CapEff'), noNewPrivs: field('NoNewPrivs'), uid: Number(field('Uid')) }
}

const engine = await dockerAvailable()
const underCi = process.env.CI === 'true'
// Under CI a missing engine must fail the run, never skip it quietly.
const skip = !engine.ok && !underCi

describe.skipIf(skip)(`docker runtime${skip ? ` (skipped: ${engine.reason ?? 'no engine'}; CI=true makes this a failure)` : ''}`, () => {
  const docker = new Docker()
  // Unique per run, so parallel or earlier runs cannot confuse the label queries.
  const allocatorId = `test-alloc-${randomBytes(4).toString('hex')}`
  const runtime = new DockerRuntime({ log: testLogger(), docker, defaultGraceMs: 2000 })
  let image: string

  const specFor = async (extra: Partial<ServiceRecordInput> = {}): Promise<InstanceSpec> => ({
    instanceId: `t-${randomBytes(4).toString('hex')}`,
    record: parseRecord({ name: 'hello', image, port: 8080, health: '/healthz', ...extra }),
    hostPort: await freeLocalPort(),
    allocatorPeerId: allocatorId
  })

  beforeAll(async () => {
    if (!engine.ok) throw new Error(`CI=true but ${engine.reason ?? 'no Docker Engine answers'}`)
    const t0 = performance.now()
    image = await ensureTestImage()
    console.info(`docker test image ready in ${Math.round(performance.now() - t0)} ms`)
  }, 180_000)

  afterAll(async () => {
    if (!engine.ok) return
    // Whatever a failed test left behind.
    for (const label of [allocatorId, `${allocatorId}-orphans`, `${allocatorId}-other`]) {
      const left = await docker.listContainers({ all: true, filters: { label: [`${LABEL_ALLOCATOR}=${label}`] } })
      await Promise.all(left.map(async c => { await docker.getContainer(c.Id).remove({ force: true }).catch(() => {}) }))
    }
  })

  it('runs the image with limits and labels, published on 127.0.0.1 only, and removes it on stop', async () => {
    expect(runtime.kind).toBe('docker')
    expect(await runtime.available()).toBe(true)
    const spec = await specFor({ memoryMb: 64, cpu: 0.5, env: { INSTANCE: 'docker-1' } })
    const t0 = performance.now()
    const instance = await runtime.start(spec)
    try {
      await waitFor(async () => await statusOf(spec.hostPort, '/healthz') === 200, 'the container to answer /healthz', 20_000)
      console.info(`docker runtime: start() to healthy in ${Math.round(performance.now() - t0)} ms`)
      expect(instance.app).toEqual({ host: '127.0.0.1', port: spec.hostPort })
      expect((await httpCall(spec.hostPort, '/')).body).toBe('hello from docker-1\n')

      const info = await docker.getContainer(instance.id).inspect()
      expect(info.Config.Labels).toMatchObject({ [LABEL_ALLOCATOR]: allocatorId, [LABEL_SERVICE]: 'hello', [LABEL_INSTANCE]: spec.instanceId })
      expect(info.Config.Env).toContain('PORT=8080')
      expect(info.HostConfig.Memory).toBe(64 * 1024 * 1024)
      // No swap on top of the memory limit.
      expect(info.HostConfig.MemorySwap).toBe(64 * 1024 * 1024)
      expect(info.HostConfig.NanoCpus).toBe(500_000_000)
      // Hardened whatever the image says.
      expect(info.HostConfig.SecurityOpt).toContain('no-new-privileges')
      expect(info.HostConfig.CapDrop).toEqual(['ALL'])
      expect(info.HostConfig.PidsLimit).toBe(DEFAULT_PIDS_LIMIT)
      expect(info.Config.User).toBe('')
      // And the kernel agrees, when the engine's processes are visible from here.
      const security = processSecurity(info.State.Pid)
      if (security !== undefined) expect(security).toMatchObject({ capEff: '0000000000000000', noNewPrivs: '1' })
      expect(info.HostConfig.PortBindings).toEqual({ '8080/tcp': [{ HostIp: '127.0.0.1', HostPort: String(spec.hostPort) }] })
      const published = Object.values(info.NetworkSettings.Ports ?? {}).flat().filter(b => b != null)
      expect(published.length).toBeGreaterThan(0)
      for (const binding of published) expect(binding.HostIp).toBe('127.0.0.1')
      await waitFor(() => instance.recentOutput().includes('listening 8080'), 'the container log to be followed')

      // Not reachable on the host's other addresses.
      const external = Object.values(networkInterfaces()).flat().find(a => a != null && a.family === 'IPv4' && !a.internal)
      if (external != null) {
        await expect(httpCall(spec.hostPort, '/healthz', 'GET', external.address, 1000)).rejects.toThrow()
      }
    } finally {
      await runtime.stop(instance, { graceMs: 1000 })
    }
    await expect(docker.getContainer(instance.id).inspect()).rejects.toMatchObject({ statusCode: 404 })
    const exit = await instance.exited
    expect(exit.code === null || typeof exit.code === 'number').toBe(true)
    await runtime.stop(instance) // idempotent
  })

  it('applies the pids limit and user it is given, and the app still serves', async () => {
    const limited = new DockerRuntime({ log: testLogger(), docker, defaultGraceMs: 2000, pidsLimit: 32, user: '65534:65534' })
    const spec = await specFor()
    const instance = await limited.start(spec)
    try {
      await waitFor(async () => await statusOf(spec.hostPort, '/healthz') === 200, 'the container to answer /healthz', 20_000)
      const info = await docker.getContainer(instance.id).inspect()
      expect(info.HostConfig.PidsLimit).toBe(32)
      expect(info.Config.User).toBe('65534:65534')
      expect(info.HostConfig.CapDrop).toEqual(['ALL'])
      expect(info.HostConfig.SecurityOpt).toContain('no-new-privileges')
      // Without limits in the record, none are set (and no swap limit without a memory limit).
      expect(info.HostConfig.Memory).toBe(0)
      expect(info.HostConfig.NanoCpus).toBe(0)
      const security = processSecurity(info.State.Pid)
      if (security !== undefined) expect(security.uid).toBe(65534)
    } finally {
      await limited.stop(instance, { graceMs: 1000 })
    }
    await expect(docker.getContainer(instance.id).inspect()).rejects.toMatchObject({ statusCode: 404 })
  })

  it('reports a container that ended on its own', async () => {
    const spec = await specFor()
    const instance: RuntimeInstance = await runtime.start(spec)
    try {
      await waitFor(async () => await statusOf(spec.hostPort, '/healthz') === 200, 'the container to answer', 20_000)
      await docker.getContainer(instance.id).kill()
      const exit = await instance.exited
      expect(exit.code).toBe(137)
      expect(exit.reason).toMatch(/exited with code 137/)
    } finally {
      await runtime.stop(instance)
    }
    await expect(docker.getContainer(instance.id).inspect()).rejects.toMatchObject({ statusCode: 404 })
  })

  it('removes the containers an earlier run of the same allocator left, and no others', async () => {
    const orphanOwner = `${allocatorId}-orphans`
    const labels = (owner: string): Record<string, string> => ({ [LABEL_ALLOCATOR]: owner, [LABEL_SERVICE]: 'hello', [LABEL_INSTANCE]: randomBytes(4).toString('hex') })
    const running = await docker.createContainer({ Image: image, Labels: labels(orphanOwner), Env: ['PORT=8080'] })
    await running.start()
    const created = await docker.createContainer({ Image: image, Labels: labels(orphanOwner) })
    const other = await docker.createContainer({ Image: image, Labels: labels(`${allocatorId}-other`) })
    try {
      expect(await runtime.removeOrphans(orphanOwner)).toBe(2)
      await expect(running.inspect()).rejects.toMatchObject({ statusCode: 404 })
      await expect(created.inspect()).rejects.toMatchObject({ statusCode: 404 })
      expect((await other.inspect()).Id).toBe(other.id)
      expect(await runtime.removeOrphans(orphanOwner)).toBe(0)
    } finally {
      await other.remove({ force: true })
    }
  })

  it('fails clearly when the image is neither local nor pullable', async () => {
    const spec = await specFor({ image: `hyphae-test/missing-${randomBytes(3).toString('hex')}:1` })
    const err = await runtime.start(spec).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(AllocationError)
    expect((err as AllocationError).code).toBe('image_unavailable')
    expect((err as Error).message).toMatch(/cannot pull image 'hyphae-test\/missing-/)
    const left = await docker.listContainers({ all: true, filters: { label: [`${LABEL_INSTANCE}=${spec.instanceId}`] } })
    expect(left).toEqual([])
  })

  it('fails when the host port is taken, and leaves no container behind', async () => {
    const spec = await specFor()
    const first = await runtime.start(spec)
    try {
      const second = { ...(await specFor()), hostPort: spec.hostPort }
      const err = await runtime.start(second).catch((e: unknown) => e)
      expect(err).toBeInstanceOf(AllocationError)
      expect((err as AllocationError).code).toBe('start_failed')
      const left = await docker.listContainers({ all: true, filters: { label: [`${LABEL_INSTANCE}=${second.instanceId}`] } })
      expect(left).toEqual([])
    } finally {
      await runtime.stop(first)
    }
  })

  it('supervises a container: healthy start, relaunch on the same port after a crash, removal on stop', async () => {
    const spec = await specFor()
    const events: SupervisorEvent[] = []
    const sidecars: FakeSidecar[] = []
    const supervisor = new InstanceSupervisor({
      runtime,
      spec,
      log: testLogger(),
      healthIntervalMs: 100,
      stopGraceMs: 1000,
      startSidecar: async () => {
        const sidecar = new FakeSidecar(true, sidecars.length + 1)
        sidecars.push(sidecar)
        return sidecar
      },
      onEvent: event => { events.push(event) }
    })
    try {
      const t0 = performance.now()
      await supervisor.start()
      console.info(`supervisor (docker runtime): start() to healthy and sidecar ready in ${Math.round(performance.now() - t0)} ms`)
      const first = await docker.listContainers({ filters: { label: [`${LABEL_INSTANCE}=${spec.instanceId}`] } })
      expect(first.length).toBe(1)

      expect((await httpCall(spec.hostPort, '/api/v1/_crash', 'POST')).status).toBe(200)
      const t1 = performance.now()
      await waitFor(() => supervisor.relaunches === 1 && supervisor.state === 'healthy', 'the relaunched container to be healthy', 20_000)
      console.info(`supervisor (docker runtime): crash to healthy again in ${Math.round(performance.now() - t1)} ms`)
      expect(events).toEqual(['started', 'unhealthy', 'relaunched', 'healthy'])
      const second = await docker.listContainers({ all: true, filters: { label: [`${LABEL_INSTANCE}=${spec.instanceId}`] } })
      expect(second.map(c => c.Id)).not.toContain(first[0].Id)
      expect(second.length).toBe(1)
      expect(await statusOf(spec.hostPort, '/healthz')).toBe(200)
    } finally {
      await supervisor.stop()
    }
    expect(sidecars[0].stopped).toBe(true)
    expect(await docker.listContainers({ all: true, filters: { label: [`${LABEL_INSTANCE}=${spec.instanceId}`] } })).toEqual([])
  })
})
