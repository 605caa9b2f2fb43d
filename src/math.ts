/**
 * `dualstream/math`: the FGRPO step as plain functions over arrays and records — constraint
 * measurement, the dual controllers, group-normalised advantages, the batch step that scores
 * groups — with no RxJS and no I/O, for a trainer that batches rollouts itself.
 *
 * @example
 * import { initialDualState, scoreGroups } from 'dualstream/math'
 * const state = initialDualState(config.constraints)
 * const { advantages, lambda, dualState } = scoreGroups(groups, config, state)
 */
export * from './math/advantages.js'
export * from './math/columns.js'
export * from './math/constraints.js'
export * from './math/dual.js'
export * from './math/normalize.js'
export * from './math/sample.js'
export * from './math/score.js'
export * from './math/stats.js'
// the shapes the functions take and return (types only: nothing more is loaded)
export type * from './core/types.js'
export type { Config, ConstraintSpec, DualRule, LogRule, Normalize, ObjectiveSpec, PidRule, SgdRule } from './core/config.js'
// the seeded generator sampleCategorical draws from
export { Rng, deriveSeed, splitmix32 } from './core/rng.js'
