/**
 * The sequencer of a cluster run without I/O (DESIGN §8, cluster spec §3): the GROUPS stream
 * in, the BATCHES stream out. It runs the rest of the single-node pipeline unchanged —
 * `windowBatches` → `scoreBatches`, driven synchronously through Subjects as pipeline.ts does
 * — on the groups the partition owners formed, and turns each scored batch into the
 * BatchEntry that is the engine's state after it. `Sequencer` (sequencer.ts) is the NATS
 * shell around it: it reads GROUPS from `resumeFrom`, feeds every message here and publishes
 * what comes out.
 *
 * Resuming: the last BatchEntry on BATCHES says where to read GROUPS from (`resumeFrom`), the
 * event time to restart the clock at (`watermark`) and the dual state. When a batch closed in
 * the middle of a GroupsEntry (it filled up, or a group's event time closed it by maxWait and
 * then started the next one), `resumeFrom` is that entry's own seq, and the groups of it
 * already in a batch are skipped when it is fed again: they are those up to the last group of
 * the last batch, whose position the entry names (its last `groupsAt` run).
 */
import { Subject, type Subscription } from 'rxjs'
import type { Config } from '../../core/config.js'
import type { DualState, Group, ScoredBatch } from '../../core/types.js'
import { initialDualState } from '../../math/dual.js'
import { scoreBatches } from '../../../operators/scoreBatches.js'
import { windowBatches } from '../../../operators/windowBatches.js'
import { batchSummary } from '../batchRecord.js'
import type { PipelineCounters } from '../commitPlan.js'
import { bytesOfFloat64s } from './float64Bytes.js'
import {
  scoringEntryOf,
  type BatchEntry,
  type DropCounts,
  type GroupsEntry,
  type GroupsRun,
  type GroupsWatermark,
  type ScoringGroupsEntry,
} from './messages.js'

/** What the group being fed is: where it came from, so a batch it closes knows where to resume. */
interface Feeding {
  seq: number
  group: Group
  /** Its index in the GroupsEntry, and how many groups the entry has. */
  index: number
  count: number
}

/**
 * The sequencer's pipeline: feed it the GROUPS stream in order, from `resumeFrom`; it returns
 * the BatchEntries each message completes.
 *
 * @example
 * const state = new SequencerState(config, lastBatchEntry)
 * for (const { seq, data } of groupsFrom(state.resumeFrom))
 *   for (const entry of state.feed(seq, decodeMessage(data))) await publish(entry)
 */
export class SequencerState {
  private readonly groups = new Subject<Group>()
  private readonly watermarks = new Subject<number>()
  private readonly subscription: Subscription
  private readonly completed: BatchEntry[] = []
  // replaced, never changed, when a message brings its partition's drops: the entries made until the next share it
  private partitionDrops: Readonly<Record<string, DropCounts>>
  private dropTotals: Omit<DropCounts, 'duplicate'>
  private readonly counters: { batches: number; rolloutsInBatches: number }
  private failure: { error: unknown } | undefined
  private feeding: Feeding | undefined
  private nextSeq: number
  private pending = 0
  private clock = -Infinity
  // where each group waiting in a batch came from on GROUPS, [seq, index in its message], and its newest rollout's time
  private readonly positions = new Map<Group, [number, number, number]>()
  // the GROUPS message the last batch's last group is in and the groups of it already in a batch (skipped when it is fed again)
  private readonly resumeAfter: { seq: number; skip: number } | undefined

  /** Resumes after `last` (the last BatchEntry on the BATCHES stream), or starts fresh. */
  constructor(config: Config, last?: BatchEntry) {
    if (last !== undefined && (last.state === undefined || last.partitionDrops === undefined))
      throw new Error(`sequencer: step ${last.step} carries no state (only the last step of a BATCHES message does): resume from that one`)
    const initialState: DualState = last?.state ?? initialDualState(config.constraints)
    this.nextSeq = last?.resumeFrom ?? 1
    this.partitionDrops = { ...last?.partitionDrops }
    this.dropTotals = totalsOf(this.partitionDrops)
    this.counters = { batches: last?.pipeline.batches ?? 0, rolloutsInBatches: last?.pipeline.rolloutsInBatches ?? 0 }
    const lastRun = last?.groupsAt.at(-1)
    this.resumeAfter = lastRun === undefined ? undefined : { seq: lastRun[0], skip: lastRun[1] + lastRun[2] }
    this.subscription = this.groups
      .pipe(
        windowBatches<unknown>({ size: config.batchGroups, maxWaitMs: config.batchMaxWaitMs, watermarks: this.watermarks }),
        scoreBatches<unknown>(config, { initialState }),
      )
      .subscribe({
        next: (batch) => this.completed.push(this.entryOf(batch)),
        error: (error: unknown) => (this.failure = { error }),
      })
    // the event-time clock resumes where it was when the last batch closed
    if (last !== undefined) this.advance(last.watermark)
  }

  /** The GROUPS stream seq to read from (the next one to feed). */
  get resumeFrom(): number {
    return this.nextSeq
  }

  /** Groups waiting in the batch being filled. */
  get pendingGroups(): number {
    return this.pending
  }

  /** Event time: the largest group time or watermark fed (−Infinity before any). */
  get watermark(): number {
    return this.clock
  }

  /**
   * Feeds the GROUPS message at stream seq `seq` (seqs must increase, from `resumeFrom`); returns
   * the BatchEntries it completed, in step order. Throws when a batch cannot be scored (a
   * reward that is not a number), and from then on.
   */
  feed(seq: number, message: GroupsEntry | GroupsWatermark): BatchEntry[] {
    return this.feedScoring(seq, 'wm' in message ? message : scoringEntryOf(message))
  }

  /** As `feed`, with the groups ready to score (`decodeGroupsForScoring`: the sequencer's own path, nothing built twice). */
  feedScoring(seq: number, message: ScoringGroupsEntry | GroupsWatermark): BatchEntry[] {
    this.throwFailure()
    if (seq < this.nextSeq) throw new Error(`sequencer: GROUPS message ${seq} fed after ${this.nextSeq - 1} (feed in stream order, from resumeFrom)`)
    if ('wm' in message) {
      this.nextSeq = seq + 1
      this.advance(message.wm)
    } else {
      this.partitionDrops = { ...this.partitionDrops, [message.p]: message.drops }
      this.dropTotals = totalsOf(this.partitionDrops)
      const skip = this.resumeAfter?.seq === seq ? this.resumeAfter.skip : 0
      const count = message.groups.length
      this.nextSeq = seq + 1
      for (let index = skip; index < count && this.failure === undefined; index++) {
        const group = message.groups[index]
        this.feeding = { seq, group, index, count }
        this.positions.set(group, [seq, index, message.newestTs?.[index] ?? newestTsOf(group)])
        if (group.ts > this.clock) this.clock = group.ts
        this.pending++
        this.groups.next(group)
      }
      this.feeding = undefined
    }
    const completed = this.completed.splice(0)
    this.throwFailure()
    return completed
  }

  /** Throws the error that stopped the pipeline, if one did. */
  private throwFailure(): void {
    if (this.failure !== undefined) throw this.failure.error
  }

  /** Stops the pipeline (nothing more comes out). */
  close(): void {
    this.subscription.unsubscribe()
  }

  private advance(watermark: number): void {
    if (watermark > this.clock) this.clock = watermark
    this.watermarks.next(watermark)
  }

  private entryOf(batch: ScoredBatch): BatchEntry {
    this.pending -= batch.groups.length
    this.counters.batches++
    this.counters.rolloutsInBatches += batch.rolloutCount
    // resume at the entry being fed while some of its groups are not in this batch nor an earlier one
    const feeding = this.feeding
    let resumeFrom = this.nextSeq
    if (feeding !== undefined) {
      const through = batch.groups[batch.groups.length - 1] === feeding.group ? feeding.index : feeding.index - 1
      if (through < feeding.count - 1) resumeFrom = feeding.seq
    }
    const { batches, rolloutsInBatches } = this.counters
    const { stale, incompleteGroups, incompleteGroupRollouts } = this.dropTotals
    const pipeline: PipelineCounters = { batches, rolloutsInBatches, stale, incompleteGroups, incompleteGroupRollouts }
    let newestTs = 0
    const groups: GroupsRun[] = []
    for (const group of batch.groups) {
      const [seq, index, newest] = this.positions.get(group)!
      if (newest > newestTs) newestTs = newest
      this.positions.delete(group)
      const run = groups[groups.length - 1]
      if (run !== undefined && run[0] === seq && run[1] + run[2] === index) run[2]++
      else groups.push([seq, index, 1])
    }
    return {
      step: batch.step,
      resumeFrom,
      watermark: batch.ts,
      state: batch.dualState,
      pipeline,
      partitionDrops: this.partitionDrops,
      summary: batchSummary(batch),
      newestTs,
      groupsAt: groups,
      advantages: bytesOfFloat64s(batch.advantages),
    }
  }
}

/** The event time of a group's newest rollout. */
function newestTsOf(group: Group): number {
  let newest = -Infinity
  for (const rollout of group.rollouts) if (rollout.ts! > newest) newest = rollout.ts!
  return newest
}

/** The drops of every partition added up (duplicates are not a pipeline counter: the ingest's). */
function totalsOf(partitionDrops: Readonly<Record<string, DropCounts>>): Omit<DropCounts, 'duplicate'> {
  const totals = { stale: 0, incompleteGroups: 0, incompleteGroupRollouts: 0 }
  for (const drops of Object.values(partitionDrops)) {
    totals.stale += drops.stale
    totals.incompleteGroups += drops.incompleteGroups
    totals.incompleteGroupRollouts += drops.incompleteGroupRollouts
  }
  return totals
}
