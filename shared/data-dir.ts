import { chmod, mkdir, stat } from 'node:fs/promises'
import { homedir } from 'node:os'
import { isAbsolute, join } from 'node:path'
import { LevelDatastore } from 'datastore-level'
import { errorMessage, UsageError } from './errors.js'

/**
 * What an allocator keeps on disk, so that a restart (even after SIGKILL) loses nothing the
 * mesh stored on it: the libp2p datastore (DHT records and provider records under /dht/…,
 * the peer store under /peers/…) and its identity key (the peer ID it finds its orphans by).
 */
export interface DataDir {
  dir: string
  /** `<dir>/key`: the identity used when --key is not given. */
  keyFile: string
  /** Open; close it after the libp2p node has stopped. */
  datastore: LevelDatastore
}

/** Where an allocator running as root keeps its data: a system daemon's place (FHS). */
export const SYSTEM_DATA_DIR = '/var/lib/hyphae/allocator'

/**
 * The data dir without --data-dir: where the XDG base directory spec puts state
 * (`$XDG_STATE_HOME/hyphae/allocator`); else, for root, SYSTEM_DATA_DIR (process apps, run as
 * nobody, keep their services' data inside it and cannot enter root's home); else
 * `~/.local/state/hyphae/allocator`.
 */
export function defaultDataDir (env: NodeJS.ProcessEnv = process.env, uid: number | undefined = process.getuid?.()): string {
  const state = env.XDG_STATE_HOME
  // The spec says a relative path is invalid and to be ignored.
  if (state != null && isAbsolute(state)) return join(state, 'hyphae', 'allocator')
  if (uid === 0) return SYSTEM_DATA_DIR
  return join(env.HOME != null && env.HOME !== '' ? env.HOME : homedir(), '.local', 'state', 'hyphae', 'allocator')
}

/**
 * Creates DIR when missing and opens the LevelDB datastore in it. DIR is 0711: apps may pass
 * through it to their services' data (`services/`), but not list it; the datastore (0700) and
 * the key (0600) stay the allocator's. LevelDB locks its directory: a second allocator on the
 * same DIR fails here, with one line naming --data-dir.
 */
export async function openDataDir (dir: string): Promise<DataDir> {
  try {
    await mkdir(dir, { recursive: true, mode: 0o711 })
    // An older allocator made it 0700; whatever the umask made it, it is ours to set.
    if (((await stat(dir)).mode & 0o777) !== 0o711) await chmod(dir, 0o711)
    await mkdir(join(dir, 'datastore'), { mode: 0o700 }).catch((err: NodeJS.ErrnoException) => { if (err.code !== 'EEXIST') throw err })
  } catch (err) {
    throw new UsageError(`cannot create --data-dir ${dir}: ${(err as NodeJS.ErrnoException).code ?? errorMessage(err)}`)
  }
  const datastore = new LevelDatastore(join(dir, 'datastore'))
  try {
    // Through the Level instance: LevelDatastore.open() reports every failure as "Database
    // failed to open", dropping the cause that tells a held lock from anything else.
    await datastore.db.open({ createIfMissing: true, compression: false })
    await datastore.open()
  } catch (err) {
    const cause = (err as { cause?: { code?: unknown, message?: unknown } }).cause
    if (cause?.code === 'LEVEL_LOCKED') {
      throw new UsageError(`--data-dir ${dir} is in use by another allocator (its datastore is locked): give each allocator on this host its own --data-dir`)
    }
    const why = typeof cause?.message === 'string' ? cause.message : errorMessage(err)
    throw new UsageError(`cannot open the datastore in --data-dir ${dir}: ${why.split('\n')[0]}`)
  }
  return { dir, keyFile: join(dir, 'key'), datastore }
}
