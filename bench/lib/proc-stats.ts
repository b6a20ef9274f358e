import { execFileSync } from 'node:child_process'
import { readdirSync, readFileSync, writeFileSync } from 'node:fs'

/** Kernel clock ticks per second, the unit of utime/stime in /proc/<pid>/stat. */
export const CLOCK_TICKS = (() => {
  try {
    const ticks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim())
    return Number.isInteger(ticks) && ticks > 0 ? ticks : 100
  } catch {
    return 100
  }
})()

/** Fields of /proc/<pid>/stat after the command name (which may hold spaces and parentheses). */
function statFields (pid: number): string[] {
  const text = readFileSync(`/proc/${pid}/stat`, 'utf8')
  return text.slice(text.lastIndexOf(')') + 2).split(' ')
}

/** User + system CPU seconds a process has used so far (its threads included). */
export function cpuSeconds (pid: number): number {
  const fields = statFields(pid)
  // Fields after the name start at field 3 (state): utime is field 14, stime field 15.
  return (Number(fields[14 - 3]) + Number(fields[15 - 3])) / CLOCK_TICKS
}

function statusKb (pid: number, field: string): number {
  const text = readFileSync(`/proc/${pid}/status`, 'utf8')
  const match = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text)
  if (match == null) throw new Error(`no ${field} in /proc/${pid}/status`)
  return Number(match[1])
}

/** Resident set size now, bytes. */
export function rssBytes (pid: number): number {
  return statusKb(pid, 'VmRSS') * 1024
}

/** RSS split: anonymous (heaps, JIT code, buffers) and file-backed (the node binary, libraries), bytes. */
export function rssSplit (pid: number): { anon: number, file: number } {
  return { anon: statusKb(pid, 'RssAnon') * 1024, file: statusKb(pid, 'RssFile') * 1024 }
}

/** Proportional set size: RSS with shared pages (the node binary) divided among their users, bytes. */
export function pssBytes (pid: number): number | null {
  try {
    const match = /^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))
    return match == null ? null : Number(match[1]) * 1024
  } catch {
    return null
  }
}

/** Peak resident set size since start or the last resetPeakRss, bytes. */
export function peakRssBytes (pid: number): number {
  return statusKb(pid, 'VmHWM') * 1024
}

/** Resets VmHWM to the current RSS (Linux ≥ 4.0, same user); false where not allowed. */
export function resetPeakRss (pid: number): boolean {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5')
    return true
  } catch {
    return false
  }
}

/** Direct children of a process, from every /proc/<pid>/stat's ppid. */
export function childPids (parent: number): number[] {
  const children: number[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      if (Number(statFields(Number(entry))[4 - 3]) === parent) children.push(Number(entry))
    } catch { /* exited meanwhile */ }
  }
  return children
}

/** A process and all its descendants (nginx: master and workers). */
export function processTree (root: number): number[] {
  const all = [root]
  for (let i = 0; i < all.length; i++) all.push(...childPids(all[i]))
  return all
}

/** CPU seconds of several labelled process groups, read at once. */
export type CpuSnapshot = Record<string, number>

export function cpuSnapshot (groups: Record<string, number[]>): CpuSnapshot {
  const snapshot: CpuSnapshot = {}
  for (const [label, pids] of Object.entries(groups)) {
    snapshot[label] = pids.reduce((sum, pid) => {
      try { return sum + cpuSeconds(pid) } catch { return sum }
    }, 0)
  }
  return snapshot
}

export function cpuDelta (before: CpuSnapshot, after: CpuSnapshot): CpuSnapshot {
  const delta: CpuSnapshot = {}
  for (const label of Object.keys(after)) delta[label] = after[label] - (before[label] ?? 0)
  return delta
}

/**
 * Samples the RSS of some processes every `intervalMs` until stopped, keeping the maximum;
 * combined with VmHWM (reset at start where allowed) so that a spike between samples counts.
 */
export class RssSampler {
  private readonly peaks = new Map<number, number>()
  private readonly timer: NodeJS.Timeout
  private readonly hwmReset: boolean

  constructor (private readonly pids: number[], intervalMs = 50) {
    this.hwmReset = pids.every(pid => resetPeakRss(pid))
    for (const pid of pids) this.peaks.set(pid, rssBytes(pid))
    this.timer = setInterval(() => { this.sample() }, intervalMs)
  }

  private sample (): void {
    for (const pid of this.pids) {
      try {
        this.peaks.set(pid, Math.max(this.peaks.get(pid) ?? 0, rssBytes(pid)))
      } catch { /* exited */ }
    }
  }

  /** Stops sampling; the peak RSS of each process, bytes. */
  stop (): Map<number, number> {
    clearInterval(this.timer)
    this.sample()
    if (this.hwmReset) {
      for (const pid of this.pids) {
        try {
          this.peaks.set(pid, Math.max(this.peaks.get(pid) ?? 0, peakRssBytes(pid)))
        } catch { /* exited */ }
      }
    }
    return this.peaks
  }
}
