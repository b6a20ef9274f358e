import { mkdir } from 'node:fs/promises'
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

/**
 * The data dir without --data-dir: per user, where the XDG base directory spec puts state
 * (`$XDG_STATE_HOME/hyphae/allocator`, else `~/.local/state/hyphae/allocator`).
 */
export function defaultDataDir (env: NodeJS.ProcessEnv = process.env): string {
  const state = env.XDG_STATE_HOME
  // The spec says a relative path is invalid and to be ignored.
  const base = state != null && isAbsolute(state) ? state : join(env.HOME != null && env.HOME !== '' ? env.HOME : homedir(), '.local', 'state')
  return join(base, 'hyphae', 'allocator')
}

/**
 * Creates DIR (0700) when missing and opens the LevelDB datastore in it. LevelDB locks its
 * directory: a second allocator on the same DIR fails here, with one line naming --data-dir.
 */
export async function openDataDir (dir: string): Promise<DataDir> {
  try {
    await mkdir(dir, { recursive: true, mode: 0o700 })
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
