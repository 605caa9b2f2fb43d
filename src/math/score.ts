/**
 * One FGRPO step on a batch, without RxJS: measure the constraints, update the multipliers,
 * then compute the advantages with the updated λ (DESIGN §3, "order within a step").
 */
import { configChannels, type Config } from '../core/config.js'
import type { ConstraintMeasure, DualState, Group, LambdaChange, WindowEntry } from '../core/types.js'
import { computeAdvantages, type AdvantageSettings, type BatchColumns } from './advantages.js'
import { batchColumns } from './columns.js'
import { measureConstraint } from './constraints.js'
import { lambdasOf, stepDual } from './dual.js'
import { rangeStats } from './stats.js'

/** Measurements of every constraint on a batch and the windows to carry forward. */
export interface BatchMeasurement {
  constraints: Record<string, ConstraintMeasure>
  windows: Record<string, WindowEntry[]>
}

/** Measures every configured constraint on a batch's columns, pooling each window from `state`. */
export function measureBatch(columns: BatchColumns, config: Pick<Config, 'constraints'>, state: DualState): BatchMeasurement {
  const constraints: Record<string, ConstraintMeasure> = {}
  const windows: Record<string, WindowEntry[]> = {}
  const n = columns.offsets[columns.offsets.length - 1]
  for (const c of config.constraints) {
    const values = columns.columns[c.channel] ?? new Float64Array(n).fill(NaN)
    const result = measureConstraint(values, c, state.constraints[c.channel]?.window ?? [])
    constraints[c.channel] = result.measure
    windows[c.channel] = result.window
  }
  return { constraints, windows }
}

/** Advantages of a batch with the statistics reported alongside them. */
export interface AdvantageSummary {
  advantages: Float64Array
  fracZeroStd: Record<string, number>
  objectiveMeans: Record<string, number>
  advantageMean: number
  advantageStd: number
  rolloutCount: number
}

/** Computes the advantages with the given λ and summarises them and the objectives. */
export function summarizeAdvantages(columns: BatchColumns, config: AdvantageSettings, lambdas: Record<string, number>): AdvantageSummary {
  const { advantages, fracZeroStd } = computeAdvantages(columns, config, lambdas)
  const n = advantages.length
  const objectiveMeans: Record<string, number> = {}
  for (const o of config.objectives) {
    const column = columns.columns[o.channel]
    objectiveMeans[o.channel] = column === undefined ? NaN : rangeStats(column, 0, n, false).mean
  }
  const summary = rangeStats(advantages, 0, n, false)
  return { advantages, fracZeroStd, objectiveMeans, advantageMean: summary.mean, advantageStd: summary.std, rolloutCount: n }
}

/** Everything one step produces for a batch. */
export interface StepResult extends AdvantageSummary {
  step: number
  constraints: Record<string, ConstraintMeasure>
  lambda: Record<string, LambdaChange>
  dualState: DualState
}

/**
 * Runs a whole step on a batch of groups from a dual state; pure (the input state is not
 * modified). The operators `measureConstraints`, `dualAscent` and `groupAdvantages` do the
 * same in three stages.
 *
 * @example
 * const config = parseConfig({ groupSize: 2, batchGroups: 1, objectives: [{ channel: 'acc' }] })
 * const { advantages, dualState } = scoreGroups(groups, config, initialDualState(config.constraints))
 */
export function scoreGroups(groups: readonly Group[], config: Config, state: DualState): StepResult {
  const columns = batchColumns(groups, configChannels(config))
  const measured = measureBatch(columns, config, state)
  const dual = stepDual(state, config.constraints, measured.constraints, measured.windows)
  return {
    step: dual.state.step,
    constraints: measured.constraints,
    lambda: dual.lambda,
    dualState: dual.state,
    ...summarizeAdvantages(columns, config, lambdasOf(dual.state)),
  }
}
