/**
 * A node of a cluster run (DESIGN §8): the `Engine` the endpoints of streams/ serve, with the
 * state in NATS JetStream instead of an LMDB folder. What it does itself:
 * - ingest: a producer's frame is validated as on one node (admission.ts), its bytes
 *   published once to the run's frames subject and its accepted items indexed in each
 *   partition they belong to; the producer is acknowledged after every PubAck (replicated).
 *   Duplicate ids are caught by the partitions' owners (and quick resends by JetStream's
 *   message-id window), so a node acknowledges a resent rollout like a new one.
 * - the outbox and telemetry: it reads the BATCHES stream (every step, from whichever node
 *   is the sequencer) and the ACKS stream (every trainer acknowledgement, on any node), so its
 *   step, λ, counters and unacknowledged batches are the cluster's, not its own.
 * - deliveries: an unacknowledged batch's record is written from the GROUPS messages its entry
 *   names (trainerRecord.ts), its payloads fetched from the logged frames and the bytes
 *   assembled before it is announced (the trainer's connection sends them as they are).
 * The roles (partition owners, the sequencer) run beside it, by lease (clusterRoles.ts).
 */
import { createHash } from 'node:crypto'
import { jetstream, jetstreamManager, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import { Subject } from 'rxjs'
import type { Config } from '../../core/config.js'
import { DEFAULT_LIMITS, type ValidationLimits } from '../../core/validate.js'
import { initialDualState, lambdasOf } from '../../math/dual.js'
import { admitItems } from '../admission.js'
import type { BatchSummary } from '../batchRecord.js'
import { wirePackr, wireUnpackr } from '../codec.js'
import { emptyPipelineCounters } from '../commitPlan.js'
import { IngestRefused, type CommittedBatch, type Engine, type EngineStats, type IngestOutcome, type RawFrame, type SummaryStore } from '../engine.js'
import { emptyIngestCounters, type Delivery, type IngestCounters, type OutboxBatch } from '../engineStore.js'
import { assembleBatch, referencedEntries } from '../outboxEncoder.js'
import { FrameCache } from './frameCache.js'
import { GroupsCache, groupsOfEntry, trainerRecordOf } from './trainerRecord.js'
import {
  ackedSteps,
  decodeAckMessage,
  decodeBatchesMessage,
  encodeMessage,
  ITEMS_PER_FRAME,
  type AckEntry,
  type BatchEntry,
  type PartitionEntry,
} from './messages.js'
import { partitionOf, type RunLayout } from './runLayout.js'
import { StreamFollower } from './streamFollower.js'

export interface ClusterEngineOptions {
  nc: NatsConnection
  layout: RunLayout
  config: Config
  /** The run's partition count (fixed when it was created). */
  partitions: number
  /** This node's name (recorded with the acknowledgements it publishes). */
  node: string
  /** Wall clock (ms) for event times (default `Date.now`). */
  now?: () => number
  limits?: ValidationLimits
  /** Bytes of logged frames kept for assembling batches (default 64 MiB). */
  frameCacheBytes?: number
  /** How long a publish may wait for its PubAck before the frame is answered `unavailable` (ms, default 10 s). */
  publishTimeoutMs?: number
  /** A line for the node's log (a consumer of the run's streams replaced, an acknowledgement stored late). */
  log?: (line: string) => void
  /** How long an acknowledgement NATS does not take is tried again (ms, default 30 s). */
  ackRetryMs?: number
}

/** How long an acknowledgement is tried again by default (ms). */
export const DEFAULT_ACK_RETRY_MS = 30_000

/** A message id from a message's bytes (SHA-256, base64url): a resend of the same bytes is the same message to JetStream. */
const contentId = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('base64url')

/** Summaries kept for `/history` (a longer range is answered from the telemetry's whole-run history). */
const SUMMARIES_KEPT = 50_000

/** A committed step as a cluster node sees it: acknowledged already when a trainer on another node was quicker than this node's reader. */
export interface ClusterCommittedBatch extends CommittedBatch {
  acknowledged: boolean
}

export class ClusterEngine implements Engine {
  readonly committed = new Subject<ClusterCommittedBatch>()
  /** Steps a trainer acknowledged through another node (this node's outbox shrinks too). */
  readonly acknowledgedElsewhere = new Subject<number>()
  /** The trainer's policy version each time it grows (the partition owners log it). */
  readonly policyVersions = new Subject<number>()
  /** A cluster node does not stop on a NATS outage: it answers `unavailable` until NATS is back. */
  readonly failed: Promise<unknown> = new Promise<never>(() => {})
  readonly error: unknown = undefined
  policyVersion: number | undefined
  readonly store: SummaryStore
  readonly frames: FrameCache
  /** The GROUPS messages this node's deliveries read their groups from (a sequencer on this node puts what it decoded). */
  readonly groups: GroupsCache
  readonly js: JetStreamClient
  readonly jsm: JetStreamManager
  private readonly now: () => number
  private readonly limits: ValidationLimits
  private readonly ingestCounters: IngestCounters = emptyIngestCounters()
  private readonly summaries = new Map<number, BatchSummary>()
  // unacknowledged steps, assembled, in step order
  private readonly pending = new Map<number, Delivery>()
  // acknowledged steps above `ackedThrough` (an ack may be read before its batch)
  private readonly acked = new Set<number>()
  // acknowledgements waiting for the message being stored (storingAcks) to be stored
  private queuedAcks: (AckEntry & { stored: (() => void)[] }) | undefined
  private storingAcks: Promise<void> | undefined
  private ackedThrough = 0
  private last: BatchEntry | undefined
  private lastState: Required<Pick<BatchEntry, 'state' | 'partitionDrops'>> | undefined
  private lastTs = 0
  private readonly consumers: StreamFollower[] = []
  private assembling: Promise<void> = Promise.resolve()
  private closed = false

  private constructor(
    private readonly options: ClusterEngineOptions,
    jsm: JetStreamManager,
  ) {
    this.js = jetstream(options.nc, { timeout: options.publishTimeoutMs ?? 10_000 })
    this.jsm = jsm
    this.now = options.now ?? Date.now
    this.limits = options.limits ?? DEFAULT_LIMITS
    this.frames = new FrameCache({ jsm, stream: options.layout.streams.rollouts, maxBytes: options.frameCacheBytes })
    this.groups = new GroupsCache({ jsm, stream: options.layout.streams.groups })
    const summaries = this.summaries
    this.store = {
      *summaries(from = 1, to = Number.MAX_SAFE_INTEGER) {
        for (const [step, summary] of summaries) if (step >= from && step <= to) yield { step, summary }
      },
      // the whole-run history is rebuilt from the BATCHES stream at start, not saved
      auxiliary: () => undefined,
      saveAuxiliary: () => Promise.resolve(),
    }
  }

  get config(): Config {
    return this.options.config
  }

  /**
   * Opens a node's view of the run: reads every acknowledgement and every step committed so
   * far (the unacknowledged ones assembled for delivery), then follows both streams live.
   */
  static async open(options: ClusterEngineOptions): Promise<ClusterEngine> {
    const jsm = await jetstreamManager(options.nc)
    const engine = new ClusterEngine(options, jsm)
    const acks = options.layout.streams.acks
    await engine.follow(acks, (seq, data, live) => {
      let entry: AckEntry
      try {
        entry = decodeAckMessage(data, `${acks} seq ${seq}`)
      } catch (error) {
        // not this version's (or not ours): its steps cannot be known; at worst they are delivered again
        options.log?.(`${(error as Error).message}: skipped`)
        return
      }
      engine.onAck(entry, live)
    })
    const batches = options.layout.streams.batches
    await engine.follow(batches, (seq, data, live) => {
      for (const entry of decodeBatchesMessage(data, `${batches} seq ${seq}`)) engine.onBatch(entry, live)
    })
    await engine.assembling
    return engine
  }

  /**
   * Reads `stream` from its first message: resolves once every message there at the call has
   * been handled (`live` false for those), then goes on handling new ones (`live` true).
   */
  private async follow(stream: string, handle: (seq: number, data: Uint8Array, live: boolean) => void): Promise<void> {
    const info = await this.jsm.streams.info(stream)
    const caughtUpAt = info.state.last_seq
    // a follower: a consumer that stalls (a NATS server killed) is replaced, and no message is handled twice
    const messages = new StreamFollower({
      js: this.js,
      jsm: this.jsm,
      stream,
      from: 1,
      /* c8 ignore next -- a consumer replaced: the fault suite's NATS server kills (run without coverage) */
      onReplaced: (why) => this.options.log?.(why),
    })
    this.consumers.push(messages)
    let caughtUp!: () => void
    const ready = new Promise<void>((resolve) => (caughtUp = resolve))
    if (caughtUpAt === 0) caughtUp()
    void (async () => {
      for await (const message of messages) {
        const seq = message.info.streamSequence
        handle(seq, message.data, seq > caughtUpAt)
        if (seq >= caughtUpAt) caughtUp()
      }
    })().catch(
      /* c8 ignore next -- the connection closed under a node that was not closed first */
      (error: unknown) => this.options.log?.(`following ${stream} ended: ${(error as Error).message}`),
    )
    await ready
  }

  private onAck(entry: AckEntry, live: boolean): void {
    if (entry.policyVersion !== undefined && (this.policyVersion === undefined || entry.policyVersion > this.policyVersion)) {
      this.policyVersion = entry.policyVersion
      this.policyVersions.next(entry.policyVersion)
    }
    for (const step of entry.steps) {
      if (this.isAcked(step)) continue
      this.markAcked(step)
      if (this.pending.delete(step) && live) this.acknowledgedElsewhere.next(step)
    }
  }

  private isAcked(step: number): boolean {
    return step <= this.ackedThrough || this.acked.has(step)
  }

  private markAcked(step: number): void {
    this.acked.add(step)
    while (this.acked.delete(this.ackedThrough + 1)) this.ackedThrough++
  }

  private onBatch(entry: BatchEntry, live: boolean): void {
    this.last = entry
    // only a BATCHES message's last step carries them; its steps are read one after the other, at once
    if (entry.state !== undefined) this.lastState = { state: entry.state, partitionDrops: entry.partitionDrops! }
    this.summaries.set(entry.step, entry.summary)
    /* c8 ignore next -- more than SUMMARIES_KEPT steps in one test run; a close while a batch is being assembled (a race the fault suite hits) */
    if (this.summaries.size > SUMMARIES_KEPT) this.summaries.delete(this.summaries.keys().next().value!)
    const acknowledged = this.isAcked(entry.step)
    // assembled in step order: a batch's groups and frames are fetched while the previous one is announced
    const fetched = acknowledged ? Promise.resolve(undefined) : this.recordOf(entry)
    // handled when its turn comes; marked handled now, so that a failed fetch is not an unhandled rejection before then
    fetched.catch(() => {})
    this.assembling = this.assembling.then(async () => {
      const fetchedRecord = await fetched
      /* c8 ignore next -- more than SUMMARIES_KEPT steps in one test run; a close while a batch is being assembled (a race the fault suite hits) */
      if (this.closed) return
      let delivery: Delivery
      if (fetchedRecord === undefined || this.isAcked(entry.step)) delivery = { step: entry.step, bytes: new Uint8Array(0) }
      else {
        const { record, frames } = fetchedRecord
        const bytes = assembleBatch(record, (seq) => frames.get(seq)!)
        delivery = { step: entry.step, bytes }
        this.pending.set(entry.step, delivery)
      }
      if (!live) return
      const done = this.isAcked(entry.step)
      this.committed.next({
        summary: entry.summary,
        delivery,
        latencyMs: this.now() - entry.newestTs,
        acknowledged: done,
        get outbox() {
          return wireUnpackr.unpack(delivery.bytes) as OutboxBatch
        },
      })
    })
    this.assembling.catch(() => {})
  }

  /**
   * A step's trainer record (payloads by reference) and the frames its payloads are in. What
   * was fetched is held here, not looked up in the caches again: the steps read at start are
   * all fetched at once, and a cache may let one step's messages go for another's.
   */
  private async recordOf(entry: BatchEntry): Promise<{ record: Uint8Array; frames: Map<number, Uint8Array> }> {
    const record = trainerRecordOf(entry, await groupsOfEntry(entry, this.groups))
    const frames = new Map(await Promise.all(referencedEntries(record).map(async (seq) => [seq, await this.frames.get(seq)] as const)))
    return { record, frames }
  }

  /**
   * Validates a frame and makes its accepted rollouts durable in the run: the frame's bytes
   * once, then each partition's index entry; resolves after every PubAck. A publish that
   * fails (NATS unreachable, no answer in time) rejects with `IngestRefused('unavailable')`:
   * the producer sends the frame again, and JetStream's message ids make the resend of what
   * did get stored a no-op.
   */
  async ingest(items: readonly unknown[], raw?: RawFrame): Promise<IngestOutcome> {
    if (this.closed) throw new Error('the engine is closed')
    if (items.length > ITEMS_PER_FRAME) throw new Error(`a frame of ${items.length} rollouts: a cluster node takes at most ${ITEMS_PER_FRAME}`)
    const { valid, validIndex, rejected } = admitItems(items, this.config, this.limits, raw !== undefined, this.policyVersion, this.ingestCounters)
    const acked = valid.map((rollout) => rollout.id)
    if (valid.length === 0) return { acked, rejected, duplicates: 0 }
    // the frame as MessagePack with the items where the owners will look for them
    // the ingest endpoint's frames come as MessagePack bytes, their items decoded from them
    const asReceived = raw?.format === 'msgpack'
    const bytes = asReceived ? raw.bytes : wirePackr.pack({ type: 'rollouts', rollouts: items })
    this.lastTs = Math.max(this.now(), this.lastTs)
    const ts = this.lastTs
    const { layout, partitions } = this.options
    const byPartition = new Map<number, number[]>()
    for (let k = 0; k < valid.length; k++) {
      const p = partitionOf(valid[k].promptId, partitions)
      const list = byPartition.get(p)
      if (list === undefined) byPartition.set(p, [validIndex[k]])
      else list.push(validIndex[k])
    }
    try {
      const stored = await this.js.publish(layout.subjects.frames, bytes, { msgID: contentId(bytes) })
      // the partitions' owners on this node read it from memory: a frame from the ingest endpoint
      // as it decoded it (its items are what decoding its bytes gives), another as bytes
      if (asReceived) this.frames.putDecoded(stored.seq, { items: items as unknown[], bytes })
      else this.frames.put(stored.seq, bytes)
      await Promise.all(
        [...byPartition].map(([p, indices]) => {
          const entry: PartitionEntry = { k: 'rollouts', frame: stored.seq, items: indices, ts }
          return this.js.publish(layout.subjects.partition(p), encodeMessage(entry), { msgID: `${stored.seq}.${p}` })
        }),
      )
    } catch (error) {
      throw new IngestRefused('unavailable', `the cluster could not store this frame (${(error as Error).message}); nothing was acknowledged: send it again`)
    }
    this.ingestCounters.ingested += valid.length
    return { acked, rejected, duplicates: 0 }
  }

  stats(): EngineStats {
    const pipeline = this.last?.pipeline ?? emptyPipelineCounters()
    let duplicate = 0
    for (const drops of Object.values(this.lastState?.partitionDrops ?? {})) duplicate += drops.duplicate
    return {
      step: this.last?.step ?? 0,
      lambda: lambdasOf(this.lastState?.state ?? initialDualState(this.config.constraints)),
      ingest: { ...structuredClone(this.ingestCounters), duplicate },
      pipeline: { ...pipeline },
      pendingRollouts: 0,
      outbox: this.pending.size,
      nextSeq: 0,
    }
  }

  /** The last step committed in the run (as this node has read it). */
  get lastBatch(): BatchEntry | undefined {
    return this.last
  }

  pendingDeliveries(): Delivery[] {
    return [...this.pending.values()].sort((a, b) => a.step - b.step)
  }

  /**
   * A trainer acknowledged `step` here: recorded in the ACKS stream (with the policy version)
   * so every node and `replay --nats` see it; resolves once stored, to whether it was pending.
   * Acknowledgements that come while one message is being stored go together in the next.
   */
  async acknowledge(step: number, policyVersion?: number): Promise<boolean> {
    if (this.closed) throw new Error('the engine is closed')
    const known = this.pending.delete(step)
    if (known) this.markAcked(step)
    if (policyVersion !== undefined && (this.policyVersion === undefined || policyVersion > this.policyVersion)) {
      this.policyVersion = policyVersion
      this.policyVersions.next(policyVersion)
    }
    if (known || policyVersion !== undefined) await this.queueAck(step, policyVersion)
    return known
  }

  /** Resolves once an ACKS message holding `step` is stored (or given up: `storeAck`). */
  private queueAck(step: number, policyVersion: number | undefined): Promise<void> {
    const queued = (this.queuedAcks ??= { steps: [], node: this.options.node, stored: [] })
    queued.steps.push(step)
    if (policyVersion !== undefined && (queued.policyVersion === undefined || policyVersion > queued.policyVersion)) queued.policyVersion = policyVersion
    const stored = new Promise<void>((resolve) => queued.stored.push(resolve))
    this.storingAcks ??= this.storeQueuedAcks()
    return stored
  }

  /** Stores the queued acknowledgements, one message at a time, until none are queued. */
  private async storeQueuedAcks(): Promise<void> {
    for (let queued = this.queuedAcks; queued !== undefined; queued = this.queuedAcks) {
      this.queuedAcks = undefined
      const { stored, ...entry } = queued
      await this.storeAck(entry)
      for (const resolve of stored) resolve()
    }
    this.storingAcks = undefined
  }

  /**
   * Stores an acknowledgement message in ACKS, trying again while NATS does not take it (a
   * leader election, a server down) for up to `ackRetryMs`. An outage is not a failure of the
   * node: an acknowledgement never stored only means that the step may be delivered again (by
   * another node, or this one after a restart), which the protocol's trainer skips.
   */
  private async storeAck(entry: AckEntry): Promise<void> {
    const giveUpAt = this.now() + (this.options.ackRetryMs ?? DEFAULT_ACK_RETRY_MS)
    const bytes = encodeMessage(entry)
    // an attempt that timed out may be stored after all: the message id (of the contents) makes its retry a no-op
    const msgID = `${this.options.layout.run}.a.${entry.node}.${contentId(bytes)}`
    for (let attempt = 0; ; attempt++) {
      try {
        await this.js.publish(this.options.layout.subjects.acks, bytes, { msgID })
        if (attempt > 0) this.options.log?.(`the acknowledgement of ${ackedSteps(entry)} is stored (attempt ${attempt + 1})`)
        return
      } catch (error) {
        const why = (error as Error).message
        if (this.closed || this.now() >= giveUpAt) {
          this.options.log?.(
            `the acknowledgement of ${ackedSteps(entry)} was not stored (${why}): the ${entry.steps.length === 1 ? 'step' : 'steps'} may be delivered again`,
          )
          return
        }
        if (attempt === 0) this.options.log?.(`the acknowledgement of ${ackedSteps(entry)} was not stored (${why}); trying again`)
        await new Promise((resolve) => setTimeout(resolve, Math.min(1000, 50 * 2 ** attempt)))
      }
    }
  }

  failureCause(): Promise<string | undefined> {
    return Promise.resolve(undefined)
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    for (const messages of this.consumers) await messages.close()
    await this.assembling.catch(() => {})
    this.committed.complete()
    this.acknowledgedElsewhere.complete()
    this.policyVersions.complete()
  }
}
