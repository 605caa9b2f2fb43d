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
