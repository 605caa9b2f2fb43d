/**
 * The FGRPO operator chain driven record by record from the ingest log — the same code for
 * the live engine, its restart, and `replay --log`, so all three give the same batches (each
 * scored by the one step reducer, `stepBatch`, that `fgrpo` folds through `scoreBatches`).
 */
import { Subject, type Subscription } from 'rxjs'
import type { Config } from '../core/config.js'
import type { DropEvent, DualState, Rollout, ScoredBatch } from '../core/types.js'
import type { LogRecord } from './engineStore.js'
import { fgrpo } from '../../operators/fgrpo.js'
import { SeqWindow } from './seqWindow.js'

export interface EnginePipelineOptions<P> {
  /** Dual state to resume from. */
  initialState?: DualState
  /** Policy version in effect before the first record fed. */
  initialPolicyVersion?: number
  /** A scored batch, with the seqs it consumed plus those dropped since the previous batch. */
  onBatch: (batch: ScoredBatch<P>, consumedSeqs: number[]) => void
  onDrop?: (event: DropEvent) => void
  onError: (error: unknown) => void
}

/**
 * Feeds log records into `fgrpo` (rollouts, watermarks and policy versions, in seq order) and
 * tracks which fed rollouts are still inside the pipeline: the smallest of their seqs is the
 * low-water mark a restart reads the log from.
 */
export class EnginePipeline<P = unknown> {
  private readonly rollouts = new Subject<Rollout<P>>()
  private readonly watermarks = new Subject<number>()
  private readonly policyVersions = new Subject<number>()
  private readonly subscription: Subscription
  // seqs of fed rollouts not yet in a batch nor dropped
  private readonly inside = new SeqWindow()
  // seqs that left the pipeline since the last batch
  private departed: number[] = []
  private lastFed = -1

  constructor(
    config: Config,
    private readonly options: EnginePipelineOptions<P>,
  ) {
    const onDrop = (event: DropEvent) => {
      for (const rollout of event.rollouts) this.depart(rollout.seq!)
      options.onDrop?.(event)
    }
    this.subscription = this.rollouts
      .pipe(
        fgrpo<P>(config, {
          initialState: options.initialState,
          watermarks: this.watermarks,
          policyVersions: this.policyVersions,
          eventTime: (rollout) => rollout.ts!,
          onDrop,
        }),
      )
      .subscribe({
        next: (batch) => {
          for (const group of batch.groups) for (const rollout of group.rollouts) this.depart(rollout.seq!)
          const consumed = this.departed
          this.departed = []
          options.onBatch(batch, consumed)
        },
        error: (error) => options.onError(error),
      })
    if (options.initialPolicyVersion !== undefined) this.policyVersions.next(options.initialPolicyVersion)
  }

  private depart(seq: number): void {
    this.inside.remove(seq)
    this.departed.push(seq)
  }

  /** Feeds one rollout (stamped with `seq` and `ts`); seqs must increase. */
  feedRollout(rollout: Rollout<P>): void {
    this.lastFed = rollout.seq!
    this.inside.add(rollout.seq!)
    this.rollouts.next(rollout)
  }

  /** Feeds one record; records must come in increasing seq order. */
  feed(record: LogRecord): void {
    this.lastFed = record.seq
    switch (record.kind) {
      case 'rollout':
        this.feedRollout(record.rollout as Rollout<P>)
        break
      case 'watermark':
        this.watermarks.next(record.ts)
        break
      case 'policy':
        this.policyVersions.next(record.version)
        break
    }
  }

  /** Smallest seq a restart must read the log from to rebuild the pipeline's contents. */
  lowWater(): number {
    return this.inside.lowest(this.lastFed + 1)
  }

  /** Rollouts inside the pipeline (pending groups and the batch being filled). */
  get pendingRollouts(): number {
    return this.inside.size
  }

  /** Ends the input: pending groups and the last partial batch are flushed (replay only). */
  complete(): void {
    this.rollouts.complete()
  }

  close(): void {
    this.subscription.unsubscribe()
  }
}
