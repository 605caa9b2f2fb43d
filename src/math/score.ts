/**
 * One FGRPO step on a batch, without RxJS: measure the constraints, update the multipliers,
 * then compute the advantages with the updated λ (DESIGN §3, "order within a step").
 * `stepBatch` is the step as a reducer over the dual state; everything that scores batches
 * (the operators, the durable engine, the replays) folds batches through it.
 */
import { configChannels, type Config } from '../core/config.js'
import type { BatchColumns, ConstraintMeasure, DualState, Group, LambdaChange, WindowEntry } from '../core/types.js'
import { computeAdvantages, type AdvantageSettings } from './advantages.js'
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

/** What a step needs from the config: the objectives, the constraints (with their dual rules) and how advantages are formed. */
export type StepSettings = AdvantageSettings

/** Everything one step produces for a batch of groups: its measurements, λ, the next dual state and the advantages. */
export interface StepResult extends AdvantageSummary {
  /** The step number of this batch: 1 for the first batch of a run. */
  step: number
  /** Each constraint measured on the batch (J pooled over its window, violation, sample rate). */
  constraints: Record<string, ConstraintMeasure>
  /** λ of each constraint before and after this batch's dual update. */
  lambda: Record<string, LambdaChange>
  /** The dual state after this step: persisting it with the batch makes a restart exact. */
  dualState: DualState
}

/**
 * Everything one step adds to a batch: a scored batch is the batch spread with these (built
 * in the order the batch carries its fields).
 */
export interface StepFigures extends StepResult {
  /** The batch as float64 columns, one per configured channel. */
  columns: BatchColumns
  /** Each constraint's window after this batch (also inside `dualState`). */
  windows: Record<string, WindowEntry[]>
}

/** What the step reducer returns: the state to carry to the next batch, and this batch's figures. */
export interface BatchStep {
  /** The dual state after the step (the same object as `figures.dualState`). */
  state: DualState
  figures: StepFigures
}

/**
 * The FGRPO step as a reducer: (dual state, a batch's groups) → (next dual state, the batch's
 * figures). Measures every constraint (pooling its window from `state`), updates every
 * multiplier on its violation, then computes the advantages with the updated λ (DESIGN §3,
 * "order within a step"). Pure: `state` and `groups` are not modified, so folding a stream of
 * batches through it from a saved state resumes a run exactly. The operator `scoreBatches`,
 * and through it `fgrpo`, the durable engine and both replays, fold batches through this
 * one function.
 *
 * A reward that is neither a finite number nor null throws a RangeError naming the rollout
 * and the channel; a `state` whose controllers do not fit `settings` throws a TypeError.
 *
 * @example
 * const config = parseConfig({ groupSize: 2, batchGroups: 1, objectives: [{ channel: 'acc' }] })
 * let state = initialDualState(config.constraints)
 * for (const groups of batches) {
 *   const { state: next, figures } = stepBatch(state, groups, config)
 *   trainer.step(groups, figures.advantages)
 *   state = next
 * }
 */
export function stepBatch(state: DualState, groups: readonly Group[], settings: StepSettings): BatchStep {
  const columns = batchColumns(groups, configChannels(settings))
  const measured = measureBatch(columns, settings, state)
  const dual = stepDual(state, settings.constraints, measured.constraints, measured.windows)
  const figures: StepFigures = {
    constraints: measured.constraints,
    columns,
    windows: measured.windows,
    step: dual.state.step,
    lambda: dual.lambda,
    dualState: dual.state,
    ...summarizeAdvantages(columns, settings, lambdasOf(dual.state)),
  }
  return { state: dual.state, figures }
}

/**
 * Runs a whole step on a batch of groups from a dual state: `stepBatch` with the arguments in
 * the order of a function call rather than a reducer, returning its figures without the
 * batch's columns and windows (`dualState` is the state for the next batch). Pure.
 *
 * @example
 * const config = parseConfig({ groupSize: 2, batchGroups: 1, objectives: [{ channel: 'acc' }] })
 * const { advantages, dualState } = scoreGroups(groups, config, initialDualState(config.constraints))
 */
export function scoreGroups(groups: readonly Group[], config: StepSettings, state: DualState): StepResult {
  const { columns: _columns, windows: _windows, ...result } = stepBatch(state, groups, config).figures
  return result
}
