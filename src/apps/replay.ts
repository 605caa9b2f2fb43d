/**
 * `dualstream replay`: a recorded stream of rollouts (JSON Lines) through the same operators
 * as the live engine, one JSON line per scored batch out. Nothing is silently dropped: each
 * input rollout is either in a batch or in one of the reported counts.
 */
import type { Readable, Writable } from 'node:stream'
import { Subscription, filter, map, tap } from 'rxjs'
import type { Config } from '../core/config.js'
import { lambdasOf, initialDualState } from '../math/dual.js'
import type { DropEvent, DropReason, DualState, Rollout, ScoredBatch } from '../core/types.js'
import { formatFieldError, validateRollout, type FieldError } from '../core/validate.js'
import { dropDuplicates, fgrpo } from '../../operators/index.js'
import { JsonLinesWriter, readJsonLines } from '../../streams/jsonLines.js'
import { batchRecord } from '../state/batchRecord.js'

/** An input line that is not JSON or not a valid rollout, when invalid input is fatal. */
export class ReplayInputError extends Error {
  constructor(
    readonly source: string,
    readonly lineNumber: number,
    readonly errors: FieldError[],
  ) {
    super(`${source}:${lineNumber}: ${errors.map((e) => (e.field === '(line)' ? e.reason : formatFieldError(e))).join('; ')}`)
    this.name = 'ReplayInputError'
  }
}

export interface ReplayOptions {
  config: Config
  input: Readable
  output: Writable
  /** Name of the input for messages (a path, or "stdin"). */
  inputName?: string
  /** `'error'` (default): the first invalid line stops the replay; `'skip'`: skip and count it. */
  onInvalid?: 'error' | 'skip'
  /** Dual state to start from (default: λ = init). */
  initialState?: DualState
  /** Called after each batch is written (progress display). */
  onBatch?: (batch: ScoredBatch, summary: ReplaySummary) => void
}

export interface ReplaySummary {
  /** Non-blank input lines. */
  lines: number
  batches: number
  /** Rollouts that ended up in a batch. */
  inBatches: number
  /** Rollouts that did not, by reason. */
  dropped: Record<DropReason, number>
  /** First problems of skipped lines (at most 20), for the report. */
  invalidSamples: string[]
  step: number
  lambda: Record<string, number>
}

/**
 * Replays JSON Lines rollouts through the FGRPO pipeline and writes one record per batch.
 * Rollouts without `ts` are taken to arrive at the time of the one before them (0 at first).
 *
 * @example
 * const summary = await replay({ config, input: createReadStream('log.jsonl'), output: process.stdout })
 */
export function replay(options: ReplayOptions): Promise<ReplaySummary> {
  const { config, input, output, inputName = 'input', onInvalid = 'error' } = options
  const initialState = options.initialState ?? initialDualState(config.constraints)
  const summary: ReplaySummary = {
    lines: 0,
    batches: 0,
    inBatches: 0,
    dropped: { invalid: 0, duplicate: 0, stale: 0, 'incomplete-group': 0 },
    invalidSamples: [],
    step: initialState.step,
    lambda: lambdasOf(initialState),
  }
  const onDrop = (event: DropEvent) => {
    summary.dropped[event.reason] += event.count
  }
  // event time of the last rollout read, for rollouts without one
  let lastTs = 0

  const rejectLine = (lineNumber: number, errors: FieldError[]): undefined => {
    const error = new ReplayInputError(inputName, lineNumber, errors)
    if (onInvalid === 'error') throw error
    summary.dropped.invalid++
    if (summary.invalidSamples.length < 20) summary.invalidSamples.push(error.message)
    return undefined
  }

  return new Promise<ReplaySummary>((resolve, reject) => {
    // created first so that an output failing at once can still stop the reading
    const subscription = new Subscription()
    // an output that fails (no such folder, a closed pipe) ends the replay with its error
    const writer = new JsonLinesWriter(output, {
      pause: () => input.pause(),
      resume: () => input.resume(),
      onError: (error) => {
        subscription.unsubscribe()
        input.destroy()
        reject(error)
      },
    })
    subscription.add(
      readJsonLines(input)
        .pipe(
          map(({ lineNumber, value, error }): Rollout | undefined => {
            summary.lines++
            if (error !== undefined) return rejectLine(lineNumber, [{ field: '(line)', reason: error }])
            const result = validateRollout(value)
            if (!result.ok) return rejectLine(lineNumber, result.errors)
            const rollout = result.rollout
            if (rollout.ts === undefined) rollout.ts = lastTs
            else lastTs = rollout.ts
            return rollout
          }),
          filter((rollout): rollout is Rollout => rollout !== undefined),
          dropDuplicates({ onDrop }),
          fgrpo(config, { initialState, onDrop }),
          tap((batch) => {
            summary.batches++
            summary.inBatches += batch.rolloutCount
            summary.step = batch.step
            for (const [channel, change] of Object.entries(batch.lambda)) summary.lambda[channel] = change.after
            writer.write(batchRecord(batch))
            options.onBatch?.(batch, summary)
          }),
        )
        .subscribe({
          error: (error) => {
            input.destroy()
            writer.end().then(() => reject(error), reject)
          },
          complete: () => writer.end().then(() => resolve(summary), reject),
        }),
    )
  })
}
