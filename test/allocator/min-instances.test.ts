import { pino } from 'pino'
import { describe, expect, it } from 'vitest'
import { MinInstancesGuard } from '../../allocator/min-instances.js'
import { parseRecord, type ServiceRecord } from '../../shared/registry/record.js'

const log = pino({ level: 'silent' })

function guarded (minInstances?: number): { guard: MinInstancesGuard, record: ServiceRecord, mesh: { count: number }, clock: { t: number } } {
  const mesh = { count: 0 }
  const clock = { t: 0 }
  const record = parseRecord({ name: 'svc', command: 'serve', ...(minInstances != null ? { minInstances } : {}) })
  const guard = new MinInstancesGuard({ counter: { count: async () => mesh.count }, log, now: () => clock.t })
  return { guard, record, mesh, clock }
}

describe('MinInstancesGuard', () => {
  it('lets any instance go when the record sets no minInstances', () => {
    const { guard, record } = guarded()
    const a = {}
    guard.add(a, record)
    expect(guard.cullable(a)).toBe(true)
  })

  it('keeps instances while the mesh-wide count is unknown or at the floor', async () => {
    const { guard, record, mesh } = guarded(2)
    const a = {}
    mesh.count = 2
    guard.add(a, record)
    // The first count is under way: unknown.
    expect(guard.cullable(a)).toBe(false)
    await guard.refresh()
    expect(guard.knownCount('svc')).toBe(2)
    expect(guard.cullable(a)).toBe(false)
    mesh.count = 3
    await guard.refresh()
    expect(guard.cullable(a)).toBe(true)
  })

  it('does not let two local instances that idle together both go below the floor', async () => {
    const { guard, record, mesh, clock } = guarded(1)
    const a = {}
    const b = {}
    mesh.count = 2
    guard.add(a, record)
    guard.add(b, record)
    await guard.refresh()
    expect(guard.cullable(a)).toBe(true)
    expect(guard.cullable(b)).toBe(false)
    // a is culled: it tears down, then it is gone.
    guard.leaving(a)
    clock.t += 10_000
    expect(guard.cullable(b)).toBe(false)
    guard.remove(a)
    expect(guard.knownCount('svc')).toBe(1)
    expect(guard.cullable(b)).toBe(false)
  })

  it('does not let a busy instance starve an idle one of the same service', async () => {
    const { guard, record, mesh, clock } = guarded(1)
    const busy = {}
    const idle = {}
    mesh.count = 2
    guard.add(busy, record)
    guard.add(idle, record)
    await guard.refresh()
    // The busy one asks first on every round, and is never culled.
    expect(guard.cullable(busy)).toBe(true)
    expect(guard.cullable(idle)).toBe(false)
    clock.t += 1000
    expect(guard.cullable(busy)).toBe(true)
    clock.t += 600
    expect(guard.cullable(idle)).toBe(true)
  })

  it('does not trust a count that began before an instance went', async () => {
    const { guard, record, mesh } = guarded(1)
    const a = {}
    const b = {}
    mesh.count = 2
    guard.add(a, record)
    guard.add(b, record)
    await guard.refresh()
    const late = guard.refresh()
    guard.remove(a)
    await late
    expect(guard.knownCount('svc')).toBe(1)
  })
})
