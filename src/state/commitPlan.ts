/**
 * The durable engine's bookkeeping between batch commits, and the planning of one commit,
 * without I/O (DESIGN §5): the dual state and counters to save, the meta record, which
 * consumption records to keep and which the low-water mark now implies, the summary and the
 * trainer's bytes. `DurableEngine` is the I/O shell around it: it hands each scored batch
 * here, writes the plan with `EngineStore.commitBatch`, and keeps the next bookkeeping.
 *
 * Why consumption records exist: a restart reads the log from the low-water mark (the
 * smallest seq still inside the pipeline) and must not feed again what a committed batch
 * already consumed. Seqs below the mark are all consumed; those at or above it that were are
 * listed in the records. A record whose highest seq falls below the mark says nothing the
 * mark does not, so it is pruned.
 */
import type { ConstraintSpec } from '../core/config.js'
import type { DropEvent, DualState, ScoredBatch } from '../core/types.js'
import { initialDualState } from '../math/dual.js'
import { batchSummary, type BatchSummary } from './batchRecord.js'
import { encodeBatchForTrainer } from './outboxEncoder.js'

/** Pipeline counters that survive restarts (committed with every batch). */
export interface PipelineCounters {
  batches: number
  rolloutsInBatches: number
  stale: number
  incompleteGroups: number
  /** Rollouts in the dropped incomplete groups. */
  incompleteGroupRollouts: number
}

export const emptyPipelineCounters = (): PipelineCounters => ({ batches: 0, rolloutsInBatches: 0, stale: 0, incompleteGroups: 0, incompleteGroupRollouts: 0 })

/** What is committed with every batch. */
export interface EngineMeta {
  dualState: DualState
  pipeline: PipelineCounters
  /** Smallest seq not yet consumed by a committed batch nor dropped (restart reads the log from here). */
  lowWater: number
}

/** A batch ready to send: its step and its MessagePack bytes (what is stored in the outbox). */
export interface Delivery {
  step: number
  bytes: Uint8Array
}

/** Everything committed atomically with one batch. */
export interface BatchCommit {
  delivery: Delivery
  summary: unknown
  /** Seqs consumed by this batch and dropped since the previous one (stored as this step's consumption record). */
  consumedSeqs: number[]
  meta: EngineMeta
  /** Steps whose consumption records are now implied by the low-water mark (this step's own, when it is). */
  prune: number[]
}

/** A stored consumption record as the engine remembers it: its step and the highest seq in it. */
export interface ConsumptionMark {
  step: number
  maxSeq: number
}

/** What the engine keeps between commits: the last committed state and the records in the store. */
export interface EngineBookkeeping {
  /** The dual state after the last committed batch. */
  dualState: DualState
  /** Counters up to now (drops since the last commit included). */
  pipeline: PipelineCounters
  /** The consumption records in the store, in step order. */
  consumption: readonly ConsumptionMark[]
}

/**
 * The bookkeeping a store holds: its committed meta (undefined for a fresh store) and its
 * consumption records.
 *
 * @example
 * const book = restoreBookkeeping(store.engineMeta(), store.consumption(), config.constraints)
 */
export function restoreBookkeeping(
  meta: EngineMeta | undefined,
  consumption: readonly ConsumptionMark[],
  constraints: readonly ConstraintSpec[],
): EngineBookkeeping {
  return {
    dualState: meta?.dualState ?? initialDualState(constraints),
    pipeline: meta?.pipeline ?? emptyPipelineCounters(),
    consumption: consumption.map(({ step, maxSeq }) => ({ step, maxSeq })),
  }
}

/**
 * The seqs a restart must not feed again when it reads the log from the low-water mark: those
 * listed in the stored consumption records.
 *
 * @example
 * const skip = consumedSeqsOf(store.consumption())
 * for (const record of store.records(lowWater)) if (!(record.kind === 'rollout' && skip.has(record.seq))) pipeline.feed(record)
 */
export function consumedSeqsOf(records: readonly { seqs: readonly number[] }[]): Set<number> {
  const seqs = new Set<number>()
  for (const record of records) for (const seq of record.seqs) seqs.add(seq)
  return seqs
}

/**
 * Counts a drop of the pipeline (stale rollouts, incomplete groups); other reasons happen
 * before the pipeline and are counted at ingest. Pure: returns the next bookkeeping.
 *
 * @example
 * book = countDrop(book, { reason: 'stale', rollouts: [r], count: 1 })
 */
export function countDrop(book: EngineBookkeeping, event: DropEvent): EngineBookkeeping {
  const pipeline = { ...book.pipeline }
  if (event.reason === 'stale') pipeline.stale += event.count
  else if (event.reason === 'incomplete-group') {
    pipeline.incompleteGroups++
    pipeline.incompleteGroupRollouts += event.count
  }
  return { ...book, pipeline }
}

/** One scored batch to commit, with what the pipeline and the clock say about it. */
export interface CommitInput {
  batch: ScoredBatch
  /** Seqs the batch consumed, and those dropped since the previous batch. */
  consumedSeqs: number[]
  /** Smallest seq still inside the pipeline after this batch (or one past the last fed). */
  lowWater: number
  /** Wall-clock time of the commit (ms), saved with the summary. */
  now: number
}

/** One commit: what to write and what to announce once it is written. */
export interface CommitPlan {
  /** Everything the store writes in one transaction. */
  write: BatchCommit
  /** The batch's summary as announced to observers (the stored one adds the commit time `ts`). */
  summary: BatchSummary
  /** Event time of the newest rollout in the batch: latency is measured from it. */
  newestTs: number
}

/**
 * Plans the commit of one batch: the counters after it, the meta record (its dual state, the
 * counters, the low-water mark), its consumption record and the records the mark now implies,
 * the summary and the trainer's bytes. Pure: `book` is not modified; the next bookkeeping is
 * returned with the plan.
 *
 * @example
 * const { plan, next } = planCommit(book, { batch, consumedSeqs, lowWater: pipeline.lowWater(), now: Date.now() })
 * await store.commitBatch(plan.write)
 * book = next
 */
export function planCommit(book: EngineBookkeeping, input: CommitInput): { plan: CommitPlan; next: EngineBookkeeping } {
  const { batch, consumedSeqs, lowWater } = input
  const pipeline: PipelineCounters = {
    ...book.pipeline,
    batches: book.pipeline.batches + 1,
    rolloutsInBatches: book.pipeline.rolloutsInBatches + batch.rolloutCount,
  }
  // consumption records wholly below the low-water mark are implied by it from now on
  const prune: number[] = []
  const consumption: ConsumptionMark[] = []
  for (const mark of book.consumption) {
    if (mark.maxSeq < lowWater) prune.push(mark.step)
    else consumption.push(mark)
  }
  let maxSeq = -1
  for (const seq of consumedSeqs) if (seq > maxSeq) maxSeq = seq
  // this batch's own record is written with the others in one transaction, and removed in it when the mark implies it
  if (maxSeq >= lowWater) consumption.push({ step: batch.step, maxSeq })
  else prune.push(batch.step)
  let newestTs = 0
  for (const group of batch.groups) for (const rollout of group.rollouts) if (rollout.ts! > newestTs) newestTs = rollout.ts!
  const summary = batchSummary(batch)
  const write: BatchCommit = {
    // kept until the trainer acknowledges the step (a pending delivery): its exact bytes, not the encoder's bound
    delivery: { step: batch.step, bytes: Buffer.from(encodeBatchForTrainer(batch)) },
    summary: { ...summary, ts: input.now },
    consumedSeqs,
    meta: { dualState: batch.dualState, pipeline, lowWater },
    prune,
  }
  return { plan: { write, summary, newestTs }, next: { dualState: batch.dualState, pipeline, consumption } }
}
