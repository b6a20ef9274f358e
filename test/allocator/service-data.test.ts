import { chmod, mkdtemp, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { ServiceDataDirs } from '../../allocator/service-data.js'

const selfUid = process.getuid?.() ?? -1
/** Another user than us: what the dirs look like to an app run as nobody. */
const nobody = { name: 'nobody', uid: 65534, gid: 65534 }

describe('service data dirs', () => {
  const scratch: string[] = []
  afterEach(async () => { await Promise.all(scratch.splice(0).map(async dir => { await rm(dir, { recursive: true, force: true }) })) })

  async function tempDir (mode: number): Promise<string> {
    const dir = await mkdtemp(join(tmpdir(), 'hyphae-service-data-'))
    scratch.push(dir)
    await chmod(dir, mode)
    return dir
  }

  it('makes <root>/<service> 0700 under a 0711 root, and gives the same one again', async () => {
    const dirs = new ServiceDataDirs(join(await tempDir(0o711), 'services'), selfUid)
    const dir = await dirs.make('catalog', nobody, false)
    expect(dir).toBe(join(dirs.root, 'catalog'))
    expect((await stat(dir)).mode & 0o777).toBe(0o700)
    expect((await stat(dirs.root)).mode & 0o777).toBe(0o711)
    expect(await dirs.make('catalog', nobody, false)).toBe(dir)
  })

  it('says which directory closes the way to the apps\' user, naming --data-dir', async () => {
    const closed = await tempDir(0o700)
    const dirs = new ServiceDataDirs(join(closed, 'services'), selfUid)
    await expect(dirs.make('catalog', nobody, false)).rejects.toThrow(`apps run as nobody cannot reach ${join(closed, 'services')} (${closed} is closed to them): give the allocator a --data-dir they can traverse`)
  })

  it('refuses a name that is not a service name', async () => {
    const dirs = new ServiceDataDirs(join(await tempDir(0o711), 'services'), selfUid)
    await expect(dirs.make('../etc', nobody, false)).rejects.toThrow('is not a service name')
  })
})
