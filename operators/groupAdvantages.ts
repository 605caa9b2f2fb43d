import type { OperatorFunction } from 'rxjs'
import type { AdvantageSettings } from '../src/math/advantages.js'
import { summarizeAdvantages } from '../src/math/score.js'
import type { DualBatch, ScoredBatch } from '../src/core/types.js'
import { operate, OperatorSubscriber } from './internal/operate.js'

/**
 * Computes every rollout's advantage with the batch's updated multipliers: per-channel
 * group-relative normalisation, then `normalize-then-sum` or `sum-then-normalize`, optional
 * division by (1 + Σλ) and batch whitening (DESIGN §3).
 *
 * @example
 * batches$.pipe(measureConstraints(config), dualAscent(config), groupAdvantages(config))
 *   .subscribe((b) => trainer.step(b.groups.flatMap((g) => g.rollouts), b.advantages))
 */
export function groupAdvantages<P>(config: AdvantageSettings): OperatorFunction<DualBatch<P>, ScoredBatch<P>> {
  return operate((source, subscriber) => {
    source.subscribe(
      new OperatorSubscriber<DualBatch<P>>(subscriber, {
        next: (batch) => {
          const lambdas: Record<string, number> = {}
          for (const [channel, change] of Object.entries(batch.lambda)) lambdas[channel] = change.after
          subscriber.next({ ...batch, ...summarizeAdvantages(batch.columns, config, lambdas) })
        },
      }),
    )
  })
}
