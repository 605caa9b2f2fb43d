/**
 * The engine's durable state in LMDB (DESIGN §5). One environment, several named databases:
 *
 * - `log`      key = seq of the entry's first record → a `LogEntry`: either the records
 *              themselves (watermarks, policy versions, rollouts given as objects) or an
 *              ingest frame as it arrived on the wire — the indices of the items accepted and
 *              the seq of the first; its bytes are in `frames` — so ingest never re-encodes
 *              rollouts. Seq order; never rewritten, so the log can be replayed under another config.
 * - `frames`   seq of a frame's log entry → the frame's bytes (binary), written with the entry:
 *              payloads are read from here at delivery (by reference, see outboxEncoder.ts),
 *              without decoding the entry. (Frames logged before this kept their bytes in the entry.)
 * - `idHashes` seq of a log entry → the 64-bit hashes of its rollouts' ids (8 bytes each), written
 *              with the entry. Loaded at open into an in-memory hash table (`idIndex.ts`): the
 *              dedup index ("counted at most once, ever"). A new hash proves an id new; a known
 *              one is confirmed against the log, so a hash collision never drops a rollout.
 * - `consumed` step → { seqs, maxSeq }: the rollouts a committed batch consumed or the
 *              pipeline dropped since the previous batch; pruned once below the low-water mark.
 * - `outbox`   step → the advantage batch for the trainer until acknowledged: the MessagePack
 *              bytes that are sent, with logged payloads by reference (spliced in from
 *              `frames` at delivery, so a payload is on disk once).
 * - `steps`    step → summary of the batch (λ before/after, measurements), kept for history.
 * - `policies` seq → policy version: the policy records of the log, to find the version in
 *              effect at any seq without scanning the log.
 * - `meta`     'engine' → step, dual state, counters, low-water mark; 'ingest' → counters;
 *              'aux:<key>' → records of other parts (the dashboard's whole-run history).
 *
 * Each ingest and each batch commit is one LMDB transaction, queued with `env.batch` so that
 * lmdb-js's write thread does the B-tree work while the event loop goes on (a `transaction`
 * callback would hold the write lock until the event loop runs it). Callers acknowledge
 * anything only after `flushed` (data on disk).
 */
import { getRandomValues } from 'node:crypto'
import { closeSync, existsSync, openSync, readSync } from 'node:fs'
import { join } from 'node:path'
import { open, type Database, type RootDatabase } from 'lmdb'
import type { WireFormat } from './codec.js'
import { decodeLoggedFrame, RawPayload } from './rawPayload.js'
import type { Rollout } from '../core/types.js'
import type { BatchCommit, Delivery, EngineMeta } from './commitPlan.js'
import { formatFieldError, validateRollout } from '../core/validate.js'
import { IdHasher, packHashes } from './idHashes.js'
import { IdIndex } from './idIndex.js'
import { assembleBatch } from './outboxEncoder.js'

// the records a batch commit writes are planned, without I/O, in commitPlan.ts
export { emptyPipelineCounters, type BatchCommit, type Delivery, type EngineMeta, type PipelineCounters } from './commitPlan.js'

/** One record of the ingest log. */
export type LogRecord =
  | { kind: 'rollout'; seq: number; rollout: Rollout }
  | { kind: 'watermark'; seq: number; ts: number }
  | { kind: 'policy'; seq: number; ts: number; version: number }

/** An ingest frame logged as it arrived: `count` accepted items get seqs `seq … seq + count − 1`. */
export interface FrameEntry {
  kind: 'frame'
  seq: number
  count: number
  ts: number
  format: WireFormat
  /** The frame's bytes: a map whose `rollouts` array holds the items (stored apart, in `frames`). */
  bytes: Uint8Array
  /** Indices (uint32, little-endian) of the accepted items; absent when all were accepted. */
  accepted?: Uint8Array
}

export type LogEntry = LogRecord[] | FrameEntry

/** A log entry as stored: a frame's bytes are in `frames` (inline only in entries logged before that). */
export type StoredEntry = LogRecord[] | (Omit<FrameEntry, 'bytes'> & { bytes?: Uint8Array })

/** What an ingest transaction can do; transactions run in call order, so seqs are assigned here. */
export interface IngestTransaction {
  /** The seq the next appended record gets. */
  readonly nextSeq: number
  /**
   * Claims a rollout id in the dedup index: false when it was already logged or claimed (a
   * duplicate). The ids claimed since the previous `append` are the rollouts of the next one.
   */
  claim(id: string): boolean
  /** Appends an entry whose first seq is `nextSeq`. */
  append(entry: LogEntry): void
}

export interface EngineStoreOptions {
  readOnly?: boolean
  /** The id hasher (tests force collisions with it); by default seeded per store. */
  idHasher?: IdHasher
}

/** Counters that survive restarts. */
export interface IngestCounters {
  /** Rollouts accepted into the log. */
  ingested: number
  /** Items refused at ingest, by reason code. */
  rejected: Record<string, number>
  /** Rollouts whose id was already logged (acknowledged, not counted again). */
  duplicate: number
}

/** A committed batch as sent to trainers. */
export interface OutboxBatch {
  type: 'batch'
  step: number
  lambda: Record<string, { before: number; after: number }>
  constraints: Record<string, { mean: number | null; violation: number | null; sampleViolationRate: number | null; count: number }>
  rollouts: { id: string; promptId: string; advantage: number; payload?: unknown }[]
}

export const emptyIngestCounters = (): IngestCounters => ({ ingested: 0, rejected: {}, duplicate: 0 })

/**
 * A write queued inside `env.batch`: the batch's own promise reports a failure (and is awaited);
 * each write's promise is rejected with it too, and would otherwise be an unhandled rejection
 * that kills the process instead of letting the engine stop in good order.
 */
function inBatch(write: Promise<unknown>): void {
  write.catch(() => {})
}

/** Items of a logged frame: it decoded to a map with a `rollouts` array at ingest, so it does again. */
function frameItems(entry: FrameEntry): unknown[] {
  return (decodeLoggedFrame(entry.bytes, entry.format) as { rollouts: unknown[] }).rollouts
}

// logged items were accepted under the limits of their day: only their shape matters now
const NO_LIMITS = { maxIdLength: Infinity, maxChannels: Infinity }

/**
 * Expands a log entry into its records, in seq order. The payloads of a frame's items point at
 * the frame in the log and hold no bytes (`RawPayload.release`).
 */
export function entryRecords(entry: LogEntry): LogRecord[] {
  if (Array.isArray(entry)) return entry
  const items = frameItems(entry)
  const accepted =
    entry.accepted === undefined
      ? undefined
      : new Uint32Array(entry.accepted.buffer.slice(entry.accepted.byteOffset, entry.accepted.byteOffset + entry.accepted.byteLength))
  const records: LogRecord[] = new Array(entry.count)
  for (let k = 0; k < entry.count; k++) {
    const index = accepted === undefined ? k : accepted[k]
    const result = validateRollout(items[index], NO_LIMITS, true)
    if (!result.ok)
      throw new Error(`log entry at seq ${entry.seq}: item ${index} no longer reads as a rollout: ${result.errors.map(formatFieldError).join('; ')}`)
    const rollout = result.rollout
    rollout.seq = entry.seq + k
    rollout.ts = entry.ts
    if (rollout.payload instanceof RawPayload) {
      rollout.payload.logged(entry.seq, entry.bytes)
      rollout.payload.release()
    }
    records[k] = { kind: 'rollout', seq: rollout.seq, rollout }
  }
  return records
}

/** The ids of the rollout records, in order. */
function rolloutIds(records: LogRecord[]): string[] {
  const ids: string[] = []
  for (const record of records) if (record.kind === 'rollout') ids.push(record.rollout.id)
  return ids
}

/** Seq of the last record of an entry, and its event time. */
function lastOf(entry: StoredEntry): { seq: number; ts: number } {
  if (!Array.isArray(entry)) return { seq: entry.seq + entry.count - 1, ts: entry.ts }
  const last = entry[entry.length - 1]
  // every logged rollout was stamped with its ingest time
  return { seq: last.seq, ts: last.kind === 'rollout' ? last.rollout.ts! : last.ts }
}

/** LMDB's magic number (0xBEEFC0DE, little-endian) in the meta page at the start of every data file. */
const LMDB_MAGIC = Buffer.from([0xde, 0xc0, 0xef, 0xbe])

/**
 * Refuses a `data.mdb` that is not an LMDB file (a stray file, a damaged copy): lmdb's native
 * code would read it as one and can crash the process (SIGSEGV) instead of reporting it.
 */
function refuseForeignFile(dir: string): void {
  const file = join(dir, 'data.mdb')
  if (!existsSync(file)) return
  const head = Buffer.alloc(128)
  const fd = openSync(file, 'r')
  let read: number
  try {
    read = readSync(fd, head, 0, head.length, 0)
  } finally {
    closeSync(fd)
  }
  if (read > 0 && !head.subarray(0, read).includes(LMDB_MAGIC))
    throw new Error(`${file} is not an LMDB data file (no LMDB magic number at its start): not a dualstream data folder, or a damaged one`)
}

export class EngineStore {
  readonly env: RootDatabase
  readonly log: Database<StoredEntry, number>
  readonly idHashes: Database<Uint8Array, number>
  readonly consumed: Database<{ seqs: number[]; maxSeq: number }, number>
  readonly outbox: Database<Uint8Array, number>
  readonly frames: Database<Uint8Array, number>
  readonly steps: Database<unknown, number>
  readonly meta: Database<unknown, string>
  readonly policies: Database<number, number>

  // the seq the next appended record gets (advanced by transactions, in call order)
  private next = 0
  // the dedup index (a token one for a read-only store, which claims nothing)
  private readonly ids: IdIndex

  private constructor(
    readonly path: string,
    options: EngineStoreOptions,
  ) {
    const readOnly = options.readOnly ?? false
    refuseForeignFile(path)
    this.env = open({ path, maxDbs: 12, readOnly })
    this.log = this.env.openDB<StoredEntry, number>({ name: 'log' })
    this.idHashes = this.env.openDB<Uint8Array, number>({ name: 'idHashes', encoding: 'binary' })
    this.consumed = this.env.openDB<{ seqs: number[]; maxSeq: number }, number>({ name: 'consumed' })
    // stored as sent: the bytes go to the trainer without being encoded again
    this.outbox = this.env.openDB<Uint8Array, number>({ name: 'outbox', encoding: 'binary' })
    this.frames = this.env.openDB<Uint8Array, number>({ name: 'frames', encoding: 'binary' })
    this.steps = this.env.openDB<unknown, number>({ name: 'steps' })
    this.meta = this.env.openDB<unknown, string>({ name: 'meta' })
    this.policies = this.env.openDB<number, number>({ name: 'policies' })
    for (const { value } of this.log.getRange({ reverse: true, limit: 1 })) this.next = lastOf(value).seq + 1
    const hasher = options.idHasher ?? new IdHasher(...this.idHashSeed(readOnly))
    this.ids = new IdIndex(
      hasher,
      {
        hashesNewestFirst: () => {
          // read what is on disk now, not a snapshot from before the entries just flushed
          this.env.resetReadTxn()
          return this.idHashes.getRange({ reverse: true })[Symbol.iterator]()
        },
        idsOf: (seq) => rolloutIds(entryRecords(this.withBytes(this.log.get(seq)!))),
      },
      readOnly ? 16 : undefined,
    )
    if (!readOnly) this.loadIdIndex()
  }

  /** Opens (creating if needed) the store in a directory. */
  static open(path: string, options: EngineStoreOptions = {}): EngineStore {
    return new EngineStore(path, options)
  }

  /** The store's hash seed, made at its first open: ids cannot be chosen to collide without it. */
  private idHashSeed(readOnly: boolean): [number, number] {
    const stored = this.meta.get('idHashSeed') as [number, number] | undefined
    if (stored !== undefined || readOnly) return stored ?? [0, 0]
    const seed = getRandomValues(new Uint32Array(2))
    this.meta.putSync('idHashSeed', [seed[0], seed[1]])
    return [seed[0], seed[1]]
  }

  /** Fills the id index from `idHashes`, first hashing any logged entry that has none (a store from before the index). */
  private loadIdIndex(): void {
    let last = -1
    for (const { key, value } of this.idHashes.getRange({})) {
      this.ids.load(value)
      last = key
    }
    const missing: { seq: number; hashes: number[] }[] = []
    for (const { key, value } of this.log.getRange({ start: last + 1 })) {
      const hashes = this.ids.addLogged(rolloutIds(entryRecords(this.withBytes(value))))
      if (hashes.length > 0) missing.push({ seq: key, hashes })
    }
    if (missing.length > 0) this.env.transactionSync(() => missing.forEach(({ seq, hashes }) => this.idHashes.putSync(seq, packHashes(hashes))))
  }

  /** A log entry with its frame's bytes (stored apart in `frames`). */
  private withBytes(entry: StoredEntry): LogEntry {
    if (Array.isArray(entry) || entry.bytes !== undefined) return entry as LogEntry
    return { ...entry, bytes: this.frameBytes(entry.seq) }
  }

  /** The bytes of the frame logged at `seq`. */
  frameBytes(seq: number): Uint8Array {
    const bytes = this.frames.getBinary(seq)
    if (bytes !== undefined) return bytes
    const entry = this.log.get(seq)
    if (entry === undefined || Array.isArray(entry) || entry.bytes === undefined) throw new Error(`no logged frame at seq ${seq}`)
    return entry.bytes
  }

  /** The bytes to send for an outbox record: its logged payloads spliced in from `frames`. */
  assemble(record: Uint8Array): Uint8Array {
    // lmdb-js's reused read buffer: no copy of the whole frame per batch (assembleBatch copies the spans out at once)
    return assembleBatch(record, (seq) => this.frames.getBinaryFast(seq) ?? this.frameBytes(seq))
  }

  /**
   * A batch to deliver whose bytes are assembled when first read: a trainer's queue of them (or
   * every pending batch handed over at its connection) holds the small outbox records, and the
   * payloads are read from the log one batch at a time, as they are sent.
   */
  delivery(step: number, record: Uint8Array): Delivery {
    let bytes: Uint8Array | undefined
    const assemble = () => this.assemble(record)
    return {
      step,
      get bytes() {
        return (bytes ??= assemble())
      },
    }
  }

  /** The seq the next record gets: one past the last record logged or being logged. */
  get nextSeq(): number {
    return this.next
  }

  /** Event time of the last logged record (0 for an empty log). */
  lastTs(): number {
    for (const { value } of this.log.getRange({ reverse: true, limit: 1 })) return lastOf(value).ts
    return 0
  }

  /** Every logged record with seq >= `from`, in order. */
  *records(from = 0): Generator<LogRecord> {
    // the entry holding `from` may start before it: begin at the last entry key <= from
    let start = from
    for (const key of this.log.getKeys({ start: from, reverse: true, limit: 1 })) start = key
    for (const { value } of this.log.getRange({ start })) {
      for (const record of entryRecords(this.withBytes(value))) if (record.seq >= from) yield record
    }
  }

  /** The latest policy version logged before `seq` (undefined when none). */
  policyVersionBefore(seq: number): number | undefined {
    for (const { value } of this.policies.getRange({ start: seq - 0.5, reverse: true, limit: 1 })) return value
    return undefined
  }

  /**
   * Runs `work` now: it claims ids, appends log entries (seqs are assigned here, so the log
   * order is the order of these calls) and returns the ingest counters to save with them.
   * All of it is written in one transaction; resolves once it is on disk. Nothing is
   * written when `work` throws.
   */
  async transact(work: (tx: IngestTransaction) => IngestCounters): Promise<void> {
    const claims = this.ids.begin()
    const entries: { seq: number; entry: LogEntry; ids: string[]; hashes: number[] }[] = []
    let next = this.next
    let counters: IngestCounters
    try {
      counters = work({
        get nextSeq() {
          return next
        },
        claim: (id) => this.ids.claim(id, claims),
        append: (entry) => {
          const first = Array.isArray(entry) ? entry[0].seq : entry.seq
          if (first !== next) throw new Error(`log entry at seq ${first}, the next seq is ${next}`)
          const rollouts = Array.isArray(entry) ? entry.filter((record) => record.kind === 'rollout').length : entry.count
          if (rollouts !== claims.pending) throw new Error(`log entry at seq ${first} holds ${rollouts} rollouts, ${claims.pending} ids were claimed for it`)
          entries.push({ seq: first, entry, ...claims.take() })
          next = lastOf(entry).seq + 1
        },
      })
    } finally {
      claims.close()
    }
    if (claims.pending > 0) throw new Error(`${claims.pending} claimed ids were not appended`)
    this.next = next
    const written = this.env.batch(() => {
      for (const { seq, entry, hashes } of entries) {
        if (Array.isArray(entry)) inBatch(this.log.put(seq, entry))
        else {
          // the bytes apart, read by reference at delivery without decoding the entry
          const { bytes, ...rest } = entry
          inBatch(this.frames.put(seq, bytes))
          inBatch(this.log.put(seq, rest))
        }
        if (hashes.length > 0) inBatch(this.idHashes.put(seq, packHashes(hashes)))
        if (Array.isArray(entry)) for (const record of entry) if (record.kind === 'policy') inBatch(this.policies.put(record.seq, record.version))
      }
      inBatch(this.meta.put('ingest', counters))
    })
    for (const { seq, ids } of entries) if (ids.length > 0) this.ids.writing(seq, ids)
    try {
      await written
      await this.env.flushed
    } finally {
      for (const { seq } of entries) this.ids.written(seq)
    }
  }

  /** Commits a batch in one transaction: state, summary, consumption, outbox; resolves once on disk. */
  async commitBatch(commit: BatchCommit): Promise<void> {
    const step = commit.delivery.step
    let maxSeq = -1
    for (const seq of commit.consumedSeqs) if (seq > maxSeq) maxSeq = seq
    await this.env.batch(() => {
      inBatch(this.meta.put('engine', commit.meta))
      inBatch(this.steps.put(step, commit.summary))
      inBatch(this.outbox.put(step, commit.delivery.bytes))
      inBatch(this.consumed.put(step, { seqs: commit.consumedSeqs, maxSeq }))
      // consumption below the low-water mark is implied by it
      for (const old of commit.prune) inBatch(this.consumed.remove(old))
    })
    await this.env.flushed
  }

  /**
   * Removes an acknowledged batch from the outbox. Not waited to disk: a crash before the
   * removal is durable only means the batch is delivered again (at-least-once; trainers
   * dedupe by step).
   */
  async acknowledge(step: number): Promise<void> {
    // a read first: on a closed environment it throws here, not later inside lmdb's write queue
    if (this.outbox.doesExist(step)) await this.outbox.remove(step)
  }

  /** Unacknowledged batches, ready to send (bytes assembled when read), in step order. */
  pendingDeliveries(): Delivery[] {
    return [...this.outbox.getRange({})].map(({ key, value }) => this.delivery(key, value))
  }

  /** The committed engine state, or undefined for a fresh store. */
  engineMeta(): EngineMeta | undefined {
    return this.meta.get('engine') as EngineMeta | undefined
  }

  ingestCounters(): IngestCounters {
    return (this.meta.get('ingest') as IngestCounters | undefined) ?? emptyIngestCounters()
  }

  /** Consumption records at or above the low-water mark, by step. */
  consumption(): { step: number; seqs: number[]; maxSeq: number }[] {
    return [...this.consumed.getRange({})].map(({ key, value }) => ({ step: key, ...value }))
  }

  /** Summaries of committed steps in order, from step `from` to `to` (both included; default all). */
  *summaries(from?: number, to?: number): Generator<{ step: number; summary: unknown }> {
    const range = { ...(from === undefined ? {} : { start: from }), ...(to === undefined ? {} : { end: to + 1 }) }
    for (const { key, value } of this.steps.getRange(range)) yield { step: key, summary: value }
  }

  /** What another part of the server saved under `key` (the dashboard's whole-run history), if anything. */
  auxiliary(key: string): unknown {
    return this.meta.get(`aux:${key}`)
  }

  /** Saves a small record for another part of the server, outside the engine's own transactions (flushed when resolved). */
  async saveAuxiliary(key: string, value: unknown): Promise<void> {
    await this.meta.put(`aux:${key}`, value)
  }

  async close(): Promise<void> {
    await this.env.close()
  }
}
