/**
 * The JSON form of a scored batch, as `dualstream replay` writes it: one line per batch.
 */
import type { ConstraintMeasure, LambdaChange, ScoredBatch } from '../types.js'

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
    out[channel] = { mean: finiteOrNull(m.mean), violation: finiteOrNull(m.violation), sampleViolationRate: finiteOrNull(m.sampleViolationRate), count: m.count }
  }
  return out
}

/** Builds the record of a batch: counts, λ before/after, measurements and each rollout's advantage by id. */
export function batchRecord(batch: ScoredBatch): BatchRecord {
  const advantages: Record<string, number> = {}
  let i = 0
  let partialGroups = 0
  for (const group of batch.groups) {
    if (group.partial) partialGroups++
    for (const rollout of group.rollouts) advantages[rollout.id] = batch.advantages[i++]
  }
  const objectives: Record<string, number | null> = {}
  for (const [channel, mean] of Object.entries(batch.objectiveMeans)) objectives[channel] = finiteOrNull(mean)
  return {
    step: batch.step,
    groups: batch.groups.length,
    rollouts: batch.rolloutCount,
    partialGroups,
    lambda: batch.lambda,
    constraints: constraintsRecord(batch.constraints),
    objectives,
    fracZeroStd: batch.fracZeroStd,
    advantages,
  }
}
