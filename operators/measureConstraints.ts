import type { OperatorFunction } from 'rxjs'
import { configChannels, type Config } from '../src/core/config.js'
import { batchColumns } from '../src/math/columns.js'
import { measureBatch } from '../src/math/score.js'
import { initialDualState } from '../src/math/dual.js'
import type { Batch, DualState, MeasuredBatch } from '../src/core/types.js'
import { operate, subscribeUpstream } from './internal/operate.js'

export interface MeasureConstraintsOptions {
  /** Dual state to resume from (its constraint windows are used); default: empty windows. */
  initialState?: DualState
}

/**
 * Measures every configured constraint on each batch: J (pooled over the constraint's
 * window of batches), the violation e, and the per-sample violation rate. The batch is
 * laid out as float64 columns once here and the columns travel with it.
 *
 * A reward that is neither a finite number nor null errors the stream with the rollout id
 * and channel.
 *
 * The first of three stages of `scoreBatches` (measure → `dualAscent` → `groupAdvantages`),
 * for a custom pipeline that acts between them, e.g. on the measurements before λ moves.
 * Each stage keeps its own part of the dual state (this one the windows): `scoreBatches`,
 * which `fgrpo` uses, folds the whole state through one reducer instead.
 *
 * @example
 * batches$.pipe(measureConstraints(config), dualAscent(config), groupAdvantages(config))
 */
export function measureConstraints<P>(
  config: Pick<Config, 'objectives' | 'constraints'>,
  options: MeasureConstraintsOptions = {},
): OperatorFunction<Batch<P>, MeasuredBatch<P>> {
  const channels = configChannels(config)
  return operate((source, subscriber) => {
    // the windows of previous batches, per constraint
    let state: DualState = options.initialState ?? initialDualState(config.constraints)
    subscribeUpstream(source, subscriber, {
      next: (batch) => {
        const columns = batchColumns(batch.groups, channels)
        const measured = measureBatch(columns, config, state)
        state = withWindows(state, measured.windows)
        subscriber.next({ ...batch, constraints: measured.constraints, columns, windows: measured.windows })
      },
    })
  })
}

function withWindows(state: DualState, windows: MeasuredBatch['windows']): DualState {
  const constraints: DualState['constraints'] = {}
  for (const [channel, entry] of Object.entries(state.constraints)) constraints[channel] = { ...entry, window: windows[channel] ?? entry.window }
  return { step: state.step, constraints }
}
