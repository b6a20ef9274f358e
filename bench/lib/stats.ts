/** The q-quantile (0..1) of some samples, nearest-rank; NaN for none. */
export function quantile (samples: number[], q: number): number {
  if (samples.length === 0) return NaN
  const sorted = [...samples].sort((a, b) => a - b)
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))
  return sorted[rank]
}

export function median (samples: number[]): number {
  return quantile(samples, 0.5)
}

export function mean (samples: number[]): number {
  return samples.length === 0 ? NaN : samples.reduce((a, b) => a + b, 0) / samples.length
}

export const MB = 1e6
export const MiB = 2 ** 20

export function round (value: number, digits = 3): number {
  const f = 10 ** digits
  return Math.round(value * f) / f
}
