import { readdirSync, readFileSync, readlinkSync } from 'node:fs'

// Process groups, and what Linux's /proc tells about processes: how the process runtime ends
// everything an app forked, and finds what an earlier run of the allocator left.

export function signalGroup (pgid: number, signal: NodeJS.Signals): void {
  try {
    // Negative pid: every process of the group, the leader's descendants included.
    process.kill(-pgid, signal)
  } catch {
    // ESRCH: the group is already empty.
  }
}

/** Whether any process of the group is still running (zombies waiting to be reaped do not count). */
export function groupAlive (pgid: number): boolean {
  try {
    process.kill(-pgid, 0)
  } catch (err) {
    // EPERM means a member exists that we may not signal: still alive.
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
  if (process.platform !== 'linux') return true
  // kill(0) also succeeds for zombies, which hold nothing (no port, no memory) but can linger
  // until their new parent reaps them; /proc tells them apart.
  try {
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue
      const stat = readProcStat(Number(entry))
      if (stat != null && stat.pgrp === pgid && stat.state !== 'Z') return true
    }
    return false
  } catch {
    return true
  }
}

/** State and process group of a pid from /proc/<pid>/stat, or undefined if it is gone. */
export function readProcStat (pid: number): { state: string, pgrp: number } | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // The command name is in parentheses and may itself contain spaces or parentheses.
    const rest = text.slice(text.lastIndexOf(')') + 2).split(' ')
    return { state: rest[0], pgrp: Number(rest[2]) }
  } catch {
    return undefined
  }
}

/**
 * The processes (zombies aside) whose environment holds `entry` (`NAME=value`) and that this
 * process may read the environment of, with their groups. Linux only.
 */
export function * processesWithEnv (entry: string): Generator<{ pid: number, pgrp: number }> {
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    let environ: string
    try {
      // Root reads other users' (the apps') too; a non-root allocator runs its apps as itself.
      environ = readFileSync(`/proc/${name}/environ`, 'latin1')
    } catch {
      continue // gone, or another user's
    }
    if (!environ.split('\0').includes(entry)) continue
    const pid = Number(name)
    const stat = readProcStat(pid)
    if (stat == null || stat.state === 'Z') continue
    yield { pid, pgrp: stat.pgrp }
  }
}

/** The working directory of a pid, or undefined if it is gone. */
export function processCwd (pid: number): string | undefined {
  try {
    return readlinkSync(`/proc/${pid}/cwd`)
  } catch {
    return undefined
  }
}
