import { spawn, spawnSync } from 'node:child_process'
import { lstatSync, rmdirSync, rmSync, type Stats } from 'node:fs'
import { chmod, chown, lstat, mkdir, rm, rmdir } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import type { Logger } from '../shared/log.js'
import { AllocationError } from '../shared/protocols/alloc-errors.js'
import type { AppUser } from './app-user.js'

/**
 * The instances' working directories, `<root>/<instanceId>`: each app gets one of its own
 * (0700, owned by its user), under a root (0711) that only this allocator controls, so that an
 * app can reach its own directory but not list the others.
 */
export class InstanceDirs {
  readonly root: string
  private rootReady?: Promise<void>

  /** `root` defaults to `hyphae-instances-<uid>` in the OS temporary directory. */
  constructor (root: string | undefined, private readonly selfUid: number) {
    this.root = resolve(root ?? join(tmpdir(), `hyphae-instances-${selfUid}`))
  }

  /**
   * A fresh, empty `<root>/<instanceId>`, 0700 and owned by the app's user. A relaunch
   * gets a fresh one too (its predecessor's was removed when it was stopped).
   */
  async make (instanceId: string, user: AppUser, chownToUser: boolean): Promise<string> {
    this.rootReady ??= this.prepareRoot()
    try {
      await this.rootReady
    } catch (err) {
      this.rootReady = undefined // retry next time: it may be fixed meanwhile
      throw new AllocationError('start_failed', (err as Error).message, { cause: err })
    }
    // Instance ids are the allocator's own, but a path must never escape the root.
    const name = instanceId.replace(/[^A-Za-z0-9_.-]/g, '-').replace(/^\.+/, '_')
    const dir = join(this.root, name === '' ? '_' : name)
    try {
      await rm(dir, { recursive: true, force: true })
      await mkdir(dir, { mode: 0o700 })
      await chmod(dir, 0o700) // whatever the umask
      if (chownToUser) await chown(dir, user.uid, user.gid)
    } catch (err) {
      await rm(dir, { recursive: true, force: true }).catch(() => {})
      throw new AllocationError('start_failed', `cannot make the working directory ${dir}: ${(err as Error).message}`, { cause: err })
    }
    return dir
  }

  /** Whether a process working in DIR works in an instance's directory (one of ours to remove). */
  isInstanceDir (dir: string): boolean {
    return dirname(dir) === this.root
  }

  private async prepareRoot (): Promise<void> {
    await prepareAppsRoot(this.root, this.selfUid, 'the instances\' working directory root')
  }
}

/**
 * Creates ROOT (0711) where apps get directories of their own, and makes sure nobody else
 * controls it: it may be in a shared place (/tmp), where another user could have made it
 * first. Apps reach their own directory (x) but cannot list or create entries.
 */
export async function prepareAppsRoot (root: string, selfUid: number, what: string): Promise<void> {
  await mkdir(root, { recursive: true, mode: 0o711 })
  const info = await lstat(root)
  if (!info.isDirectory()) throw new Error(`${what} ${root} is not a directory`)
  if (selfUid >= 0 && info.uid !== selfUid) {
    throw new Error(`${what} ${root} belongs to uid ${info.uid}, not to this allocator (uid ${selfUid})`)
  }
  if ((info.mode & 0o777) !== 0o711) await chmod(root, 0o711)
}

/** Never throws: a directory left behind is logged, not a reason for a stop to fail. */
export async function removeWorkDir (dir: string, log: Logger): Promise<void> {
  try {
    const info = await lstat(dir).catch(() => undefined)
    if (info === undefined) return
    if (!info.isDirectory() || !ownedByAnother(info)) {
      await rm(dir, { recursive: true, force: true, maxRetries: 2 })
      return
    }
    const { command, args, options } = emptyAsOwner(dir, info)
    await new Promise<void>(resolve => {
      const child = spawn(command, args, options)
      child.once('error', () => { resolve() })
      child.once('exit', () => { resolve() })
    })
    await rmdir(dir)
  } catch (err) {
    log.warn({ dir, err }, 'cannot remove an instance working directory')
  }
}

/** removeWorkDir() for the allocator's last moments (a process 'exit' hook), without logs. */
export function removeWorkDirSync (dir: string): void {
  try {
    const info = lstatSync(dir)
    if (!info.isDirectory() || !ownedByAnother(info)) {
      rmSync(dir, { recursive: true, force: true })
      return
    }
    const { command, args, options } = emptyAsOwner(dir, info)
    spawnSync(command, args, options)
    rmdirSync(dir)
  } catch {
    // Exiting anyway: what is left is in the temporary directory.
  }
}

/**
 * Empties a working directory as the user who owns it, when that is not us: root must not
 * walk a tree another user controls (a process of the app that escaped its group could swap
 * a directory for a symlink mid-walk and have root delete files elsewhere). That user cannot
 * remove the directory itself (the root is ours); we remove it, empty, afterwards.
 */
function emptyAsOwner (dir: string, info: Stats): { command: string, args: string[], options: { uid: number, gid: number, stdio: 'ignore', timeout: number } } {
  return {
    command: '/bin/sh',
    args: ['-c', 'chmod -R u+rwx -- "$1" 2>/dev/null; rm -rf -- "$1"/* "$1"/.[!.]* "$1"/..?* 2>/dev/null; exit 0', 'sh', dir],
    options: { uid: info.uid, gid: info.gid, stdio: 'ignore', timeout: 30_000 }
  }
}

function ownedByAnother (info: Stats): boolean {
  return info.uid !== (process.getuid?.() ?? info.uid)
}
