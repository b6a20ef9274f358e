/** How often a wait on a terminal is redrawn with its elapsed time. */
const REDRAW_MS = 250

export interface ProgressInit {
  /** Plain lines (logs, pipes): one per step. */
  line: (text: string) => void
  /** stderr when it is a terminal: then a wait is one line redrawn in place. */
  terminal?: { write: (chunk: string) => void }
  now?: () => number
}

/**
 * Progress for people who wait (deploys, image builds). A line that ends in '…' is a wait: on
 * a terminal it stays on screen with its elapsed time ticking until the next line replaces it,
 * ending as `… done (1.2 s)`; in a log it is one plain line, like every other.
 */
export class Progress {
  private waiting?: { text: string, since: number, timer: NodeJS.Timeout }
  private readonly now: () => number

  constructor (private readonly init: ProgressInit) {
    this.now = init.now ?? (() => performance.now())
  }

  readonly line = (text: string): void => {
    this.endWait()
    const { terminal } = this.init
    if (terminal == null || !text.endsWith('…')) {
      this.init.line(text)
      return
    }
    const since = this.now()
    const draw = (): void => { terminal.write(`\r\x1b[2K${text} ${seconds(this.now() - since)}`) }
    draw()
    const timer = setInterval(draw, REDRAW_MS)
    timer.unref()
    this.waiting = { text, since, timer }
  }

  /** Ends a wait still on screen (call once the work is over). */
  close (): void {
    this.endWait()
  }

  private endWait (): void {
    if (this.waiting == null) return
    const { text, since, timer } = this.waiting
    this.waiting = undefined
    clearInterval(timer)
    this.init.terminal?.write(`\r\x1b[2K${text} done (${seconds(this.now() - since)})\n`)
  }
}

function seconds (ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`
}
