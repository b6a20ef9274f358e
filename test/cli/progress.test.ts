import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { Progress } from '../../cli/progress.js'

describe('Progress', () => {
  let t = 0
  beforeEach(() => { vi.useFakeTimers(); t = 0 })
  afterEach(() => { vi.useRealTimers() })

  it('writes plain lines where there is no terminal, waits included', () => {
    const lines: string[] = []
    const progress = new Progress({ line: text => { lines.push(text) }, now: () => t })
    progress.line('asking allocator …x to start one…')
    t += 1500
    vi.advanceTimersByTime(1500)
    progress.line('up in 1.50 s')
    progress.close()
    expect(lines).toEqual(['asking allocator …x to start one…', 'up in 1.50 s'])
  })

  it('on a terminal, redraws a wait with its elapsed time until the next line ends it', () => {
    const lines: string[] = []
    let screen = ''
    const progress = new Progress({ line: text => { lines.push(text) }, terminal: { write: chunk => { screen += chunk } }, now: () => t })
    progress.line('asking allocator …x to start one…')
    expect(screen).toBe('\r\x1b[2Kasking allocator …x to start one… 0.0 s')
    t += 500
    vi.advanceTimersByTime(500)
    expect(screen.endsWith('\r\x1b[2Kasking allocator …x to start one… 0.5 s')).toBe(true)
    t += 700
    progress.line('up on allocator …x in 1.20 s')
    expect(screen.endsWith('\r\x1b[2Kasking allocator …x to start one… done (1.2 s)\n')).toBe(true)
    expect(lines).toEqual(['up on allocator …x in 1.20 s'])
    // Nothing redraws once the wait ended.
    const before = screen
    vi.advanceTimersByTime(2000)
    expect(screen).toBe(before)
  })

  it('ends a wait left on screen when closed', () => {
    let screen = ''
    const progress = new Progress({ line: () => {}, terminal: { write: chunk => { screen += chunk } }, now: () => t })
    progress.line('building the image…')
    t += 3000
    progress.close()
    expect(screen.endsWith('building the image… done (3.0 s)\n')).toBe(true)
    expect(vi.getTimerCount()).toBe(0)
  })
})
