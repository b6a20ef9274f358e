import { describe, expect, it } from 'vitest'
import { deadline } from '../../shared/abort.js'

describe('deadline', () => {
  it('aborts with a TimeoutError after its time', async () => {
    const { signal } = deadline(20)
    await new Promise(resolve => signal.addEventListener('abort', resolve, { once: true }))
    expect((signal.reason as DOMException).name).toBe('TimeoutError')
  })

  it('aborts with a parent, with the parent\'s reason', () => {
    const parent = new AbortController()
    const { signal } = deadline(60_000, parent.signal)
    parent.abort(new Error('stopping'))
    expect(signal.aborted).toBe(true)
    expect((signal.reason as Error).message).toBe('stopping')
  })

  it('is born aborted under an aborted parent', () => {
    expect(deadline(60_000, AbortSignal.abort(new Error('gone'))).signal.aborted).toBe(true)
  })

  it('leaves nothing on a long-lived parent once cleared (unlike AbortSignal.any)', () => {
    const parent = new AbortController()
    let listeners = 0
    const add = parent.signal.addEventListener.bind(parent.signal)
    const remove = parent.signal.removeEventListener.bind(parent.signal)
    parent.signal.addEventListener = ((...args: Parameters<typeof add>) => { listeners++; add(...args) }) as typeof add
    parent.signal.removeEventListener = ((...args: Parameters<typeof remove>) => { listeners--; remove(...args) }) as typeof remove
    for (let i = 0; i < 1000; i++) deadline(60_000, parent.signal).clear()
    expect(listeners).toBe(0)
    // And one that is not cleared is released when it fires.
    const live = deadline(60_000, parent.signal)
    expect(listeners).toBe(1)
    live.clear()
    expect(listeners).toBe(0)
  })
})
