/**
 * What the network surface (streams/: the endpoints, the telemetry) needs of an engine: the
 * seam between transports and state. Two engines stand behind it: `DurableEngine` (one node,
 * the LMDB folder; durableEngine.ts) and `ClusterEngine` (a node of a cluster run on NATS
 * JetStream; cluster/clusterEngine.ts). The protocol of streams/PROTOCOL.md is the same on both.
 */
import type { Observable } from 'rxjs'
import type { Config } from '../core/config.js'
import type { DiskGuard } from './diskGuard.js'
import type { RejectedItem } from './admission.js'
import type { BatchSummary } from './batchRecord.js'
import type { WireFormat } from './codec.js'
import type { Delivery, IngestCounters, OutboxBatch, PipelineCounters } from './engineStore.js'

export interface IngestOutcome {
  /** Ids now durable: newly logged ones and duplicates of logged ones. */
  acked: string[]
  rejected: RejectedItem[]
  duplicates: number
}

/**
 * What the engine tells its observers after each batch is durable. It holds the batch's
 * summary and bytes, not its rollouts: those are released as soon as the batch is encoded,
 * instead of living (and being copied by the garbage collector) until the disk has it.
 */
export interface CommittedBatch {
  /** Counts, λ before/after, constraint measurements, objective means, advantage mean and std. */
  summary: BatchSummary
  /** The trainer's view of the batch (decoded from `delivery` on access). */
  readonly outbox: OutboxBatch
  /** The outbox batch as MessagePack bytes, as stored and as sent to trainers. */
  delivery: Delivery
  /** Milliseconds from the newest rollout's ingest to the batch being durable. */
  latencyMs: number
}

/** The bytes of an ingest frame as it arrived, whose `rollouts` are the items: logged as they are. */
export interface RawFrame {
  bytes: Uint8Array
  format: WireFormat
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

/** Where the committed steps' summaries are read and the whole-run history is saved. */
export interface SummaryStore {
  /** Summaries of committed steps in order, from step `from` to `to` (both included; default all it holds). */
  summaries(from?: number, to?: number): Iterable<{ step: number; summary: unknown }>
  /** A saved auxiliary value (the telemetry's history), or undefined. */
  auxiliary(key: string): unknown
  saveAuxiliary(key: string, value: unknown): Promise<void>
}

/**
 * A frame the engine cannot take now, with nothing of it made durable: the producer is
 * answered with `code` and sends the frame's rollouts again later. `unavailable`: a cluster
 * node could not get the frame replicated (NATS unreachable or not answering in time).
 */
export class IngestRefused extends Error {
  constructor(
    readonly code: 'disk-full' | 'unavailable',
    message: string,
  ) {
    super(message)
    this.name = 'IngestRefused'
  }
}

export interface Engine {
  readonly config: Config
  /**
   * Batches as they become durable, in step order (hot). `acknowledged`: a trainer on another
   * node of a cluster acknowledged it before this node read it (shown, not delivered).
   */
  readonly committed: Observable<CommittedBatch & { acknowledged?: boolean }>
  /** Steps a trainer acknowledged through another node of a cluster: this node's outbox shrinks too. */
  readonly acknowledgedElsewhere?: Observable<number>
  /** Resolves with the failure that stopped the engine (never rejects). */
  readonly failed: Promise<unknown>
  /** The failure, if any. */
  readonly error: unknown
  /** The data folder's disk watermarks, when watched (one node only). */
  readonly disk?: DiskGuard
  /** The newest policy version a trainer reported. */
  readonly policyVersion: number | undefined
  readonly store: SummaryStore
  /** Validates and makes a frame's rollouts durable; resolves once the producer may be acknowledged. */
  ingest(items: readonly unknown[], raw?: RawFrame): Promise<IngestOutcome>
  stats(): EngineStats
  /** Unacknowledged batches in step order, as the bytes to send. */
  pendingDeliveries(): Delivery[]
  /** A trainer acknowledges `step`; resolves to false when it was not pending. */
  acknowledge(step: number, policyVersion?: number): Promise<boolean>
  /** The failure described for a person (its cause, where). */
  failureCause(): Promise<string | undefined>
  close(): Promise<void>
}
