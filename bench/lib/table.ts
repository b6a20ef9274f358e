/** One figure of the results table, and the unit of comparison between runs (by `id`). */
export interface Row {
  /** Stable identifier, e.g. `request.rps.mesh`: the previous run's value is looked up by it. */
  id: string
  suite: string
  metric: string
  /** null: not measured; `na` says why. */
  value: number | null
  unit: string
  na?: string
  /** Which direction is an improvement; a change the other way by more than 10% is flagged. */
  better?: 'higher' | 'lower'
  target?: Target
  digits?: number
}

export interface Target {
  op: '>=' | '<='
  value: number
}

/** A figure with no value, and why (e.g. a part of the mesh that does not exist yet). */
export function naRow (id: string, suite: string, metric: string, unit: string, why: string, target?: Target): Row {
  return { id, suite, metric, value: null, unit, na: why, target }
}

/** Relative change beyond which a worse figure is flagged as a regression. */
const REGRESSION = 0.10

export interface TableOptions {
  previous?: Map<string, number | null>
  previousName?: string
}

function formatValue (value: number, digits?: number): string {
  if (!Number.isFinite(value)) return String(value)
  const d = digits ?? (Math.abs(value) >= 100 ? 0 : Math.abs(value) >= 10 ? 1 : Math.abs(value) >= 1 ? 2 : 3)
  return value.toFixed(d)
}

function pad (text: string, width: number, right = false): string {
  if (text.length >= width) return text
  return right ? text.padStart(width) : text.padEnd(width)
}

/**
 * The fixed-width results table: value, previous run, change, target and the value as a
 * multiple of the target ("vs tgt": ≥ targets pass at ≥ 1.00x, ≤ targets at ≤ 1.00x).
 */
export function formatTable (rows: Row[], opts: TableOptions = {}): string {
  const header = ['suite', 'metric', 'value', 'unit', 'prev', 'change', 'target', 'vs tgt', 'note']
  const body = rows.map(row => {
    const value = row.value == null ? 'n/a' : formatValue(row.value, row.digits)
    // Why a figure is missing, in the last column so that the numbers stay aligned.
    const note = row.value == null ? (row.na ?? '').replace(/^n\/a\s*/, '').replace(/^\((.*)\)$/, '$1') : ''
    const prev = opts.previous?.get(row.id)
    const prevText = prev == null ? '-' : formatValue(prev, row.digits)
    let change = '-'
    if (row.value != null && prev != null && prev !== 0) {
      const rel = (row.value - prev) / Math.abs(prev)
      const worse = (row.better === 'higher' && rel < -REGRESSION) || (row.better === 'lower' && rel > REGRESSION)
      change = `${rel >= 0 ? '+' : ''}${(rel * 100).toFixed(0)}%${worse ? ' WORSE' : ''}`
    }
    let target = '-'
    let versus = '-'
    if (row.target != null) {
      target = `${row.target.op === '>=' ? '>=' : '<='} ${formatValue(row.target.value)}`
      if (row.value != null && row.target.value !== 0) {
        const ratio = row.value / row.target.value
        const ok = row.target.op === '>=' ? ratio >= 1 : ratio <= 1
        versus = `${ratio.toFixed(2)}x ${ok ? 'ok' : 'MISS'}`
      }
    }
    return [row.suite, row.metric, value, row.unit, prevText, change, target, versus, note]
  })
  const rightAligned = new Set([2, 4, 5, 6, 7])
  const widths = header.map((h, i) => Math.max(h.length, ...body.map(cells => cells[i].length)))
  const line = (cells: string[]): string => cells.map((c, i) => pad(c, widths[i], rightAligned.has(i))).join('  ').trimEnd()
  const out = [line(header), widths.map(w => '-'.repeat(w)).join('  ')]
  let suite = ''
  for (const cells of body) {
    if (cells[0] !== suite && suite !== '') out.push('')
    suite = cells[0]
    out.push(line(cells))
  }
  if (opts.previousName != null) out.push('', `prev: ${opts.previousName}`)
  else out.push('', 'prev: none (no earlier bench/results/*.json)')
  return out.join('\n')
}
