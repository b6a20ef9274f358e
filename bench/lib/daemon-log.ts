import type { Child } from './procs.js'

/** One JSON log line of a hyphae daemon (pino: `time` in ms since the epoch, `msg`). */
export interface LogLine {
  time: number
  msg: string
  [key: string]: unknown
}

/**
 * Collects every JSON log line a daemon writes to stderr from now on (Child keeps only the
 * tail of stderr as text; a suite that reads timestamps needs all of them).
 */
export class DaemonLog {
  readonly lines: LogLine[] = []
  private partial = ''

  constructor (child: Child<unknown>) {
    child.proc.stderr?.on('data', (text: string | Buffer) => {
      const all = this.partial + text.toString()
      const parts = all.split('\n')
      this.partial = parts.pop() ?? ''
      for (const part of parts) {
        if (!part.startsWith('{')) continue
        try {
          const line = JSON.parse(part) as LogLine
          if (typeof line.time === 'number' && typeof line.msg === 'string') this.lines.push(line)
        } catch { /* not a log line */ }
      }
    })
  }

  /** The first line with this message (and these fields) at or after `since`. */
  find (msg: string, fields: Record<string, unknown> = {}, since = 0): LogLine | undefined {
    return this.lines.find(l => l.msg === msg && l.time >= since && Object.entries(fields).every(([k, v]) => l[k] === v))
  }

  /** Waits (polling) for such a line. */
  async waitFor (msg: string, fields: Record<string, unknown> = {}, since = 0, timeoutMs = 5000): Promise<LogLine | undefined> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const line = this.find(msg, fields, since)
      if (line != null || Date.now() > deadline) return line
      await new Promise(resolve => setTimeout(resolve, 20))
    }
  }
}
