/**
 * The durable engine (DESIGN §5): ingest into the LMDB log with id dedup, the FGRPO pipeline
 * fed from the log, each batch committed in one transaction with the dual state and the
 * outbox, trainer acknowledgements, and an exact restart. Transport-free: the WebSocket
 * server (streams/) drives it. What a commit writes is planned without I/O in commitPlan.ts;
 * this class does the I/O and keeps the order.
 */
import { Subject, asyncScheduler, type SchedulerAction, type SchedulerLike, type Subscription } from 'rxjs'
import type { Config } from '../core/config.js'
import { lambdasOf } from '../math/dual.js'
import type { DropEvent, Rollout, ScoredBatch } from '../core/types.js'
import { DEFAULT_LIMITS, type ValidationLimits } from '../core/validate.js'
import { admitItems } from './admission.js'
import { IngestRefused, type CommittedBatch, type EngineStats, type IngestOutcome, type RawFrame } from './engine.js'
import { wireUnpackr } from './codec.js'
import { EngineStore, type Delivery, type FrameEntry, type IngestCounters, type LogRecord, type OutboxBatch } from './engineStore.js'
import { consumedSeqsOf, countDrop, planCommit, restoreBookkeeping, type EngineBookkeeping } from './commitPlan.js'
import { EnginePipeline } from './pipeline.js'
import { DiskGuard, type StatFs } from './diskGuard.js'
import { describeStoreFailure } from './storeFailure.js'
import { RawPayload } from './rawPayload.js'
import { settleWithin } from '../core/settleWithin.js'

export { rejectionReason, type RejectedItem } from './admission.js'
export type { CommittedBatch, EngineStats, IngestOutcome, RawFrame } from './engine.js'

export interface DurableEngineOptions {
  config: Config
  dataDir: string
  /** Wall clock (ms) for event times; default: `scheduler.now()`. */
  now?: () => number
  /**
   * Runs the watermark timer and, without `now`, is the clock (default `asyncScheduler`; a
   * `VirtualClock` in tests). The timer keeps the event loop alive until `close()`.
   */
  scheduler?: SchedulerLike
  /** How often to log a watermark while rollouts wait on a timeout (default from the config's timeouts; 0 = never). */
  watermarkIntervalMs?: number
  limits?: ValidationLimits
  /**
   * Free bytes that must stay on the data folder's filesystem (disk watermarks, see
   * diskGuard.ts): below them new rollouts are refused with a `DiskFullError` until
   * `diskResumeBytes` (default twice as many) are free again. 0 or undefined = not watched.
   */
  diskReserveBytes?: number | 'auto'
  diskResumeBytes?: number
  /** How often the filesystem is read (ms, default 1000). */
  diskCheckMs?: number
  /** Reads a filesystem's free space (tests); default `fs.statfs`. */
  statfs?: StatFs
}

/** A frame refused because the data folder's disk is at its reserve: nothing was logged; send it again later. */
export class DiskFullError extends IngestRefused {
  constructor(message: string) {
    super('disk-full', message)
    this.name = 'DiskFullError'
  }
}

/** Rough bytes an LMDB transaction adds beyond its values (page headers, B-tree and free-list pages). */
const TRANSACTION_OVERHEAD = 8192

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
  private readonly scheduler: SchedulerLike
  private readonly limits: ValidationLimits
  private readonly pipeline: EnginePipeline
  private ingestCounters: IngestCounters
  // the committed dual state, the counters and the stored consumption records (see commitPlan.ts)
  private book: EngineBookkeeping
  private lastTs: number
  // keeps feeding and commits in seq order whatever order the writes resolve in
  private feedChain: Promise<void> = Promise.resolve()
  private commitChain: Promise<void> = Promise.resolve()
  // unacknowledged steps that are durable (what a trainer may acknowledge)
  private readonly outboxSteps: Set<number>
  private failure: unknown
  private reportFailure!: (error: unknown) => void
  // what settles the promises returned to callers that still wait on a write (see guard)
  private readonly waiting = new Set<(error: unknown) => void>()
  /**
   * Resolves with the first write failure (never rejects). After it the engine writes nothing
   * more: LMDB after ENOSPC cannot be trusted, and the way out is a restart from the log.
   */
  readonly failed: Promise<unknown> = new Promise((resolve) => (this.reportFailure = resolve))
  /** The data folder's disk watermarks, when watched. */
  disk: DiskGuard | undefined
  private watermarkTimer: Subscription | undefined
  private closed = false
  /**
   * The newest policy version a trainer reported (as `dropStale` judges: the highest), or
   * undefined while none was. With `maxAsync: k` in the config a rollout of a version below
   * this − k is refused at ingest (staleness by admission, before it is logged).
   */
  policyVersion: number | undefined

  private constructor(
    readonly config: Config,
    readonly store: EngineStore,
    options: DurableEngineOptions,
  ) {
    const scheduler = (this.scheduler = options.scheduler ?? asyncScheduler)
    this.now = options.now ?? (() => scheduler.now())
    this.limits = options.limits ?? DEFAULT_LIMITS
    const meta = store.engineMeta()
    const consumption = store.consumption()
    this.book = restoreBookkeeping(meta, consumption, config.constraints)
    this.ingestCounters = store.ingestCounters()
    this.lastTs = store.lastTs()
    this.outboxSteps = new Set(store.outbox.getKeys())
    // the last one logged (a restart's pipeline starts from the same; versions normally only grow)
    this.policyVersion = store.policyVersionBefore(Number.MAX_SAFE_INTEGER)
    const lowWater = meta?.lowWater ?? 0
    this.pipeline = new EnginePipeline(config, {
      initialState: this.book.dualState,
      initialPolicyVersion: store.policyVersionBefore(lowWater),
      onBatch: (batch, consumed) => this.commit(batch, consumed),
      onDrop: (event) => {
        this.book = countDrop(this.book, event)
        this.drops.next(event)
      },
      onError: this.fail,
    })
    // restart: everything not consumed by a committed batch goes through the pipeline again
    const consumed = consumedSeqsOf(consumption)
    for (const record of store.records(lowWater)) {
      if (record.kind === 'rollout' && consumed.has(record.seq)) continue
      this.pipeline.feed(record)
    }
    const interval = options.watermarkIntervalMs ?? defaultWatermarkInterval(config)
    if (interval > 0) {
      const tick = () => this.tick()
      this.watermarkTimer = scheduler.schedule(function (this: SchedulerAction<void>) {
        tick()
        this.schedule(undefined, interval)
      }, interval)
    }
  }

  /** Opens the store in `dataDir`, restores the committed state and replays the unconsumed log. */
  static async open(options: DurableEngineOptions): Promise<DurableEngine> {
    const store = EngineStore.open(options.dataDir)
    const engine = new DurableEngine(options.config, store, options)
    await engine.commitChain
    if (options.diskReserveBytes === 'auto' || (options.diskReserveBytes !== undefined && options.diskReserveBytes > 0)) {
      engine.disk = await DiskGuard.open({
        path: options.dataDir,
        reserveBytes: options.diskReserveBytes,
        resumeBytes: options.diskResumeBytes,
        intervalMs: options.diskCheckMs,
        scheduler: options.scheduler,
        statfs: options.statfs,
      })
    }
    return engine
  }

  private readonly fail = (error: unknown): void => {
    // lmdb-js's cause of a failed commit rejects a promise of its own: handled here (it is read by failureCause)
    const cause = (error as { commitError?: unknown } | undefined)?.commitError
    if (cause instanceof Promise) cause.catch(() => {})
    if (this.failure !== undefined) return
    this.failure = error
    this.reportFailure(error)
    // writes already queued mostly still settle (and their frames are acknowledged); the rest are given up on
    this.scheduler.schedule(() => {
      for (const reject of this.waiting) reject(error)
      this.waiting.clear()
    }, STRANDED_WRITE_MS)
  }

  /**
   * `promise`, rejected with the engine's failure if it has not settled `STRANDED_WRITE_MS`
   * after the failure. After a failed commit lmdb-js may never settle some writes already
   * queued; a caller (a producer's answer, a trainer's acknowledgement, a shutdown) must not
   * wait on them forever. One rejecter per write in flight, dropped when it settles: nothing
   * accumulates per call.
   */
  private guard<T>(promise: Promise<T>): Promise<T> {
    if (this.failure !== undefined) {
      promise.catch(() => {}) // the failure is what the caller hears of
      return Promise.reject(this.failure)
    }
    return new Promise<T>((resolve, reject) => {
      this.waiting.add(reject)
      promise.then(resolve, reject).finally(() => this.waiting.delete(reject))
    })
  }

  /**
   * The failure with its real cause: lmdb-js rejects a failed commit with "Commit failed (see
   * commitError for details)" and the cause (an errno such as ENOSPC) in `commitError`; this
   * waits for it and names the data folder and its free space.
   */
  async failureCause(): Promise<string | undefined> {
    if (this.failure === undefined) return undefined
    return describeStoreFailure(this.failure, this.store.path, this.disk?.state)
  }

  private stamp(): number {
    // event time never goes backwards, so the log replays with the same timeouts
    this.lastTs = Math.max(this.now(), this.lastTs)
    return this.lastTs
  }

  /**
   * Validates a frame of rollouts, logs the new ones durably and resolves once they are on
   * disk (only then may the producer be acknowledged); they are fed to the pipeline right
   * after, in seq order (`settled()` waits for that). Invalid items are rejected one by
   * one; the valid items of the same frame are still accepted. Duplicate ids are
   * acknowledged and counted, not logged again. With `raw` (the frame's bytes, whose
   * `rollouts` are `items`, e.g. straight from the wire), the log keeps those bytes instead
   * of encoding the rollouts again; the items are then owned by the engine.
   */
  ingest(items: readonly unknown[], raw?: RawFrame): Promise<IngestOutcome> {
    if (this.closed) return Promise.reject(new Error('the engine is closed'))
    if (this.failure !== undefined) return Promise.reject(this.failure)
    const bytes = (raw?.bytes.length ?? 64 * items.length) + TRANSACTION_OVERHEAD
    if (this.disk !== undefined && !this.disk.admits(bytes)) return Promise.reject(new DiskFullError(this.disk.refuse(bytes)))
    const { valid, validIndex, rejected } = admitItems(items, this.config, this.limits, raw !== undefined, this.policyVersion, this.ingestCounters)
    const acked: string[] = []
    for (const rollout of valid) {
      // a payload still as bytes is logged as its value when the frame's own bytes are not logged
      if (raw === undefined && rollout.payload instanceof RawPayload) rollout.payload = wireUnpackr.unpack(rollout.payload.bytes!)
      acked.push(rollout.id)
    }
    const ts = valid.length > 0 ? this.stamp() : this.lastTs
    const accepted: Rollout[] = []
    let duplicates = 0
    // dedup and seqs happen in the write transaction, which runs in call order
    const durable = this.store.transact((tx) => {
      const first = tx.nextSeq
      const indices: number[] = []
      for (let k = 0; k < valid.length; k++) {
        const rollout = valid[k]
        if (!tx.claim(rollout.id)) {
          duplicates++
          continue
        }
        rollout.seq = first + accepted.length
        rollout.ts = ts
        accepted.push(rollout)
        indices.push(validIndex[k])
      }
      if (accepted.length > 0) {
        if (raw === undefined) tx.append(accepted.map((rollout) => ({ kind: 'rollout', seq: rollout.seq!, rollout })))
        else {
          const entry: FrameEntry = { kind: 'frame', seq: first, count: accepted.length, ts, format: raw.format, bytes: raw.bytes }
          if (indices.length < items.length) entry.accepted = new Uint8Array(Uint32Array.from(indices).buffer)
          tx.append(entry)
          // payloads point at the frame in the log; their bytes are dropped once it is durable
          for (const rollout of accepted) if (rollout.payload instanceof RawPayload) rollout.payload.logged(first, raw.bytes)
        }
      }
      this.ingestCounters.duplicate += duplicates
      this.ingestCounters.ingested += accepted.length
      return structuredClone(this.ingestCounters)
    })
    this.disk?.wrote(bytes)
    // a failed write is reported through the promise returned here, and stops the engine
    durable.catch(this.fail)
    this.feedInOrder(durable, () => {
      for (const rollout of accepted) if (rollout.payload instanceof RawPayload) rollout.payload.release()
      return accepted
    }).catch(() => {})
    // the producer's ack needs the rollouts on disk, not in the pipeline: it need not wait for
    // them to be fed (and for the batches they complete to be scored and encoded)
    return this.guard(durable.then(() => ({ acked, rejected, duplicates })))
  }

  /** Feeds rollouts (or one other record) once durable, strictly in seq order. */
  private feedInOrder(durable: Promise<void>, items: () => Rollout[] | LogRecord): Promise<void> {
    const fed = this.feedChain
      .then(() => durable)
      .then(() => {
        const fed = items()
        if (!Array.isArray(fed)) return this.pipeline.feed(fed)
        for (const rollout of fed) this.pipeline.feedRollout(rollout)
      })
    // a failed write fails this frame only; the chain goes on for the next
    this.feedChain = fed.catch(() => {})
    return fed
  }

  /** Logs one watermark or policy record; resolves once it is durable and fed. */
  private appendRecord(make: (seq: number) => LogRecord): Promise<void> {
    if (this.failure !== undefined) return Promise.reject(this.failure)
    this.disk?.wrote(TRANSACTION_OVERHEAD)
    let record: LogRecord | undefined
    const durable = this.store.transact((tx) => {
      record = make(tx.nextSeq)
      tx.append([record])
      return structuredClone(this.ingestCounters)
    })
    // handled now, not only once the feed chain reaches it: a failed write stops the engine
    durable.catch(this.fail)
    return this.feedInOrder(durable, () => record!)
  }

  /** Writes a scored batch as planned by `planCommit`, and announces it once durable, in step order. */
  private commit(batch: ScoredBatch, consumedSeqs: number[]): void {
    // nothing more is written after a failure (the batch is formed again from the log on restart)
    if (this.failure !== undefined) return
    const { plan, next } = planCommit(this.book, { batch, consumedSeqs, lowWater: this.pipeline.lowWater(), now: this.now() })
    this.book = next
    const written = this.store.commitBatch(plan.write)
    // handled now: the chain below adopts it only once the earlier commits are done
    written.catch(this.fail)
    // the outbox record (logged payloads by reference); the bytes sent are assembled from it
    const record = plan.write.delivery
    this.disk?.wrote(record.bytes.length + plan.write.consumedSeqs.length * 8 + TRANSACTION_OVERHEAD)
    this.commitChain = this.commitChain
      .then(() => written)
      .then(() => {
        // assembled when a trainer's connection sends it: with none connected, no payload is read back
        const delivery = this.store.delivery(record.step, record.bytes)
        this.outboxSteps.add(delivery.step)
        this.committed.next({
          summary: plan.summary,
          delivery,
          latencyMs: this.now() - plan.newestTs,
          get outbox() {
            return wireUnpackr.unpack(delivery.bytes) as OutboxBatch
          },
        })
      })
      .catch(this.fail)
  }

  /** Unacknowledged batches in step order, decoded. */
  pendingBatches(): OutboxBatch[] {
    return this.pendingDeliveries().map((d) => wireUnpackr.unpack(d.bytes) as OutboxBatch)
  }

  /** Unacknowledged batches in step order, as the bytes to send, for (re)delivery to a trainer. */
  pendingDeliveries(): Delivery[] {
    // an acknowledged removal may not be on disk yet
    return this.store.pendingDeliveries().filter((d) => this.outboxSteps.has(d.step))
  }

  /**
   * A trainer acknowledges a batch; a reported policy version is logged (durably, in seq
   * order) so stale rollouts are judged the same way on replay. Resolves to false for a
   * step that was not pending.
   */
  async acknowledge(step: number, policyVersion?: number): Promise<boolean> {
    if (this.closed) throw new Error('the engine is closed')
    // the same step acknowledged twice counts once
    const known = this.outboxSteps.delete(step)
    // a removal that fails is a failed write like any other (not an unhandled rejection)
    if (known && this.failure === undefined) this.store.acknowledge(step).catch(this.fail)
    if (policyVersion !== undefined) {
      if (this.policyVersion === undefined || policyVersion > this.policyVersion) this.policyVersion = policyVersion
      const ts = this.stamp()
      await this.guard(this.appendRecord((seq) => ({ kind: 'policy', seq, ts, version: policyVersion })))
    }
    return known
  }

  /** Logs a watermark when rollouts are waiting on a timeout and time has moved. */
  private tick(): void {
    if (this.failure !== undefined || this.pipeline.pendingRollouts === 0 || this.now() <= this.lastTs) return
    const ts = this.stamp()
    this.appendRecord((seq) => ({ kind: 'watermark', seq, ts })).catch(this.fail)
  }

  /** Resolves once every batch emitted so far is durable and announced. */
  async settled(): Promise<void> {
    await this.feedChain
    await this.commitChain
  }

  stats(): EngineStats {
    return {
      step: this.book.dualState.step,
      lambda: lambdasOf(this.book.dualState),
      ingest: structuredClone(this.ingestCounters),
      pipeline: { ...this.book.pipeline },
      pendingRollouts: this.pipeline.pendingRollouts,
      outbox: this.outboxSteps.size,
      nextSeq: this.store.nextSeq,
    }
  }

  /** The failure that stopped the engine, if any (a store write that failed). */
  get error(): unknown {
    return this.failure
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.watermarkTimer?.unsubscribe()
    this.disk?.close()
    // after a failed commit some of lmdb-js's writes may never settle: wait for them a while, not forever
    const failed = this.failure !== undefined
    await (failed ? settleWithin(this.settled(), FAILED_CLOSE_MS) : this.settled())
    this.pipeline.close()
    this.committed.complete()
    this.drops.complete()
    // after a failed commit the environment is not closed: LMDB after ENOSPC/EIO cannot be
    // trusted to close cleanly (here it once ended the process mid-shutdown); the process exit releases it
    if (!failed) await this.store.close()
  }
}

/** How long after a failure a write still in flight may settle before its caller is told of the failure instead (ms). */
const STRANDED_WRITE_MS = 1000

/** How long closing a failed engine waits for LMDB (ms). */
const FAILED_CLOSE_MS = 2000
