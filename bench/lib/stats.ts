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

/** Least-squares line through (x, y) points; slope NaN for fewer than two distinct x. */
export function linearFit (xs: number[], ys: number[]): { slope: number, intercept: number } {
  const n = Math.min(xs.length, ys.length)
  const mx = mean(xs.slice(0, n))
  const my = mean(ys.slice(0, n))
  let sxy = 0
  let sxx = 0
  for (let i = 0; i < n; i++) {
    sxy += (xs[i] - mx) * (ys[i] - my)
    sxx += (xs[i] - mx) ** 2
  }
  const slope = sxx === 0 ? NaN : sxy / sxx
  return { slope, intercept: my - slope * mx }
}
