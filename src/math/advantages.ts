/**
 * Combination of normalised channels into one advantage per rollout (DESIGN §3):
 * decoupled `normalize-then-sum` (FGRPO) or `sum-then-normalize` (constraints folded into
 * the reward), optional division by (1 + Σλ) and optional batch whitening.
 */
import type { Config, Normalize } from '../core/config.js'
import type { BatchColumns } from '../core/types.js'
import { normalizeChannel } from './normalize.js'
import { rangeStats } from './stats.js'

/** The columnar batch layout, declared with the core types. */
export type { BatchColumns }

/** What the advantage computation needs from the config. */
export type AdvantageSettings = Pick<Config, 'objectives' | 'constraints' | 'aggregation' | 'scaleByLambda' | 'whiten' | 'normalize'>

/** Advantages aligned with the columns, and the per-channel share of groups without signal. */
export interface AdvantageResult {
  advantages: Float64Array
  fracZeroStd: Record<string, number>
}

/** +1 for a '>=' constraint (higher is better), −1 for '<=' (a cost). */
export const senseSign = (sense: '>=' | '<='): number => (sense === '>=' ? 1 : -1)

/**
 * Computes the advantage of every rollout of a batch with the given multipliers.
 *
 * @example
 * const { advantages } = computeAdvantages(
 *   { offsets: Int32Array.of(0, 4), columns: { accuracy: Float64Array.of(1, 0, 0, 1) } },
 *   parseConfig({ groupSize: 4, batchGroups: 1, objectives: [{ channel: 'accuracy' }] }),
 *   {},
 * )
 */
export function computeAdvantages(batch: BatchColumns, settings: AdvantageSettings, lambdas: Record<string, number>): AdvantageResult {
  const n = batch.offsets[batch.offsets.length - 1]
  const groups = batch.offsets.length - 1
  const advantages = new Float64Array(n)
  const scratch = scratchOf(n)
  const fracZeroStd: Record<string, number> = {}
  const terms = [
    ...settings.objectives.map((o) => ({ channel: o.channel, coefficient: o.weight, normalize: o.normalize })),
    ...settings.constraints.map((c) => ({
      channel: c.channel,
      coefficient: senseSign(c.sense) * lambdaOf(lambdas, c.channel),
      normalize: c.normalize,
    })),
  ]
  let lambdaSum = 0
  for (const c of settings.constraints) lambdaSum += lambdaOf(lambdas, c.channel)

  if (settings.aggregation === 'normalize-then-sum') {
    for (const term of terms) {
      const silent = normalizeChannel(column(batch, term.channel, n), batch.offsets, term.normalize, scratch)
      fracZeroStd[term.channel] = groups === 0 ? 0 : silent / groups
      if (term.coefficient === 0) continue
      for (let i = 0; i < n; i++) advantages[i] += term.coefficient * scratch[i]
    }
  } else {
    // One reward r = Σ w·x + Σ σλ·x; a rollout missing any term that counts is not scored.
    const combined = new Float64Array(n)
    for (const term of terms) {
      const values = column(batch, term.channel, n)
      fracZeroStd[term.channel] = groups === 0 ? 0 : normalizeChannel(values, batch.offsets, term.normalize, scratch) / groups
      if (term.coefficient === 0) continue
      for (let i = 0; i < n; i++) combined[i] += term.coefficient * values[i]
    }
    normalizeChannel(combined, batch.offsets, settings.normalize, advantages)
  }

  if (settings.scaleByLambda && lambdaSum !== 0) {
    const factor = 1 / (1 + lambdaSum)
    for (let i = 0; i < n; i++) advantages[i] *= factor
  }
  if (settings.whiten === 'batch') whiten(advantages, settings.normalize)
  return { advantages, fracZeroStd }
}

/** Standardises the advantages over the whole batch; a flat batch becomes all zeros. */
function whiten(advantages: Float64Array, normalize: Normalize): void {
  const stats = rangeStats(advantages, 0, advantages.length, normalize.std === 'population')
  if (!(stats.std > normalize.minStd)) {
    advantages.fill(0)
    return
  }
  const divisor = stats.std + normalize.eps
  for (let i = 0; i < advantages.length; i++) advantages[i] = (advantages[i] - stats.mean) / divisor
}

// one normalised channel at a time, reused across calls: only this function's loop reads it
let scratchBuffer = new Float64Array(1024)

/** A scratch column of `n` entries (contents undefined). */
function scratchOf(n: number): Float64Array {
  if (scratchBuffer.length < n) scratchBuffer = new Float64Array(Math.max(n, 2 * scratchBuffer.length))
  return scratchBuffer.subarray(0, n)
}

function lambdaOf(lambdas: Record<string, number>, channel: string): number {
  return lambdas[channel] ?? 0
}

/** A channel nobody scored is an all-NaN column: it yields 0 advantages and counts as silent. */
function column(batch: BatchColumns, channel: string, n: number): Float64Array {
  return batch.columns[channel] ?? new Float64Array(n).fill(NaN)
}
