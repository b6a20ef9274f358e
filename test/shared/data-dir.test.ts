import { mkdtemp, rm, stat } from 'node:fs/promises'
import { homedir, tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { defaultDataDir, openDataDir, type DataDir } from '../../shared/data-dir.js'
import { UsageError } from '../../shared/errors.js'

describe('allocator data dir', () => {
  const opened: DataDir[] = []
  const scratch: string[] = []
  afterEach(async () => {
    await Promise.all(opened.splice(0).map(async data => { await data.datastore.close() }))
    await Promise.all(scratch.splice(0).map(async dir => { await rm(dir, { recursive: true, force: true }) }))
  })

  async function tempDir (): Promise<string> {
    const dir = await mkdtemp(join(tmpdir(), 'hyphae-data-dir-test-'))
    scratch.push(dir)
    return dir
  }

  it('defaults to $XDG_STATE_HOME/hyphae/allocator, else /var/lib/hyphae/allocator for root, else ~/.local/state/hyphae/allocator', () => {
    expect(defaultDataDir({ XDG_STATE_HOME: '/var/state', HOME: '/home/u' }, 1000)).toBe('/var/state/hyphae/allocator')
    expect(defaultDataDir({ XDG_STATE_HOME: '/var/state', HOME: '/root' }, 0)).toBe('/var/state/hyphae/allocator')
    expect(defaultDataDir({ HOME: '/home/u' }, 1000)).toBe('/home/u/.local/state/hyphae/allocator')
    expect(defaultDataDir({ HOME: '/root' }, 0)).toBe('/var/lib/hyphae/allocator')
    // A relative XDG_STATE_HOME is invalid (XDG base directory spec) and ignored.
    expect(defaultDataDir({ XDG_STATE_HOME: 'state', HOME: '/home/u' }, 1000)).toBe('/home/u/.local/state/hyphae/allocator')
    expect(defaultDataDir({}, 1000)).toBe(join(homedir(), '.local/state/hyphae/allocator'))
  })

  it('creates the dir 0711 (its datastore 0700) and keeps what is put in its datastore across a close and a reopen', async () => {
    const dir = join(await tempDir(), 'a', 'b')
    const first = await openDataDir(dir)
    expect((await stat(dir)).mode & 0o777).toBe(0o711)
    expect((await stat(join(dir, 'datastore'))).mode & 0o777).toBe(0o700)
    expect(first.keyFile).toBe(join(dir, 'key'))
    await first.datastore.db.put('/dht/record/abc', Uint8Array.from([1, 2, 3]))
    await first.datastore.close()
    const second = await openDataDir(dir)
    opened.push(second)
    expect([...(await second.datastore.db.get('/dht/record/abc')) ?? []]).toEqual([1, 2, 3])
  })

  it('refuses a dir another datastore holds, with one line naming --data-dir', async () => {
    const dir = await tempDir()
    opened.push(await openDataDir(dir))
    const refused = await openDataDir(dir).then(() => undefined, (err: unknown) => err)
    expect(refused).toBeInstanceOf(UsageError)
    expect((refused as Error).message).toMatch(/^--data-dir \S+ is in use by another allocator .*own --data-dir$/)
    expect((refused as Error).message).not.toContain('\n')
  })
})
