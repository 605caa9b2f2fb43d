/**
 * The trainer's batch of a cluster step, written by the node that delivers it (DESIGN §8). A
 * BATCHES entry names where its groups are on the GROUPS stream and carries one advantage per
 * rollout; the rollouts themselves (ids, prompts, payload references) are read back from those
 * GROUPS messages, which every node can read. The record is then exactly the one a single node
 * writes for the same batch (`encodeTrainerRecord`), payloads still by reference to the logged
 * frames (`assembleBatch` splices them in).
 *
 * Why here and not in the sequencer: the sequencer is the one role that cannot scale out, and
 * writing the record (≈ 75 bytes a rollout) and publishing it cost it more than its math; a
 * delivering node does it for the steps its own trainer reads, beside everything else.
 */
import type { JetStreamManager } from '@nats-io/jetstream'
import type { Group } from '../../core/types.js'
import { encodeTrainerRecord } from '../outboxEncoder.js'
import { float64sOf } from './float64Bytes.js'
import { fetchStreamMessage } from './frameCache.js'
import { WeightedLru } from './weightedLru.js'
import { decodeGroupsForScoring, trainerRolloutsOf, type BatchEntry } from './messages.js'

/** A step's advantages (little-endian float64, one per rollout); throws naming the step when the bytes are not that. */
export function advantagesOf(entry: BatchEntry): Float64Array {
  const bytes = entry.advantages
  if (!(bytes instanceof Uint8Array) || bytes.byteLength % 8 !== 0)
    throw new Error(
      `step ${entry.step}: its advantages are not little-endian float64s (${bytes instanceof Uint8Array ? `${bytes.byteLength} bytes` : typeof bytes})`,
    )
  return float64sOf(bytes, bytes.byteLength / 8)
}

/**
 * The GROUPS stream messages a step names (`entry.groupsAt`), by stream sequence, each once.
 *
 * @example
 * await Promise.all(groupsSeqsOf(entry).map((seq) => cache.get(seq)))
 */
export function groupsSeqsOf(entry: BatchEntry): number[] {
  return [...new Set(entry.groupsAt.map(([seq]) => seq))]
}

/**
 * The groups of a step, in batch order: those `entry.groupsAt` names, taken from `messageAt(seq)`
 * (the groups of the GROUPS message at `seq`, in order). Throws naming the step when a run
 * lies outside its message.
 */
export function batchGroupsOf(entry: BatchEntry, messageAt: (seq: number) => readonly Group[]): Group[] {
  const groups: Group[] = []
  for (const [seq, first, count] of entry.groupsAt) {
    const message = messageAt(seq)
    if (first + count > message.length)
      throw new Error(`step ${entry.step}: groups ${first}–${first + count - 1} of GROUPS seq ${seq}, which has ${message.length}`)
    for (let k = first; k < first + count; k++) groups.push(message[k])
  }
  return groups
}

/**
 * The trainer's record of a step, its payloads by reference: its groups (`batchGroupsOf`) with
 * its advantages, λ and constraint measures. Throws naming the step when the advantages do
 * not match the groups' rollouts.
 */
export function trainerRecordOf(entry: BatchEntry, messageAt: (seq: number) => readonly Group[]): Buffer {
  const groups = batchGroupsOf(entry, messageAt).map((group) => ({ rollouts: trainerRolloutsOf(group) }))
  const advantages = advantagesOf(entry)
  let rollouts = 0
  for (const group of groups) rollouts += group.rollouts.length
  if (rollouts !== advantages.length) throw new Error(`step ${entry.step}: its groups hold ${rollouts} rollouts, it has ${advantages.length} advantages`)
  const { summary } = entry
  return encodeTrainerRecord({ step: entry.step, lambda: summary.lambda, constraints: summary.constraints, groups, advantages })
}

/**
 * The groups of every GROUPS message `entry` names, fetched through `cache` and held (not
 * looked up in the cache again, which may let one go while another is fetched).
 */
export async function groupsOfEntry(entry: BatchEntry, cache: GroupsCache): Promise<(seq: number) => readonly Group[]> {
  const messages = new Map(await Promise.all(groupsSeqsOf(entry).map(async (seq) => [seq, await cache.get(seq)] as const)))
  return (seq) => messages.get(seq)!
}

export interface GroupsCacheOptions {
  jsm: JetStreamManager
  /** The run's GROUPS stream. */
  stream: string
  /** Most rollouts kept decoded (default 16,384: a node delivers steps moments after they are made, and what is kept is garbage the collector walks); a message with more is returned but not kept. */
  maxRollouts?: number
}

/**
 * The GROUPS messages a node reads back to write its trainer's batches, decoded into the groups
 * the sequencer scored (`decodeGroupsForScoring`), by stream sequence: fetched with a direct
 * get, kept least recently used first out. Consecutive steps mostly share a message (an owner
 * under load publishes 64 groups in one; the paper's batch has 16), so each is fetched and
 * decoded once. Concurrent reads of one message share one request.
 *
 * @example
 * const cache = new GroupsCache({ jsm, stream: layout.streams.groups })
 * await Promise.all(groupsSeqsOf(entry).map((seq) => cache.get(seq)))
 * const record = trainerRecordOf(entry, (seq) => cache.peek(seq)!)
 */
export class GroupsCache {
  private readonly messages: WeightedLru<number, readonly Group[]>
  /** Messages fetched from the stream (cache misses). */
  fetched = 0

  constructor(private readonly options: GroupsCacheOptions) {
    this.messages = new WeightedLru(options.maxRollouts ?? 16_384, rolloutsIn)
  }

  /** The groups of the GROUPS message at `seq`; rejects, naming it, when the stream has none there or it holds no groups. */
  get(seq: number): Promise<readonly Group[]> {
    return this.messages.getOrLoad(seq, () => this.fetch(seq))
  }

  /** The groups at `seq` if they are kept (no request); a read makes them the most recently used. */
  peek(seq: number): readonly Group[] | undefined {
    return this.messages.get(seq)
  }

  /** Keeps the groups of a message this node has at hand (decoded as `decodeGroupsForScoring` does): no fetch for them. */
  put(seq: number, groups: readonly Group[]): void {
    if (!this.messages.has(seq)) this.messages.set(seq, groups)
  }

  private async fetch(seq: number): Promise<readonly Group[]> {
    const { jsm, stream } = this.options
    const bytes = await fetchStreamMessage(jsm, stream, seq, `GROUPS message ${seq}`)
    this.fetched++
    const message = decodeGroupsForScoring(bytes)
    if (!('groups' in message)) throw new Error(`GROUPS message ${seq}: a watermark, where a step's groups were expected`)
    return message.groups
  }
}

/** Rollouts in a message's groups (from their columns where they have them: a decoded group builds its rollouts only when read). */
function rolloutsIn(groups: readonly Group[]): number {
  let rollouts = 0
  for (const group of groups) rollouts += group.rewardColumns?.size ?? group.rollouts.length
  return rollouts
}
