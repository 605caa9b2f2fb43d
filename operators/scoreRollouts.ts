import {
  asyncScheduler,
  bufferCount,
  bufferTime,
  concatMap,
  filter,
  from,
  map,
  mergeMap,
  pipe,
  type ObservableInput,
  type OperatorFunction,
  type SchedulerLike,
} from 'rxjs'
import type { Rollout } from '../src/core/types.js'

/** A model over a batch: `features` is [rows, featureDim] row-major; one score per row back. */
export type ScoringModel = (features: Float32Array, rows: number) => ObservableInput<ArrayLike<number>>

export interface ScoreRolloutsOptions<P> {
  /** The reward channel the score is written to. */
  channel: string
  /** Width of one rollout's feature vector. */
  featureDim: number
  /** The features of one rollout (e.g. token ids, embeddings, or the payload's fields). */
  features: (rollout: Rollout<P>) => ArrayLike<number>
  /** The model, e.g. `(await loadOnnxScorer('judge.onnx')).run`. */
  model: ScoringModel
  /** Rollouts per model call (default 256). */
  batchSize?: number
  /** With it, a batch is also sent when its first rollout has waited this long (live streams). */
  maxWaitMs?: number
  scheduler?: SchedulerLike
}

/**
 * Fills a reward channel by running a model over the rollouts — a user's own consistency or
 * grounding judge, say — in batches, keeping their order. A feature vector of the wrong size,
 * a model that returns the wrong number of scores or a non-finite score errors the stream
 * with the rollout id.
 *
 * @example
 * const judge = await loadOnnxScorer('consistency-judge.onnx')
 * rollouts$.pipe(scoreRollouts({ channel: 'consistency', featureDim: 64, features: (r) => r.payload.embedding, model: judge.run }), fgrpo(config))
 */
export function scoreRollouts<P>(options: ScoreRolloutsOptions<P>): OperatorFunction<Rollout<P>, Rollout<P>> {
  const { channel, featureDim, batchSize = 256, maxWaitMs, scheduler } = options
  const batches: OperatorFunction<Rollout<P>, Rollout<P>[]> = maxWaitMs === undefined
    ? bufferCount<Rollout<P>>(batchSize)
    : pipe(
        bufferTime<Rollout<P>>(maxWaitMs, null, batchSize, scheduler ?? asyncScheduler),
        filter((batch) => batch.length > 0),
      )
  return pipe(
    batches,
    concatMap((batch) => {
      const input = new Float32Array(batch.length * featureDim)
      batch.forEach((rollout, row) => {
        const values = options.features(rollout)
        if (values.length !== featureDim)
          throw new RangeError(`scoreRollouts(${channel}): rollout "${rollout.id}" has ${values.length} features, the model takes ${featureDim}`)
        input.set(values, row * featureDim)
      })
      return from(options.model(input, batch.length)).pipe(
        map((scores) => {
          if (scores.length !== batch.length)
            throw new RangeError(`scoreRollouts(${channel}): the model returned ${scores.length} scores for ${batch.length} rollouts`)
          return batch.map((rollout, row) => {
            const score = Number(scores[row])
            if (!Number.isFinite(score)) throw new RangeError(`scoreRollouts(${channel}): the model scored rollout "${rollout.id}" ${score}`)
            return { ...rollout, rewards: { ...rollout.rewards, [channel]: score } }
          })
        }),
      )
    }),
    mergeMap((scored) => scored),
  )
}
