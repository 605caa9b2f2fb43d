/**
 * The JSON form of a scored batch, as `dualstream replay` writes it: one line per batch.
 */
import type { ConstraintMeasure, LambdaChange, ScoredBatch } from '../core/types.js'

/** NaN (no data) becomes null in JSON; numbers pass through. */
export const finiteOrNull = (x: number): number | null => (Number.isFinite(x) ? x : null)

export interface BatchRecord {
  step: number
  groups: number
  rollouts: number
  partialGroups: number
  lambda: Record<string, LambdaChange>
  constraints: Record<string, { mean: number | null; violation: number | null; sampleViolationRate: number | null; count: number }>
  objectives: Record<string, number | null>
  fracZeroStd: Record<string, number>
  advantages: Record<string, number>
}

/** Constraint measures with NaN as null. */
export function constraintsRecord(constraints: Record<string, ConstraintMeasure>): BatchRecord['constraints'] {
  const out: BatchRecord['constraints'] = {}
  for (const [channel, m] of Object.entries(constraints)) {
    out[channel] = {
      mean: finiteOrNull(m.mean),
      violation: finiteOrNull(m.violation),
      sampleViolationRate: finiteOrNull(m.sampleViolationRate),
      count: m.count,
    }
  }
  return out
}

/** A batch's summary: everything in its record but the per-rollout advantages. */
export type BatchSummary = Omit<BatchRecord, 'advantages'> & { advantageMean: number | null; advantageStd: number | null }

/** Summarises a batch: counts, λ before/after, measurements, objective means, advantage mean and std. */
export function batchSummary(batch: ScoredBatch): BatchSummary {
  const objectives: Record<string, number | null> = {}
  for (const [channel, mean] of Object.entries(batch.objectiveMeans)) objectives[channel] = finiteOrNull(mean)
  return {
    step: batch.step,
    groups: batch.groups.length,
    rollouts: batch.rolloutCount,
    partialGroups: batch.groups.reduce((n, g) => n + (g.partial ? 1 : 0), 0),
    lambda: batch.lambda,
    constraints: constraintsRecord(batch.constraints),
    objectives,
    fracZeroStd: batch.fracZeroStd,
    advantageMean: finiteOrNull(batch.advantageMean),
    advantageStd: finiteOrNull(batch.advantageStd),
  }
}

/** Builds the record of a batch as `replay` writes it: the summary and each rollout's advantage by id. */
export function batchRecord(batch: ScoredBatch): BatchRecord {
  const advantages: Record<string, number> = {}
  let i = 0
  for (const group of batch.groups) for (const rollout of group.rollouts) advantages[rollout.id] = batch.advantages[i++]
  const { advantageMean: _mean, advantageStd: _std, ...summary } = batchSummary(batch)
  return { ...summary, advantages }
}
