/**
 * Sampling tokens from log-probability rows by inverse CDF with the seeded generator, so a run is
 * reproducible from its seed (the ONNX graph is deterministic; all randomness is here).
 */
import type { Rng } from '../core/rng.js'

export interface SampledTokens {
  readonly tokens: Int32Array
  /** log π(token) of each sampled token, as computed by the forward graph. */
  readonly logProbs: Float32Array
}

/**
 * One token per row of `logProbs` ([rows, vocab], row-major). Draw u ~ U[0,1) and take the first
 * token whose cumulative probability exceeds u; when float32 rounding leaves the total short of u,
 * take the last token with non-zero probability (never a masked one).
 */
export function sampleCategorical(logProbs: Float32Array, rows: number, vocab: number, rng: Rng): SampledTokens {
  if (logProbs.length !== rows * vocab) throw new Error(`sampleCategorical: ${logProbs.length} log-probs is not rows (${rows}) × vocab (${vocab})`)
  const tokens = new Int32Array(rows)
  const chosen = new Float32Array(rows)
  for (let r = 0; r < rows; r++) {
    const base = r * vocab
    const u = rng.next()
    let cum = 0
    let pick = -1
    let lastNonZero = -1
    for (let t = 0; t < vocab; t++) {
      const p = Math.exp(logProbs[base + t])
      if (p > 0) lastNonZero = t
      cum += p
      if (cum > u) {
        pick = t
        break
      }
    }
    if (pick < 0) pick = lastNonZero
    if (pick < 0) throw new Error(`sampleCategorical: row ${r} has no token with non-zero probability`)
    tokens[r] = pick
    chosen[r] = logProbs[base + pick]
  }
  return { tokens, logProbs: chosen }
}

/** The most likely token of each row (greedy decoding). */
export function argmaxRows(logProbs: Float32Array, rows: number, vocab: number): Int32Array {
  const out = new Int32Array(rows)
  for (let r = 0; r < rows; r++) {
    let best = 0
    for (let t = 1; t < vocab; t++) if (logProbs[r * vocab + t] > logProbs[r * vocab + best]) best = t
    out[r] = best
  }
  return out
}
