/**
 * The durable engine (DESIGN §5): ingest into the LMDB log with id dedup, the FGRPO pipeline
 * fed from the log, each batch committed in one transaction with the dual state and the
 * outbox, trainer acknowledgements, and an exact restart. Transport-free: the WebSocket
 * server (streams/) drives it.
 */
import { Subject } from 'rxjs'
import type { Config } from '../config.js'
import { initialDualState, lambdasOf } from '../math/dual.js'
import type { DropEvent, Rollout, ScoredBatch } from '../types.js'
import { DEFAULT_LIMITS, validateRollout, type ValidationLimits } from '../validate.js'
import {
  EngineStore,
  emptyPipelineCounters,
  type EngineMeta,
  type IngestCounters,
  type LogRecord,
  type OutboxBatch,
  type PipelineCounters,
} from '../store/engineStore.js'
import { batchSummary, constraintsRecord } from './batchRecord.js'
import { EnginePipeline } from './pipeline.js'

/** One refused item of an ingest frame. */
export interface RejectedItem {
  index: number
  id?: string
  field: string
  reason: string
}

export interface IngestOutcome {
  /** Ids now durable: newly logged ones and duplicates of logged ones. */
  acked: string[]
  rejected: RejectedItem[]
  duplicates: number
}

/** What the engine tells its observers after each batch is durable. */
export interface CommittedBatch {
  batch: ScoredBatch
  outbox: OutboxBatch
  /** Milliseconds from the newest rollout's ingest to the batch being durable. */
  latencyMs: number
}

export interface EngineStats {
  step: number
  lambda: Record<string, number>
  ingest: IngestCounters
  pipeline: PipelineCounters
  pendingRollouts: number
  outbox: number
  nextSeq: number
}

export interface DurableEngineOptions {
  config: Config
  dataDir: string
  /** Wall clock (ms); injectable for tests. */
  now?: () => number
  /** How often to log a watermark while rollouts wait on a timeout (default from the config's timeouts; 0 = never). */
  watermarkIntervalMs?: number
  limits?: ValidationLimits
}

/** Default watermark period: a quarter of the shortest timeout, between 50 ms and 1 s. */
export function defaultWatermarkInterval(config: Config): number {
  const shortest = Math.min(config.groupTimeoutMs ?? Infinity, config.batchMaxWaitMs ?? Infinity)
  return shortest === Infinity ? 0 : Math.min(1000, Math.max(50, shortest / 4))
}

export class DurableEngine {
  /** Batches as they become durable, in step order (hot). */
  readonly committed = new Subject<CommittedBatch>()
  /** Rollouts that left the pipeline without a batch (hot). */
  readonly drops = new Subject<DropEvent>()

  private readonly now: () => number
  private readonly limits: ValidationLimits
  private readonly pipeline: EnginePipeline
  private ingestCounters: IngestCounters
  private pipelineCounters: PipelineCounters
  private dualState: EngineMeta['dualState']
  private nextSeq: number
  private lastTs: number
  // ids accepted but not yet durable, so a duplicate arriving meanwhile is caught
  private readonly inflightIds = new Set<string>()
  // keeps feeding and commits in seq order whatever order the writes resolve in
  private feedChain: Promise<void> = Promise.resolve()
  private commitChain: Promise<void> = Promise.resolve()
  private outboxSize: number
  private readonly acknowledging = new Set<number>()
  private failure: unknown
  private watermarkTimer: NodeJS.Timeout | undefined
  private closed = false

  private constructor(
    readonly config: Config,
    readonly store: EngineStore,
    options: DurableEngineOptions,
  ) {
    this.now = options.now ?? Date.now
    this.limits = options.limits ?? DEFAULT_LIMITS
    const meta = store.engineMeta()
    this.dualState = meta?.dualState ?? initialDualState(config.constraints)
    this.pipelineCounters = meta?.pipeline ?? emptyPipelineCounters()
    this.ingestCounters = store.ingestCounters()
    this.nextSeq = store.nextSeq()
    this.lastTs = store.lastTs()
    this.outboxSize = store.outbox.getCount()
    const lowWater = meta?.lowWater ?? 0
    this.pipeline = new EnginePipeline(config, {
      initialState: this.dualState,
      initialPolicyVersion: store.policyVersionBefore(lowWater),
      onBatch: (batch, consumed) => this.commit(batch, consumed),
      onDrop: (event) => {
        if (event.reason === 'stale') this.pipelineCounters.stale += event.count
        if (event.reason === 'incomplete-group') {
          this.pipelineCounters.incompleteGroups++
          this.pipelineCounters.incompleteGroupRollouts += event.count
        }
        this.drops.next(event)
      },
      onError: (error) => this.fail(error),
    })
    // restart: everything not consumed by a committed batch goes through the pipeline again
    const consumed = store.consumedSeqs()
    for (const record of store.records(lowWater)) {
      if (record.kind === 'rollout' && consumed.has(record.seq)) continue
      this.pipeline.feed(record)
    }
    const interval = options.watermarkIntervalMs ?? defaultWatermarkInterval(config)
    if (interval > 0) {
      this.watermarkTimer = setInterval(() => this.tick(), interval)
      this.watermarkTimer.unref()
    }
  }

  /** Opens the store in `dataDir`, restores the committed state and replays the unconsumed log. */
  static async open(options: DurableEngineOptions): Promise<DurableEngine> {
    const store = EngineStore.open(options.dataDir)
    const engine = new DurableEngine(options.config, store, options)
    await engine.commitChain
    return engine
  }

  private fail(error: unknown): void {
    if (this.failure === undefined) this.failure = error
  }

  private stamp(): number {
    // event time never goes backwards, so the log replays with the same timeouts
    this.lastTs = Math.max(this.now(), this.lastTs)
    return this.lastTs
  }

  /**
   * Validates a frame of rollouts, logs the new ones durably and resolves once they are on
   * disk (only then may the producer be acknowledged). Invalid items are rejected one by
   * one; the valid items of the same frame are still accepted. Duplicate ids are
   * acknowledged and counted, not logged again.
   */
  ingest(items: readonly unknown[]): Promise<IngestOutcome> {
    if (this.closed) return Promise.reject(new Error('the engine is closed'))
    if (this.failure !== undefined) return Promise.reject(this.failure)
    const rejected: RejectedItem[] = []
    const acked: string[] = []
    const records: LogRecord[] = []
    let duplicates = 0
    const ts = items.length > 0 ? this.stamp() : this.lastTs
    items.forEach((item, index) => {
      const result = validateRollout(item, this.limits)
      if (!result.ok) {
        for (const error of result.errors) rejected.push({ index, ...error })
        const reason = rejectionReason(result.errors[0].field)
        this.ingestCounters.rejected[reason] = (this.ingestCounters.rejected[reason] ?? 0) + 1
        return
      }
      const rollout = result.rollout
      if (this.inflightIds.has(rollout.id) || this.store.hasId(rollout.id)) {
        duplicates++
        acked.push(rollout.id)
        return
      }
      const seq = this.nextSeq++
      rollout.seq = seq
      rollout.ts = ts
      this.inflightIds.add(rollout.id)
      records.push({ kind: 'rollout', seq, rollout })
      acked.push(rollout.id)
    })
    this.ingestCounters.duplicate += duplicates
    this.ingestCounters.ingested += records.length
    const counters = structuredClone(this.ingestCounters)
    const durable = records.length > 0 ? this.store.append(records, counters) : this.store.saveIngestCounters(counters)
    const fed = this.feedInOrder(durable, records)
    return fed.then(() => ({ acked, rejected, duplicates }))
  }

  /** Feeds records once durable, strictly in seq order. */
  private feedInOrder(durable: Promise<void>, records: LogRecord[]): Promise<void> {
    const fed = this.feedChain.then(() => durable).then(() => {
      for (const record of records) {
        if (record.kind === 'rollout') this.inflightIds.delete(record.rollout.id)
        this.pipeline.feed(record)
      }
    })
    // a failed write fails this frame only; the chain goes on for the next
    this.feedChain = fed.catch(() => {})
    return fed
  }

  private commit(batch: ScoredBatch, consumedSeqs: number[]): void {
    this.dualState = batch.dualState
    this.pipelineCounters.batches++
    this.pipelineCounters.rolloutsInBatches += batch.rolloutCount
    const outbox = toOutbox(batch)
    const summary = batchSummary(batch)
    let newestTs = 0
    for (const group of batch.groups) for (const rollout of group.rollouts) newestTs = Math.max(newestTs, rollout.ts ?? 0)
    const meta: EngineMeta = { dualState: batch.dualState, pipeline: { ...this.pipelineCounters }, lowWater: this.pipeline.lowWater() }
    const written = this.store.commitBatch({ step: batch.step, outbox, summary: { ...summary, ts: this.now() }, consumedSeqs, meta })
    this.outboxSize++
    this.commitChain = this.commitChain
      .then(() => written)
      .then(
        () => this.committed.next({ batch, outbox, latencyMs: this.now() - newestTs }),
        (error: unknown) => this.fail(error),
      )
  }

  /** Unacknowledged batches in step order, for (re)delivery to a trainer. */
  pendingBatches(): OutboxBatch[] {
    return this.store.pendingBatches()
  }

  /**
   * A trainer acknowledges a batch; a reported policy version is logged (durably, in seq
   * order) so stale rollouts are judged the same way on replay. Resolves to false for a
   * step that was not pending.
   */
  async acknowledge(step: number, policyVersion?: number): Promise<boolean> {
    // the same step acknowledged again before the first removal is on disk counts once
    let known = false
    if (!this.acknowledging.has(step)) {
      this.acknowledging.add(step)
      try {
        known = await this.store.acknowledge(step)
      } finally {
        this.acknowledging.delete(step)
      }
    }
    if (known) this.outboxSize--
    if (policyVersion !== undefined) {
      const record: LogRecord = { kind: 'policy', seq: this.nextSeq++, ts: this.stamp(), version: policyVersion }
      await this.feedInOrder(this.store.append([record], structuredClone(this.ingestCounters)), [record])
    }
    return known
  }

  /** Logs a watermark when rollouts are waiting on a timeout and time has moved. */
  private tick(): void {
    if (this.pipeline.pendingRollouts === 0 || this.now() <= this.lastTs) return
    const record: LogRecord = { kind: 'watermark', seq: this.nextSeq++, ts: this.stamp() }
    this.feedInOrder(this.store.append([record], structuredClone(this.ingestCounters)), [record]).catch((error: unknown) => this.fail(error))
  }

  /** Resolves once every batch emitted so far is durable and announced. */
  async settled(): Promise<void> {
    await this.feedChain
    await this.commitChain
  }

  stats(): EngineStats {
    return {
      step: this.dualState.step,
      lambda: lambdasOf(this.dualState),
      ingest: structuredClone(this.ingestCounters),
      pipeline: { ...this.pipelineCounters },
      pendingRollouts: this.pipeline.pendingRollouts,
      outbox: this.outboxSize,
      nextSeq: this.nextSeq,
    }
  }

  /** The failure that stopped the engine, if any (a store write that failed). */
  get error(): unknown {
    return this.failure
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    if (this.watermarkTimer !== undefined) clearInterval(this.watermarkTimer)
    await this.settled()
    this.pipeline.close()
    this.committed.complete()
    this.drops.complete()
    await this.store.close()
  }
}

/** The metric label of a rejection: the top-level field at fault (`rewards`, `id`…) or `shape`. */
export function rejectionReason(field: string): string {
  return field === '(rollout)' ? 'shape' : field.split('.')[0]
}

/** The trainer's view of a batch: rollout ids, prompt ids, advantages and payloads. */
export function toOutbox(batch: ScoredBatch): OutboxBatch {
  const rollouts: OutboxBatch['rollouts'] = []
  let i = 0
  for (const group of batch.groups) {
    for (const rollout of group.rollouts as Rollout[]) {
      const item: OutboxBatch['rollouts'][number] = { id: rollout.id, promptId: rollout.promptId, advantage: batch.advantages[i++] }
      if (rollout.payload !== undefined) item.payload = rollout.payload
      rollouts.push(item)
    }
  }
  return { type: 'batch', step: batch.step, lambda: batch.lambda, constraints: constraintsRecord(batch.constraints), rollouts }
}
