/**
 * Float64 statistics over the valid (non-NaN) entries of a column. NaN marks a value that
 * was not scored. Variance is computed in two passes — never Σx² − n·mean², whose
 * cancellation has blown advantages up by orders of magnitude in fp32 elsewhere.
 */

/** Count, mean and standard deviation of the valid values in `values[start, end)`. */
export interface RangeStats {
  count: number
  mean: number
  std: number
}

/**
 * Two-pass mean and std of the non-NaN values in `values[start, end)`.
 * `std` is the sample std (n − 1) unless `population` is set; NaN when undefined (n < 2 for sample, n < 1).
 *
 * @example
 * rangeStats(Float64Array.of(1, NaN, 3), 0, 3, false) // { count: 2, mean: 2, std: 1.414… }
 */
export function rangeStats(values: Float64Array, start: number, end: number, population: boolean): RangeStats {
  let count = 0
  let sum = 0
  for (let i = start; i < end; i++) {
    const x = values[i]
    if (x === x) {
      count++
      sum += x
    }
  }
  if (count === 0) return { count, mean: NaN, std: NaN }
  const mean = sum / count
  let squares = 0
  for (let i = start; i < end; i++) {
    const x = values[i]
    if (x === x) {
      const d = x - mean
      squares += d * d
    }
  }
  const dof = population ? count : count - 1
  return { count, mean, std: dof > 0 ? Math.sqrt(squares / dof) : NaN }
}
