/**
 * Timing helpers for the benchmarks: warm-up runs, then repeated runs summarised by median
 * and spread (this machine is noisy; a single figure would mislead).
 */

export interface Throughput {
  name: string
  /** What one unit is (rollouts, frames…). */
  unit: string
  /** Units per run. */
  units: number
  runs: number
  median: number
  min: number
  max: number
  /** Anything else worth printing (latency percentiles, floors…). */
  extra?: Record<string, number | string>
}

/** Median of numbers (mean of the middle two for an even count). */
export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

/** The q-quantile (0..1) of numbers, nearest rank. */
export function quantile(values: readonly number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]
}

/**
 * Runs `once` (which returns how many units it processed) `warmup` times unmeasured, then
 * `runs` times measured, and reports units per second.
 */
export async function throughput(
  name: string,
  unit: string,
  once: () => number | Promise<number>,
  options: { runs: number; warmup: number },
): Promise<Throughput> {
  for (let i = 0; i < options.warmup; i++) await once()
  const rates: number[] = []
  let units = 0
  for (let i = 0; i < options.runs; i++) {
    const start = performance.now()
    units = await once()
    rates.push(units / ((performance.now() - start) / 1000))
  }
  return { name, unit, units, runs: options.runs, median: median(rates), min: Math.min(...rates), max: Math.max(...rates) }
}

/** Formats a rate with a unit prefix: 5.31 M/s, 812 k/s. */
export function formatRate(perSecond: number): string {
  if (perSecond >= 1e6) return `${(perSecond / 1e6).toFixed(2)} M/s`
  if (perSecond >= 1e3) return `${(perSecond / 1e3).toFixed(1)} k/s`
  return `${perSecond.toFixed(1)} /s`
}

/** A plain-text table: a header, a rule, the rows; columns as wide as their widest cell. */
export function textTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)))
  const line = (cells: readonly string[]) =>
    cells
      .map((c, i) => c.padEnd(widths[i]))
      .join('  ')
      .trimEnd()
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n')
}

/** A plain-text table of results. */
export function formatTable(results: readonly Throughput[]): string {
  const rows = results.map((r) => [
    r.name,
    `${r.units.toLocaleString('en-US')} ${r.unit}`,
    formatRate(r.median),
    `${formatRate(r.min)} – ${formatRate(r.max)}`,
    Object.entries(r.extra ?? {})
      .map(([k, v]) => `${k} ${v}`)
      .join(', '),
  ])
  return textTable(['benchmark', 'per run', 'median', 'range', 'notes'], rows)
}
