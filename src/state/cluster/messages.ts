/**
 * The messages of a cluster run (DESIGN §8; where they go: runLayout.ts), as MessagePack
 * with the wire codec. Each stream holds one kind; each kind is a plain map with short keys
 * so that any MessagePack reader (a Python `replay`, a NATS CLI user) can read it.
 *
 * The partition entries are the input of a partition's owner, the group entries its output
 * and the sequencer's input, the batch entries the sequencer's output: each stage is a pure
 * function of the stream before it, which is what makes a takeover and `replay --nats` exact.
 */
import type { DualState } from '../../core/types.js'
import type { BatchSummary } from '../batchRecord.js'
import { wirePackr, wireUnpackr } from '../codec.js'
import type { PipelineCounters } from '../commitPlan.js'
import { encodeGroupsEntry, type DropCounts, type GroupsEntry, type GroupsWatermark } from './groupsEntry.js'

export {
  decodeGroupsForScoring,
  decodeGroupsMessage,
  emptyDropCounts,
  encodeGroupsEntry,
  groupRolloutOf,
  GroupsMessageError,
  rolloutsOf,
  type DropCounts,
  type GroupMessage,
  type GroupRollout,
  type GroupsEntry,
  type GroupsWatermark,
  type ScoringGroupsEntry,
} from './groupsEntry.js'

/**
 * An entry of a partition's index (`ds.R.part.<p>`): some items of a logged frame (the
 * stream sequence of its `ds.R.frames` message and the items' indices in its `rollouts`),
 * stamped with the ingest node's event time; or a watermark or a trainer policy version its
 * owner appended (so that its input alone decides every group, as a node's log does).
 */
export type PartitionEntry =
  { k: 'rollouts'; frame: number; items: number[]; ts: number } | { k: 'watermark'; ts: number } | { k: 'policy'; version: number; ts: number }

/**
 * One step (`ds.R.batches`): the engine's state after it. `record` is the trainer's batch with
 * its payloads by reference to logged frames (outboxEncoder.ts); `resumeFrom` is the GROUPS
 * stream sequence a new sequencer feeds from, with `watermark` as its event time.
 */
export interface BatchEntry {
  step: number
  resumeFrom: number
  watermark: number
  state: DualState
  pipeline: PipelineCounters
  /** Cumulative drops per partition (the counters above add them up). */
  partitionDrops: Record<string, DropCounts>
  summary: BatchSummary
  /** Event time of the newest rollout in the batch. */
  newestTs: number
  record: Uint8Array
}

/**
 * A message of the BATCHES stream: consecutive steps, oldest first — those one GROUPS message
 * completed, as many as fit in `MAX_BATCHES_MESSAGE_BYTES` (`batchesMessages` splits them).
 * One publish (a PubAck, an expected-last-sequence check) then serves several steps: an owner
 * coalesces groups, so one GROUPS message often completes a few batches.
 */
export interface BatchesMessage {
  steps: BatchEntry[]
}

/** Most bytes of a BATCHES message: NATS' default max_payload (1 MiB) less room for the headers, as the owners'. A step over it goes alone. */
export const MAX_BATCHES_MESSAGE_BYTES = 1_000_000

/** `{"steps": [` as MessagePack: a map of one key, then the array's header (written per message). */
const STEPS_KEY = Uint8Array.of(0x81, 0xa5, ...new TextEncoder().encode('steps'))

/**
 * The BATCHES messages for `entries` (consecutive steps, oldest first): each entry encoded once,
 * as many in a message as keep it within `maxBytes` (an entry larger than that goes alone).
 * The split depends on the entries only, so every sequencer that makes the same steps makes
 * the same messages. Plain MessagePack: `{steps: [entry, …]}`.
 *
 * @example
 * for (const { steps, bytes } of batchesMessages(state.feed(seq, message))) await publish(bytes)
 */
export function batchesMessages(entries: readonly BatchEntry[], maxBytes = MAX_BATCHES_MESSAGE_BYTES): { steps: BatchEntry[]; bytes: Uint8Array }[] {
  const messages: { steps: BatchEntry[]; bytes: Uint8Array }[] = []
  let steps: BatchEntry[] = []
  let parts: Uint8Array[] = []
  let size = 0
  const close = () => {
    if (steps.length === 0) return
    const header = steps.length < 16 ? Uint8Array.of(0x90 | steps.length) : Uint8Array.of(0xdc, steps.length >> 8, steps.length & 0xff)
    messages.push({ steps, bytes: Buffer.concat([STEPS_KEY, header, ...parts]) })
    steps = []
    parts = []
    size = 0
  }
  for (const entry of entries) {
    const bytes = wirePackr.pack(entry)
    // the key and the widest array header (an array of 16 or more: 3 bytes) around the entries so far
    if (steps.length > 0 && (STEPS_KEY.length + 3 + size + bytes.length > maxBytes || steps.length === 0xffff)) close()
    steps.push(entry)
    parts.push(bytes)
    size += bytes.length
  }
  close()
  return messages
}

/** A BATCHES message that is not one of this version's (`where` says which). */
export class BatchesMessageError extends Error {
  constructor(where: string, why: string) {
    super(`${where} is not a BATCHES message of this dualstream version: ${why}`)
    this.name = 'BatchesMessageError'
  }
}

/** The steps of a BATCHES message, oldest first; throws a `BatchesMessageError` naming `where` for anything else. */
export function decodeBatchesMessage(bytes: Uint8Array, where = 'a message'): BatchEntry[] {
  let message: unknown
  try {
    message = wireUnpackr.unpack(bytes)
  } catch (error) {
    throw new BatchesMessageError(where, `not MessagePack (${(error as Error).message})`)
  }
  const steps = (message as Partial<BatchesMessage> | null)?.steps
  if (!Array.isArray(steps) || steps.length === 0) throw new BatchesMessageError(where, 'no "steps" array of batch entries')
  return steps
}

/** A trainer's acknowledgement (`ds.R.acks`), as the node that received it recorded it. */
export interface AckEntry {
  step: number
  policyVersion?: number
  node: string
}

/** Encodes any of the messages above (a GroupsEntry as columns: groupsEntry.ts). */
export function encodeMessage(message: PartitionEntry | GroupsEntry | GroupsWatermark | BatchEntry | AckEntry): Uint8Array {
  if ('groups' in message) return encodeGroupsEntry(message)
  return wirePackr.pack(message)
}

/** Decodes a message of the kind the stream holds (the caller knows which). */
export function decodeMessage<T>(bytes: Uint8Array): T {
  return wireUnpackr.unpack(bytes) as T
}

/** Rollout seqs in a cluster: frame sequence and item index, unique and increasing in a partition's input. */
export const ITEMS_PER_FRAME = 1 << 14

export const rolloutSeq = (frame: number, item: number): number => frame * ITEMS_PER_FRAME + item
