/**
 * The benchmarks' rollouts: synthetic FGRPO rollouts for the bench's config (G = 8), deterministic.
 */
import type { Rollout } from '../../core/types.js'

/** Synthetic rollouts, deterministic: binary accuracy and consistency, real grounding, some unscored. */
export function syntheticRollouts(n: number, groupSize = 8): Rollout[] {
  const out: Rollout[] = new Array(n)
  let state = 12345
  const random = () => (state = (Math.imul(state, 1103515245) + 12345) >>> 0) / 4294967296
  for (let i = 0; i < n; i++) {
    out[i] = {
      id: `r${i}`,
      promptId: `p${Math.floor(i / groupSize)}`,
      rewards: { accuracy: random() < 0.5 ? 1 : 0, consistency: random() < 0.8 ? 1 : 0, grounding: random() < 0.02 ? null : random() },
      policyVersion: 0,
      ts: i,
    }
  }
  return out
}
