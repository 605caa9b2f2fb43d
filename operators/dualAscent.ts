import type { OperatorFunction } from 'rxjs'
import type { Config } from '../src/core/config.js'
import { dualStateProblems, initialDualState, stepDual, upgradeDualState } from '../src/math/dual.js'
import type { DualBatch, DualState, MeasuredBatch } from '../src/core/types.js'
import { operate, subscribeUpstream } from './internal/operate.js'

export interface DualAscentOptions {
  /** Dual state to resume from (step counter and controllers); default: λ = init, step 0. */
  initialState?: DualState
}

/**
 * Updates each constraint's Lagrange multiplier from the batch's measured violation and
 * numbers the batch (`step`). Each emitted batch carries λ before and after, and the whole
 * dual state after the step, which is what a store persists with the batch to resume exactly.
 *
 * The second of three stages of `scoreBatches` (`measureConstraints` → dual ascent →
 * `groupAdvantages`), for a custom pipeline that acts between them; give both stateful
 * stages the same `initialState` to resume. `fgrpo` uses `scoreBatches`.
 *
 * @example
 * batches$.pipe(measureConstraints(config), dualAscent(config, { initialState: saved }))
 */
export function dualAscent<P>(config: Pick<Config, 'constraints'>, options: DualAscentOptions = {}): OperatorFunction<MeasuredBatch<P>, DualBatch<P>> {
  // a state saved by an older version is brought to today's form first
  const initialState = options.initialState === undefined ? undefined : upgradeDualState(options.initialState, config.constraints)
  if (initialState !== undefined) {
    const problems = dualStateProblems(initialState, config.constraints)
    if (problems.length > 0) throw new Error(`dualAscent: the initial state does not fit the config:\n  ${problems.join('\n  ')}`)
  }
  return operate((source, subscriber) => {
    // controllers and step counter, advanced once per batch
    let state = initialState ?? initialDualState(config.constraints)
    subscribeUpstream(source, subscriber, {
      next: (batch) => {
        const result = stepDual(state, config.constraints, batch.constraints, batch.windows)
        state = result.state
        subscriber.next({ ...batch, step: state.step, lambda: result.lambda, dualState: state })
      },
    })
  })
}
