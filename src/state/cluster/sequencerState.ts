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
 * the last batch, found by its last rollout's id and prompt (exact: a partition's owner drops
 * duplicate ids, and a prompt lives in one partition).
 */
import { Subject, type Subscription } from 'rxjs'
import type { Config } from '../../core/config.js'
import type { DualState, Group, ScoredBatch } from '../../core/types.js'
import { initialDualState } from '../../math/dual.js'
import { scoreBatches } from '../../../operators/scoreBatches.js'
import { windowBatches } from '../../../operators/windowBatches.js'
import { batchSummary } from '../batchRecord.js'
import type { PipelineCounters } from '../commitPlan.js'
import { assembleBatch, encodeBatchForTrainer } from '../outboxEncoder.js'
import { decodeMessage, rolloutsOf, type BatchEntry, type DropCounts, type GroupsEntry, type GroupsWatermark, type ScoringGroupsEntry } from './messages.js'

/** Which rollout closed a batch: enough to find its group again in a GroupsEntry. */
interface RolloutIdentity {
  id: string
  promptId: string
}

// The outbox record's layout with payloads by reference (outboxEncoder.ts): a 0xc1 byte, the
// count (u32), then per reference its position (u32), log entry (f64), offset (u32), length (u32).
const REFERENCES = 0xc1
const REFERENCE_BYTES = 20
const NIL = Uint8Array.of(0xc0)

/**
 * The last rollout of a batch's outbox record. The payloads are not needed (nor at hand: they
 * are in the logged frames), so each reference is pointed at a one-byte nil before decoding.
 */
function lastRolloutOf(record: Uint8Array): RolloutIdentity | undefined {
  let bytes = record
  if (record[0] === REFERENCES) {
    const copy = Buffer.from(record)
    const count = copy.readUInt32BE(1)
    for (let k = 0, at = 5; k < count; k++, at += REFERENCE_BYTES) {
      copy.writeUInt32BE(0, at + 12)
      copy.writeUInt32BE(1, at + 16)
    }
    bytes = assembleBatch(copy, () => NIL)
  }
  return decodeMessage<{ rollouts: RolloutIdentity[] }>(bytes).rollouts.at(-1)
}

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
  private readonly partitionDrops: Record<string, DropCounts>
  private readonly counters: { batches: number; rolloutsInBatches: number }
  private failure: { error: unknown } | undefined
  private feeding: Feeding | undefined
  private nextSeq: number
  private pending = 0
  private clock = -Infinity
  // the last batch's last rollout and the seq it resumes at: that entry's groups up to it are in a batch already
  private readonly resumeAfter: (RolloutIdentity & { seq: number }) | undefined

  /** Resumes after `last` (the last BatchEntry on the BATCHES stream), or starts fresh. */
  constructor(config: Config, last?: BatchEntry) {
    const initialState: DualState = last?.state ?? initialDualState(config.constraints)
    this.nextSeq = last?.resumeFrom ?? 1
    this.partitionDrops = { ...last?.partitionDrops }
    this.counters = { batches: last?.pipeline.batches ?? 0, rolloutsInBatches: last?.pipeline.rolloutsInBatches ?? 0 }
    const lastRollout = last === undefined ? undefined : lastRolloutOf(last.record)
    this.resumeAfter = lastRollout === undefined ? undefined : { ...lastRollout, seq: this.nextSeq }
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
    if ('wm' in message) return this.feedScoring(seq, message)
    return this.feedScoring(seq, {
      ...message,
      groups: message.groups.map((g) => ({ promptId: g.promptId, partial: g.partial, ts: g.ts, rollouts: rolloutsOf(g) })),
    })
  }

  /** As `feed`, with the groups ready to score (`decodeGroupsForScoring`: the sequencer's own path, nothing built twice). */
  feedScoring(seq: number, message: ScoringGroupsEntry | GroupsWatermark): BatchEntry[] {
    this.throwFailure()
    if (seq < this.nextSeq) throw new Error(`sequencer: GROUPS message ${seq} fed after ${this.nextSeq - 1} (feed in stream order, from resumeFrom)`)
    if ('wm' in message) {
      this.nextSeq = seq + 1
      this.advance(message.wm)
    } else {
      this.partitionDrops[message.p] = message.drops
      const resuming = this.resumeAfter
      const skip = resuming?.seq === seq ? message.groups.findIndex((g) => isLastOf(g.rollouts, resuming)) + 1 : 0
      const count = message.groups.length
      this.nextSeq = seq + 1
      for (let index = skip; index < count && this.failure === undefined; index++) {
        const group = message.groups[index]
        this.feeding = { seq, group, index, count }
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
    const pipeline: PipelineCounters = { ...this.counters, stale: 0, incompleteGroups: 0, incompleteGroupRollouts: 0 }
    for (const drops of Object.values(this.partitionDrops)) {
      pipeline.stale += drops.stale
      pipeline.incompleteGroups += drops.incompleteGroups
      pipeline.incompleteGroupRollouts += drops.incompleteGroupRollouts
    }
    let newestTs = 0
    for (const group of batch.groups) for (const rollout of group.rollouts) if (rollout.ts! > newestTs) newestTs = rollout.ts!
    return {
      step: batch.step,
      resumeFrom,
      watermark: batch.ts,
      state: batch.dualState,
      pipeline,
      partitionDrops: { ...this.partitionDrops },
      summary: batchSummary(batch),
      newestTs,
      record: encodeBatchForTrainer(batch),
    }
  }
}

/** Whether `identity` is the last of `rollouts`. */
function isLastOf(rollouts: readonly RolloutIdentity[], identity: RolloutIdentity): boolean {
  const last = rollouts[rollouts.length - 1]
  return last !== undefined && last.id === identity.id && last.promptId === identity.promptId
}
