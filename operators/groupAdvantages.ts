import type { OperatorFunction } from 'rxjs'
import type { AdvantageSettings } from '../src/math/advantages.js'
import { summarizeAdvantages } from '../src/math/score.js'
import type { DualBatch, ScoredBatch } from '../src/core/types.js'
import { operate, subscribeUpstream } from './internal/operate.js'

/**
 * Computes every rollout's advantage with the batch's updated multipliers: per-channel
 * group-relative normalisation, then `normalize-then-sum` or `sum-then-normalize`, optional
 * division by (1 + Σλ) and batch whitening (DESIGN §3).
 *
 * The last of three stages of `scoreBatches` (`measureConstraints` → `dualAscent` →
 * advantages), for a custom pipeline that acts between them, e.g. one that adjusts λ before
 * the advantages use it. Stateless. `fgrpo` uses `scoreBatches`.
 *
 * @example
 * batches$.pipe(measureConstraints(config), dualAscent(config), groupAdvantages(config))
 *   .subscribe((b) => trainer.step(b.groups.flatMap((g) => g.rollouts), b.advantages))
 */
export function groupAdvantages<P>(config: AdvantageSettings): OperatorFunction<DualBatch<P>, ScoredBatch<P>> {
  return operate((source, subscriber) => {
    subscribeUpstream(source, subscriber, {
      next: (batch) => {
        const lambdas: Record<string, number> = {}
        for (const [channel, change] of Object.entries(batch.lambda)) lambdas[channel] = change.after
        subscriber.next({ ...batch, ...summarizeAdvantages(batch.columns, config, lambdas) })
      },
    })
  })
}
