/**
 * The messages of a cluster run (DESIGN §8; where they go: runLayout.ts), as MessagePack
 * with the wire codec. Each stream holds one kind; each kind is a plain map with short keys
 * so that any MessagePack reader (a Python `replay`, a NATS CLI user) can read it.
 *
 * The partition entries are the input of a partition's owner, the group entries its output
 * and the sequencer's input, the batch entries the sequencer's output: each stage is a pure
 * function of the stream before it, which is what makes a takeover and `replay --nats` exact.
 */
import { describe } from '../../core/describe.js'
import type { DualState } from '../../core/types.js'
import type { BatchSummary } from '../batchRecord.js'
import { wirePackr, wireUnpackr } from '../codec.js'
import type { PipelineCounters } from '../commitPlan.js'
import { encodeGroupsEntry, isObject, type DropCounts, type GroupsEntry, type GroupsWatermark } from './groupsEntry.js'

export {
  decodeGroupsForScoring,
  decodeGroupsMessage,
  emptyDropCounts,
  encodeGroupsEntry,
  groupRolloutOf,
  GroupsMessageError,
  rolloutsOf,
  scoringEntryOf,
  trainerRolloutsOf,
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
 * Where a run of a batch's groups is on the GROUPS stream: `count` consecutive groups of the
 * message at stream sequence `seq`, from its group `first` (0-based).
 */
export type GroupsRun = [seq: number, first: number, count: number]

/**
 * One step (`ds.R.batches`): the engine's state after it, and the trainer's batch by reference.
 * `groupsAt` says where the batch's groups are on GROUPS (runs, in batch order) and `advantages`
 * holds one little-endian float64 per rollout, in that order: the delivering node reads the
 * groups back and writes the trainer's record from them (`trainerRecordOf`), so the one serial
 * role neither writes nor publishes the record (ids, prompts, payload references: ≈ 75 bytes a
 * rollout against the advantage's 8). `resumeFrom` is the GROUPS stream sequence a new
 * sequencer feeds from, with `watermark` as its event time; the batch's λ and constraint
 * measures, as the trainer receives them, are the summary's.
 */
export interface BatchEntry {
  step: number
  resumeFrom: number
  watermark: number
  /**
   * The dual state after this step. Like `partitionDrops`, only the last step of a BATCHES
   * message carries it on the stream (`batchesMessages`): a takeover resumes from a message's
   * last step, and on every step the two would be a third of the message.
   */
  state?: DualState
  pipeline: PipelineCounters
  /** Cumulative drops per partition (the counters above add them up); on the stream, on a message's last step only. */
  partitionDrops?: Readonly<Record<string, DropCounts>>
  summary: BatchSummary
  /** Event time of the newest rollout in the batch. */
  newestTs: number
  groupsAt: GroupsRun[]
  advantages: Uint8Array
}

/**
 * A message of the BATCHES stream: consecutive steps, oldest first — those the sequencer made
 * while its previous publish was in flight, as many as fit in `MAX_BATCHES_MESSAGE_BYTES`
 * (`batchesMessages` splits them). One publish (a PubAck, an expected-last-sequence check)
 * then serves several steps, and under load many.
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
 * as many in a message as keep it within `maxBytes` (an entry larger than that goes alone), the
 * `state` and `partitionDrops` of the message's last step only (a takeover resumes from it).
 * The split depends on the entries only: given the same steps, the same messages (what
 * `replay --nats` checks a stored message against). Plain MessagePack: `{steps: [entry, …]}`.
 *
 * @example
 * for (const { steps, bytes } of batchesMessages(stepsMadeMeanwhile)) await publish(bytes)
 */
export function batchesMessages(entries: readonly BatchEntry[], maxBytes = MAX_BATCHES_MESSAGE_BYTES): { steps: BatchEntry[]; bytes: Uint8Array }[] {
  // each step without its state: what every step but a message's last is
  const bare = entries.map(({ state: _state, partitionDrops: _drops, ...rest }) => wirePackr.pack(rest))
  const messages: { steps: BatchEntry[]; bytes: Uint8Array }[] = []
  // the key and the widest array header (an array of 16 or more: 3 bytes) around the steps
  const room = maxBytes - STEPS_KEY.length - 3
  for (let first = 0; first < entries.length;) {
    // the most steps whose bare bytes fit, then fewer while the last one's with its state does not
    let size = bare[first].length
    let end = first + 1
    while (end < entries.length && end - first < 0xffff && size + bare[end].length <= room) size += bare[end++].length
    let last = withState(bare[end - 1], entries[end - 1])
    while (end - first > 1 && size - bare[end - 1].length + last.length > room) {
      size -= bare[--end].length
      last = withState(bare[end - 1], entries[end - 1])
    }
    const count = end - first
    const header = count < 16 ? Uint8Array.of(0x90 | count) : Uint8Array.of(0xdc, count >> 8, count & 0xff)
    messages.push({ steps: entries.slice(first, end), bytes: Buffer.concat([STEPS_KEY, header, ...bare.slice(first, end - 1), last]) })
    first = end
  }
  return messages
}

/** A step's bare map (`bytes`) with its `state` and `partitionDrops` after the other fields. */
function withState(bytes: Uint8Array, entry: BatchEntry): Uint8Array {
  if (entry.state === undefined || entry.partitionDrops === undefined)
    throw new Error(`batchesMessages: step ${entry.step} has no state or partition drops to end a message with`)
  const more = wirePackr.pack({ state: entry.state, partitionDrops: entry.partitionDrops })
  const [count, at] = mapHeader(bytes)
  const [added, from] = mapHeader(more)
  const total = count + added
  const header = total < 16 ? Uint8Array.of(0x80 | total) : Uint8Array.of(0xde, total >> 8, total & 0xff)
  return Buffer.concat([header, bytes.subarray(at), more.subarray(from)])
}

/** A MessagePack map's entry count and where its entries start (fixmap or map16: a step has a few dozen fields at most). */
function mapHeader(bytes: Uint8Array): [count: number, at: number] {
  /* c8 ignore next -- msgpackr writes every plain object as a map16 (it does not size a map up front); a fixmap is read should a version not */
  if ((bytes[0] & 0xf0) === 0x80) return [bytes[0] & 0x0f, 1]
  return [(bytes[1] << 8) | bytes[2], 3]
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
  const last = steps[steps.length - 1] as unknown as Record<string, unknown>
  if (!isObject(last) || !isObject(last.state) || !isObject(last.partitionDrops))
    throw new BatchesMessageError(where, 'its last step carries no state and partition drops')
  return steps
}

/**
 * Trainer acknowledgements (`ds.R.acks`), as the node that received them recorded them: the
 * steps acknowledged while the node's previous message was being stored, in the order they
 * came, and the highest policy version they reported. (One message per acknowledgement was
 * a third of a node's NATS traffic: a trainer acknowledges every step.)
 */
export interface AckEntry {
  steps: number[]
  policyVersion?: number
  node: string
}

/**
 * An ACKS message, checked: throws naming `where` and what is wrong when it is not one (a
 * message of another version, or not ours).
 */
export function decodeAckMessage(bytes: Uint8Array, where: string): AckEntry {
  let message: unknown
  try {
    message = wireUnpackr.unpack(bytes)
  } catch (error) {
    throw new Error(`${where}: not an acknowledgement message (not MessagePack: ${(error as Error).message})`)
  }
  const entry = message as Partial<AckEntry> | null
  if (
    !isObject(entry) ||
    typeof entry.node !== 'string' ||
    !Array.isArray(entry.steps) ||
    entry.steps.length === 0 ||
    !entry.steps.every((step) => Number.isSafeInteger(step) && step >= 1) ||
    (entry.policyVersion !== undefined && !Number.isSafeInteger(entry.policyVersion))
  )
    throw new Error(`${where}: not an acknowledgement message of this dualstream version ({steps: [step ≥ 1], node, policyVersion?}): ${describe(message)}`)
  return entry as AckEntry
}

/** "step 3" or "steps 3, 4, 6": the steps of an acknowledgement message, for a log line. */
export function ackedSteps(entry: AckEntry): string {
  const shown = entry.steps.length <= 6 ? entry.steps.join(', ') : `${entry.steps.slice(0, 3).join(', ')}, … ${entry.steps.at(-1)} (${entry.steps.length})`
  return `${entry.steps.length === 1 ? 'step' : 'steps'} ${shown}`
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
