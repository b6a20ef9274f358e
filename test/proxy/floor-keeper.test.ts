import { pino } from 'pino'
import { describe, expect, it } from 'vitest'
import { FloorKeeper } from '../../proxy/floor-keeper.js'
import { parseRecord } from '../../shared/registry/record.js'

const log = pino({ level: 'silent' })

function keeper (live: string[], self = 'b', minInstances = 3): { floor: FloorKeeper, clock: { t: number }, walks: () => number } {
  const clock = { t: 0 }
  let walks = 0
  const record = parseRecord({ name: 'svc', command: 'serve', minInstances })
  const floor = new FloorKeeper({ record, self, log, checkMs: 1000, now: () => clock.t, instances: { providers: async () => { walks++; return new Set(live) } } })
  return { floor, clock, walks: () => walks }
}

describe('FloorKeeper', () => {
  it('is met when the mesh has minInstances live, this one included', async () => {
    const { floor } = keeper(['a', 'c'])
    expect(await floor.check(new AbortController().signal)).toEqual({ kind: 'floor_met' })
  })

  it('leaves a shortfall to the live instance with the lowest peer ID, after counting twice', async () => {
    const { floor, walks } = keeper(['a'])
    expect(await floor.check(new AbortController().signal)).toEqual({ kind: 'floor_left_to_peer' })
    expect(walks()).toBe(2)
  })

  it('asks from here when this is the lowest live peer ID', async () => {
    const { floor } = keeper(['c'], 'b')
    expect(await floor.check(new AbortController().signal)).toEqual({ kind: 'short', instances: 2, minInstances: 3 })
  })

  it('looks again after its interval, at once after an allocation, after the cooldown after a refusal', async () => {
    const { floor, clock } = keeper(['c'], 'b')
    expect(floor.due).toBe(true)
    await floor.check(new AbortController().signal)
    expect(floor.due).toBe(false)
    clock.t = 1000
    expect(floor.due).toBe(true)
    floor.asked(false, 10_000)
    expect(floor.due).toBe(false)
    clock.t = 11_000
    expect(floor.due).toBe(true)
    floor.asked(true, 10_000)
    expect(floor.due).toBe(true)
  })

  it('never looks for a record without a floor above one', () => {
    expect(keeper([], 'b', 1).floor.due).toBe(false)
  })
})
