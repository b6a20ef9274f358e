import { chown, lstat, mkdir, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { AllocationError } from '../shared/protocols/alloc-errors.js'
import { SERVICE_NAME } from '../shared/registry/record.js'
import type { AppUser } from './app-user.js'
import { prepareAppsRoot } from './instance-dir.js'

/**
 * Each service's data directory on this host, `<root>/<service>` (`HYPHAE_DATA_DIR`): unlike
 * an instance's working directory it outlives the instance, so a relaunched or re-allocated
 * app finds what it wrote (a catalog's stock, an order log). 0700 and owned by the apps'
 * user, under a root (0711) that only this allocator controls.
 */
export class ServiceDataDirs {
  readonly root: string
  private rootReady?: Promise<void>

  /** `root` defaults to `hyphae-data-<uid>` in the OS temporary directory. */
  constructor (root: string | undefined, private readonly selfUid: number) {
    this.root = resolve(root ?? join(tmpdir(), `hyphae-data-${selfUid}`))
  }

  /** `<root>/<service>`, made on first use and kept; owned by the app's user. */
  async make (service: string, user: AppUser, chownToUser: boolean): Promise<string> {
    // Names are validated with the record; a path must never escape the root all the same.
    if (!SERVICE_NAME.test(service)) throw new AllocationError('start_failed', `'${service}' is not a service name`)
    this.rootReady ??= this.prepareRoot(user)
    try {
      await this.rootReady
    } catch (err) {
      this.rootReady = undefined // retry next time: it may be fixed meanwhile
      throw new AllocationError('start_failed', (err as Error).message, { cause: err })
    }
    const dir = join(this.root, service)
    try {
      await mkdir(dir, { mode: 0o700 }).catch((err: NodeJS.ErrnoException) => { if (err.code !== 'EEXIST') throw err })
      const info = await lstat(dir)
      if (!info.isDirectory()) throw new Error('not a directory')
      if (chownToUser && (info.uid !== user.uid || info.gid !== user.gid)) await chown(dir, user.uid, user.gid)
    } catch (err) {
      throw new AllocationError('start_failed', `cannot make the data directory ${dir}: ${(err as Error).message}`, { cause: err })
    }
    return dir
  }

  private async prepareRoot (user: AppUser): Promise<void> {
    const root = this.root
    await prepareAppsRoot(root, this.selfUid, 'the services\' data root')
    // An allocator running as root keeps its data dir in root's home by default, which apps
    // running as nobody cannot enter: say so now, not as an app's EACCES.
    const blocked = await firstUntraversable(dirname(root), user)
    if (blocked != null) {
      throw new Error(`apps run as ${user.name} cannot reach ${root} (${blocked} is closed to them): give the allocator a --data-dir they can traverse, such as /var/lib/hyphae/allocator`)
    }
  }
}

/** The first directory from DIR up to / that USER may not pass through, if any. */
async function firstUntraversable (dir: string, user: AppUser): Promise<string | undefined> {
  if (user.uid === 0) return undefined
  for (let current = dir; ; current = dirname(current)) {
    const info = await stat(current)
    const bit = info.uid === user.uid ? 0o100 : info.gid === user.gid ? 0o010 : 0o001
    if ((info.mode & bit) === 0) return current
    if (dirname(current) === current) return undefined
  }
}
