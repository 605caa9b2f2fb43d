import { pipe, type Observable, type OperatorFunction, type SchedulerLike } from 'rxjs'
import type { Config } from '../src/core/config.js'
import type { DropEvent, DualState, Rollout, ScoredBatch } from '../src/core/types.js'
import { completeGroups } from './completeGroups.js'
import { dropStale } from './dropStale.js'
import { scoreBatches } from './scoreBatches.js'
import { windowBatches } from './windowBatches.js'

export interface FgrpoOptions {
  /** Dual state to resume from (step, controllers, windows). */
  initialState?: DualState
  /** Trainer policy versions for `maxStaleness` (default: the newest version seen in the stream). */
  policyVersions?: Observable<number>
  /** Watermarks that advance event time while nothing arrives (group timeouts, batch waits). */
  watermarks?: Observable<number>
  /** Event time of a rollout (default: its `ts`, else the scheduler's clock). */
  eventTime?: (rollout: Rollout) => number
  /** Clock for rollouts without `ts`. */
  scheduler?: SchedulerLike
  /** Told of every rollout that does not reach a batch, with the reason. */
  onDrop?: (event: DropEvent) => void
}

/**
 * The whole Faithful-GRPO pipeline from rollouts to scored batches: drop stale rollouts
 * (when `maxStaleness` is set), complete groups by prompt, window them into batches, and
 * score each batch with one step (`scoreBatches`: measure the constraints, update the
 * multipliers, compute the advantages). With no constraints it is plain GRPO (or Dr. GRPO
 * with `scale: 'none'`). The durable engine, its restart and both replays run this pipeline.
 *
 * Ids are expected to be unique already: the durable engine deduplicates against its LMDB
 * index at ingest; put `dropDuplicates()` in front for any other untrusted source.
 *
 * @example
 * const config = loadConfig('fgrpo.json')
 * rollouts$.pipe(fgrpo(config, { onDrop: (e) => counts[e.reason] += e.count }))
 *   .subscribe((batch) => console.log(batch.step, batch.lambda))
 */
export function fgrpo<P>(config: Config, options: FgrpoOptions = {}): OperatorFunction<Rollout<P>, ScoredBatch<P>> {
  const { onDrop, watermarks } = options
  const stale: OperatorFunction<Rollout<P>, Rollout<P>> = config.maxStaleness === undefined
    ? (source) => source
    : dropStale<P>({ maxStaleness: config.maxStaleness, policyVersions: options.policyVersions, onDrop })
  return pipe(
    stale,
    completeGroups<P>({
      groupSize: config.groupSize,
      minGroupSize: config.minGroupSize,
      timeoutMs: config.groupTimeoutMs,
      eventTime: options.eventTime,
      scheduler: options.scheduler,
      watermarks,
      onDrop,
    }),
    windowBatches<P>({ size: config.batchGroups, maxWaitMs: config.batchMaxWaitMs, watermarks }),
    scoreBatches<P>(config, { initialState: options.initialState }),
  )
}
