import { execFile } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { promisify } from 'node:util'

/** Who apps run as. */
export interface AppUser {
  name: string
  uid: number
  gid: number
  /** From the password database; undefined for a numeric uid it does not know. */
  home?: string
}

const runFile = promisify(execFile)
/** POSIX portable user names (plus the `$` of machine accounts), and numeric uids. */
const USER_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]*\$?$/

/**
 * Resolves the user the apps of an allocator run as (see ProcessRuntimeInit.runAs). Rejects,
 * with a message fit for the user, a name nobody knows, root, and, unless the allocator runs
 * as root, any user other than its own.
 */
export async function resolveAppUser (runAs?: string, selfUid: number = process.getuid?.() ?? -1): Promise<AppUser> {
  const wanted = runAs ?? (selfUid === 0 ? 'nobody' : String(selfUid))
  if (!USER_NAME.test(wanted)) throw new Error(`'${wanted}' is not a user name or uid`)
  let user = await lookUpUser(wanted)
  if (user === undefined) {
    if (!/^\d+$/.test(wanted)) {
      throw new Error(runAs === undefined
        ? `there is no user '${wanted}' to run apps as (the default for an allocator running as root): name one`
        : `there is no user '${wanted}'`)
    }
    // A uid the password database does not know is still a user of its own; its group is
    // the same number (never the root group).
    user = { name: wanted, uid: Number(wanted), gid: Number(wanted) }
  }
  if (user.uid === 0) throw new Error(`refusing to run apps as root ('${wanted}' is uid 0): name an unprivileged user`)
  if (selfUid !== 0 && user.uid !== selfUid) {
    throw new Error(`only an allocator running as root can run apps as another user ('${wanted}' is uid ${user.uid}, this allocator runs as uid ${selfUid})`)
  }
  if (selfUid === 0 && user.gid === 0) throw new Error(`refusing to run apps in the root group ('${wanted}' has gid 0)`)
  return user
}

/** The password database entry of a name or uid (getent: /etc/passwd, NSS, LDAP …), or undefined. */
async function lookUpUser (nameOrUid: string): Promise<AppUser | undefined> {
  let entries: string
  try {
    entries = (await runFile('getent', ['passwd', nameOrUid], { timeout: 5000 })).stdout
  } catch (err) {
    const code = (err as { code?: unknown }).code
    // getent exits 2 for a key it does not know.
    if (code === 2) return undefined
    if (code !== 'ENOENT') throw new Error(`cannot look up user '${nameOrUid}': ${(err as Error).message}`, { cause: err })
    // No getent (a minimal image): the local file is all there is.
    entries = await readFile('/etc/passwd', 'utf8').catch(() => '')
  }
  for (const line of entries.split('\n')) {
    const [name, , uid, gid, , home] = line.split(':')
    if (uid === undefined || gid === undefined || !/^\d+$/.test(uid) || !/^\d+$/.test(gid)) continue
    if (name === nameOrUid || uid === nameOrUid) return { name, uid: Number(uid), gid: Number(gid), home: home === '' ? undefined : home }
  }
  return undefined
}
