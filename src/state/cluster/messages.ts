/**
 * The messages of a cluster run (DESIGN §8; where they go: runLayout.ts), as MessagePack
 * with the wire codec. Each stream holds one kind; each kind is a plain map with short keys
 * so that any MessagePack reader (a Python `replay`, a NATS CLI user) can read it.
 *
 * The partition entries are the input of a partition's owner, the group entries its output
 * and the sequencer's input, the batch entries the sequencer's output: each stage is a pure
 * function of the stream before it, which is what makes a takeover and `replay --nats` exact.
 */
import type { DualState, Rollout } from '../../core/types.js'
import type { BatchSummary } from '../batchRecord.js'
import { wirePackr, wireUnpackr } from '../codec.js'
import type { PipelineCounters } from '../commitPlan.js'
import { RawPayload } from '../rawPayload.js'

/**
 * An entry of a partition's index (`ds.R.part.<p>`): some items of a logged frame (the
 * stream sequence of its `ds.R.frames` message and the items' indices in its `rollouts`),
 * stamped with the ingest node's event time; or a watermark or a trainer policy version its
 * owner appended (so that its input alone decides every group, as a node's log does).
 */
export type PartitionEntry =
  { k: 'rollouts'; frame: number; items: number[]; ts: number } | { k: 'watermark'; ts: number } | { k: 'policy'; version: number; ts: number }

/** A rollout of a formed group as the sequencer needs it: no payload, only where it is logged. */
export interface GroupRollout {
  id: string
  promptId: string
  policyVersion?: number
  groupSize?: number
  rewards: Rollout['rewards']
  ts: number
  /** Unique and increasing within the run's input: (frame sequence × 2^14 + item index). */
  seq: number
  /** The payload: [frame sequence, offset, length] in the frame's bytes. */
  ref?: [number, number, number]
}

export interface GroupMessage {
  promptId: string
  partial: boolean
  ts: number
  rollouts: GroupRollout[]
}

/** Rollouts a partition's owner dropped (stale, duplicate ids, incomplete groups). */
export interface DropCounts {
  stale: number
  duplicate: number
  incompleteGroups: number
  incompleteGroupRollouts: number
}

/**
 * A message of a partition's owner (`ds.R.groups.<p>`): the groups completed by consecutive
 * entries of its input, in order — every entry after the previous message's `through` up to
 * this one's. `n` counts the partition's messages (1, 2, …); `through` is the partition
 * stream sequence of the last entry whose groups are all here: the resume point, after which
 * a new owner publishes (it recomputes the partition and publishes the groups of the entries
 * after it). `drops` are cumulative for the partition, after the entry `through`. How many
 * entries one message covers depends on timing (the owner coalesces whatever was computed
 * while its previous publish was in flight); the groups each entry completes do not.
 */
export interface GroupsEntry {
  p: number
  n: number
  through: number
  groups: GroupMessage[]
  drops: DropCounts
}

/** A sequencer's watermark in the GROUPS stream (`ds.R.groups.wm`): event time moved with batches waiting. */
export interface GroupsWatermark {
  wm: number
}

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

export const emptyDropCounts = (): DropCounts => ({ stale: 0, duplicate: 0, incompleteGroups: 0, incompleteGroupRollouts: 0 })

/** Encodes any of the messages above. */
export function encodeMessage(message: PartitionEntry | GroupsEntry | GroupsWatermark | BatchEntry | AckEntry): Uint8Array {
  return wirePackr.pack(message)
}

/** Decodes a message of the kind the stream holds (the caller knows which). */
export function decodeMessage<T>(bytes: Uint8Array): T {
  return wireUnpackr.unpack(bytes) as T
}

/** Turns a group message back into the rollouts a batch is scored from (payloads as references). */
export function rolloutsOf(group: GroupMessage): Rollout[] {
  return group.rollouts.map((r) => {
    const rollout: Rollout = { id: r.id, promptId: r.promptId, rewards: r.rewards, ts: r.ts, seq: r.seq }
    if (r.policyVersion !== undefined) rollout.policyVersion = r.policyVersion
    if (r.groupSize !== undefined) rollout.groupSize = r.groupSize
    if (r.ref !== undefined) rollout.payload = RawPayload.at(r.ref[0], r.ref[1], r.ref[2])
    return rollout
  })
}

/** A rollout as a group message carries it: its payload must be logged (a `RawPayload` with an entry) or absent. */
export function groupRolloutOf(rollout: Rollout): GroupRollout {
  const out: GroupRollout = { id: rollout.id, promptId: rollout.promptId, rewards: rollout.rewards, ts: rollout.ts!, seq: rollout.seq! }
  if (rollout.policyVersion !== undefined) out.policyVersion = rollout.policyVersion
  if (rollout.groupSize !== undefined) out.groupSize = rollout.groupSize
  const payload = rollout.payload
  if (payload instanceof RawPayload && payload.entry !== undefined) out.ref = [payload.entry, payload.offset, payload.length]
  else if (payload !== undefined) throw new Error(`rollout ${JSON.stringify(rollout.id)}: its payload is not a logged frame's bytes`)
  return out
}

/** Rollout seqs in a cluster: frame sequence and item index, unique and increasing in a partition's input. */
export const ITEMS_PER_FRAME = 1 << 14

export const rolloutSeq = (frame: number, item: number): number => frame * ITEMS_PER_FRAME + item
