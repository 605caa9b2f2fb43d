/**
 * Per-channel group-relative normalisation (DESIGN §3): Â = (x − c) / (s + ε), with the
 * centre and scale taken per group, per batch, or (scale only) not at all (Dr. GRPO).
 */
import type { Normalize } from '../core/config.js'
import { rangeStats } from './stats.js'

/**
 * Normalises one channel of a batch in place into `out` and returns how many groups carried
 * no signal for it (fewer than two valid values, or a group std not above `minStd`).
 *
 * `values` holds one entry per rollout, NaN where the channel was not scored; groups are
 * the ranges `offsets[g] .. offsets[g + 1]`. Unscored entries get 0. A group with fewer than
 * two valid values contributes 0, and so does a group whose std is not above `minStd` when the
 * centre or the scale is per group; a batch std not above `minStd` with `scale: 'batch'` makes
 * the whole channel contribute 0. With `scale: 'none'` there is no division at all, so the
 * result is exactly x − c.
 *
 * @example
 * const out = new Float64Array(4)
 * normalizeChannel(Float64Array.of(1, 0, 1, 1), Int32Array.of(0, 2, 4), GRPO_DEFAULTS, out)
 * // out ≈ [0.707, -0.707, 0, 0]; returns 1 (the second group has no variance)
 */
export function normalizeChannel(values: Float64Array, offsets: Int32Array, opts: Normalize, out: Float64Array): number {
  const population = opts.std === 'population'
  const needsBatch = opts.center === 'batch' || opts.scale === 'batch'
  const batch = needsBatch ? rangeStats(values, 0, offsets[offsets.length - 1], population) : undefined
  // with scale 'batch', a (near-)constant batch carries no signal at all
  const batchDead = opts.scale === 'batch' && !(batch!.std > opts.minStd)
  const groupLevel = opts.center === 'group' || opts.scale === 'group'
  let silentGroups = 0
  for (let g = 0; g + 1 < offsets.length; g++) {
    const start = offsets[g]
    const end = offsets[g + 1]
    const group = rangeStats(values, start, end, population)
    const flat = !(group.std > opts.minStd)
    if (group.count < 2 || flat) silentGroups++
    if (group.count < 2 || batchDead || (flat && groupLevel)) {
      out.fill(0, start, end)
      continue
    }
    const centre = opts.center === 'group' ? group.mean : batch!.mean
    const divisor = opts.scale === 'none' ? 1 : (opts.scale === 'group' ? group.std : batch!.std) + opts.eps
    for (let i = start; i < end; i++) {
      const x = values[i]
      out[i] = x === x ? (opts.scale === 'none' ? x - centre : (x - centre) / divisor) : 0
    }
  }
  return silentGroups
}
