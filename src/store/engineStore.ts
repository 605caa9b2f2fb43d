/**
 * The engine's durable state in LMDB (DESIGN §5). One environment, several named databases:
 *
 * - `log`      frame key (seq of its first record) → LogRecord[]: every accepted rollout,
 *              watermark and policy version, in seq order; never rewritten, so it can be
 *              replayed under another config.
 * - `ids`      rollout id → seq: the dedup index ("counted at most once, ever").
 * - `consumed` step → { seqs, maxSeq }: the rollouts a committed batch consumed or the
 *              pipeline dropped since the previous batch; pruned once below the low-water mark.
 * - `outbox`   step → the advantage batch for the trainer, until acknowledged.
 * - `steps`    step → summary of the batch (λ before/after, measurements), kept for history.
 * - `policies` seq → policy version: the policy records of the log, to find the version in
 *              effect at any seq without scanning the log.
 * - `meta`     'engine' → step, dual state, counters, low-water mark; 'ingest' → counters.
 *
 * Writes go through lmdb-js asynchronous transactions; callers acknowledge anything only
 * after `flushed` (data on disk).
 */
import { open, type Database, type RootDatabase } from 'lmdb'
import type { DualState, Rollout } from '../types.js'

/** One entry of the ingest log. */
export type LogRecord =
  | { kind: 'rollout'; seq: number; rollout: Rollout }
  | { kind: 'watermark'; seq: number; ts: number }
  | { kind: 'policy'; seq: number; ts: number; version: number }

/** Counters that survive restarts. */
export interface IngestCounters {
  /** Rollouts accepted into the log. */
  ingested: number
  /** Items refused at ingest, by reason code. */
  rejected: Record<string, number>
  /** Rollouts whose id was already logged (acknowledged, not counted again). */
  duplicate: number
}

export interface PipelineCounters {
  batches: number
  rolloutsInBatches: number
  stale: number
  incompleteGroups: number
  /** Rollouts in the dropped incomplete groups. */
  incompleteGroupRollouts: number
}

/** What is committed with every batch. */
export interface EngineMeta {
  dualState: DualState
  pipeline: PipelineCounters
  /** Smallest seq not yet consumed by a committed batch nor dropped (restart reads the log from here). */
  lowWater: number
}

/** A committed batch as sent to trainers. */
export interface OutboxBatch {
  type: 'batch'
  step: number
  lambda: Record<string, { before: number; after: number }>
  constraints: Record<string, { mean: number | null; violation: number | null; sampleViolationRate: number | null; count: number }>
  rollouts: { id: string; promptId: string; advantage: number; payload?: unknown }[]
}

/** Everything committed atomically with one batch. */
export interface BatchCommit {
  step: number
  outbox: OutboxBatch
  summary: unknown
  /** Seqs consumed by this batch and dropped since the previous one. */
  consumedSeqs: number[]
  meta: EngineMeta
}

export const emptyIngestCounters = (): IngestCounters => ({ ingested: 0, rejected: {}, duplicate: 0 })
export const emptyPipelineCounters = (): PipelineCounters => ({ batches: 0, rolloutsInBatches: 0, stale: 0, incompleteGroups: 0, incompleteGroupRollouts: 0 })

export class EngineStore {
  readonly env: RootDatabase
  readonly log: Database<LogRecord[], number>
  readonly ids: Database<number, string>
  readonly consumed: Database<{ seqs: number[]; maxSeq: number }, number>
  readonly outbox: Database<OutboxBatch, number>
  readonly steps: Database<unknown, number>
  readonly meta: Database<unknown, string>
  readonly policies: Database<number, number>

  private constructor(readonly path: string, readOnly: boolean) {
    this.env = open({ path, maxDbs: 8, readOnly })
    this.log = this.env.openDB<LogRecord[], number>({ name: 'log' })
    this.ids = this.env.openDB<number, string>({ name: 'ids' })
    this.consumed = this.env.openDB<{ seqs: number[]; maxSeq: number }, number>({ name: 'consumed' })
    this.outbox = this.env.openDB<OutboxBatch, number>({ name: 'outbox' })
    this.steps = this.env.openDB<unknown, number>({ name: 'steps' })
    this.meta = this.env.openDB<unknown, string>({ name: 'meta' })
    this.policies = this.env.openDB<number, number>({ name: 'policies' })
  }

  /** Opens (creating if needed) the store in a directory. */
  static open(path: string, options: { readOnly?: boolean } = {}): EngineStore {
    return new EngineStore(path, options.readOnly ?? false)
  }

  /** The seq the next record gets: one past the last logged record. */
  nextSeq(): number {
    for (const { value } of this.log.getRange({ reverse: true, limit: 1 })) {
      return value[value.length - 1].seq + 1
    }
    return 0
  }

  /** Event time of the last logged record (0 for an empty log). */
  lastTs(): number {
    for (const { value } of this.log.getRange({ reverse: true, limit: 1 })) {
      const last = value[value.length - 1]
      return last.kind === 'rollout' ? (last.rollout.ts ?? 0) : last.ts
    }
    return 0
  }

  /** Every logged record with seq >= `from`, in order. */
  *records(from = 0): Generator<LogRecord> {
    // the frame holding `from` may start before it: begin at the last frame key <= from
    let start = from
    for (const key of this.log.getKeys({ start: from, reverse: true, limit: 1 })) start = key
    for (const { value } of this.log.getRange({ start })) {
      for (const record of value) if (record.seq >= from) yield record
    }
  }

  /** The latest policy version logged before `seq` (undefined when none). */
  policyVersionBefore(seq: number): number | undefined {
    for (const { value } of this.policies.getRange({ start: seq - 0.5, reverse: true, limit: 1 })) return value
    return undefined
  }

  /** Appends records (and their ids to the dedup index) in one transaction; resolves once on disk. */
  async append(records: LogRecord[], ingest: IngestCounters): Promise<void> {
    if (records.length === 0) return
    await this.env.transaction(() => {
      this.log.put(records[0].seq, records)
      for (const record of records) {
        if (record.kind === 'rollout') this.ids.put(record.rollout.id, record.seq)
        else if (record.kind === 'policy') this.policies.put(record.seq, record.version)
      }
      this.meta.put('ingest', ingest)
    })
    await this.env.flushed
  }

  /** Persists ingest counters alone (a frame of nothing but duplicates or rejections). */
  async saveIngestCounters(ingest: IngestCounters): Promise<void> {
    await this.meta.put('ingest', ingest)
    await this.env.flushed
  }

  /** Whether a rollout id is already in the log. */
  hasId(id: string): boolean {
    return this.ids.doesExist(id)
  }

  /** Commits a batch in one transaction: state, summary, consumption, outbox; resolves once on disk. */
  async commitBatch(commit: BatchCommit): Promise<void> {
    await this.env.transaction(() => {
      this.meta.put('engine', commit.meta)
      this.steps.put(commit.step, commit.summary)
      this.outbox.put(commit.step, commit.outbox)
      this.consumed.put(commit.step, { seqs: commit.consumedSeqs, maxSeq: commit.consumedSeqs.reduce((a, b) => Math.max(a, b), -1) })
      // consumption below the low-water mark is implied by it: prune it
      for (const { key, value } of this.consumed.getRange({})) {
        if (key === commit.step || value.maxSeq >= commit.meta.lowWater) continue
        this.consumed.remove(key)
      }
    })
    await this.env.flushed
  }

  /** Removes an acknowledged batch from the outbox. */
  async acknowledge(step: number): Promise<boolean> {
    const existed = this.outbox.doesExist(step)
    if (existed) {
      await this.outbox.remove(step)
      await this.env.flushed
    }
    return existed
  }

  /** Unacknowledged batches in step order. */
  pendingBatches(): OutboxBatch[] {
    return [...this.outbox.getRange({})].map(({ value }) => value)
  }

  /** The committed engine state, or undefined for a fresh store. */
  engineMeta(): EngineMeta | undefined {
    return this.meta.get('engine') as EngineMeta | undefined
  }

  ingestCounters(): IngestCounters {
    return (this.meta.get('ingest') as IngestCounters | undefined) ?? emptyIngestCounters()
  }

  /** Seqs consumed or dropped at or above the low-water mark. */
  consumedSeqs(): Set<number> {
    const out = new Set<number>()
    for (const { value } of this.consumed.getRange({})) for (const seq of value.seqs) out.add(seq)
    return out
  }

  /** Summaries of committed steps, in order. */
  *summaries(): Generator<{ step: number; summary: unknown }> {
    for (const { key, value } of this.steps.getRange({})) yield { step: key, summary: value }
  }

  async close(): Promise<void> {
    await this.env.close()
  }
}
