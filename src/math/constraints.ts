/**
 * Batch-level constraint measurement (DESIGN §3): J over the batch or pooled over the last
 * W batches, the violation e (positive = violated), and the per-sample violation rate.
 */
import type { ConstraintSpec } from '../core/config.js'
import type { ConstraintMeasure, WindowEntry } from '../core/types.js'

/** The measurement and the window to keep for the next batch. */
export interface MeasureResult {
  measure: ConstraintMeasure
  window: WindowEntry[]
}

/**
 * Measures one constraint channel on a batch. `values` has NaN where not scored; `window`
 * holds the sums of previous batches (oldest first) and is not modified.
 * With `window` W > 1, J pools the valid values of the last W batches (not a mean of means);
 * the per-sample violation rate is always this batch's.
 *
 * @example
 * measureConstraint(Float64Array.of(1, 0, 1, 1), { sense: '>=', threshold: 0.9, sampleThreshold: 0.5, window: 1 }, [])
 * // { measure: { mean: 0.75, violation: 0.15…, sampleViolationRate: 0.25, count: 4 }, window: [{ sum: 3, count: 4 }] }
 */
export function measureConstraint(
  values: Float64Array,
  spec: Pick<ConstraintSpec, 'sense' | 'threshold' | 'sampleThreshold' | 'window'>,
  window: readonly WindowEntry[],
): MeasureResult {
  let sum = 0
  let count = 0
  let wrongSide = 0
  const below = spec.sense === '>='
  for (let i = 0; i < values.length; i++) {
    const x = values[i]
    if (x !== x) continue
    sum += x
    count++
    if (below ? x < spec.sampleThreshold : x > spec.sampleThreshold) wrongSide++
  }
  const kept = [...window.slice(Math.max(0, window.length - (spec.window - 1))), { sum, count }]
  let pooledSum = 0
  let pooledCount = 0
  for (const entry of kept) {
    pooledSum += entry.sum
    pooledCount += entry.count
  }
  const mean = pooledCount > 0 ? pooledSum / pooledCount : NaN
  return {
    measure: {
      mean,
      violation: below ? spec.threshold - mean : mean - spec.threshold,
      sampleViolationRate: count > 0 ? wrongSide / count : NaN,
      count,
    },
    window: kept,
  }
}
