/**
 * The messages of the GROUPS stream (DESIGN §8): the groups a partition's owner formed, as the
 * sequencer reads them, and their wire form. A GroupsEntry travels as columns — the groups'
 * prompts, flags and times, the rollouts' ids, and one little-endian float64 column per
 * number (event time, seq, each reward channel, the payload references) — because the
 * sequencer reads every rollout of the run and a MessagePack map per rollout cost it more
 * than everything else it does (≈ 2 µs a rollout to decode; the columns ≈ 0.2 µs).
 *
 * The wire form of a GroupsEntry (a MessagePack map; any MessagePack reader can take it
 * apart, e.g. `numpy.frombuffer(cols['rts'], '<f8')`):
 *
 *   { p, n, through, drops, cols: {
 *       channels: [str]                  the reward channels, in column order
 *       promptId: [str], partial: bin    per group (partial: one byte, 0 or 1)
 *       ts: bin, size: bin               per group: completion time (f64), rollouts (u32)
 *       id: [str]                        per rollout, group after group
 *       rts: bin, seq: bin               per rollout (f64)
 *       rewards: bin                     f64, channel after channel (N values each), NaN = null
 *       policyVersion?: bin, groupSize?: bin   f64 per rollout, NaN = absent (the key only when one has it)
 *       ref?: bin                        3 f64 per rollout: frame seq, offset, length; NaN = no payload
 *   } }
 *
 * A rollout's promptId is its group's. The rewards are the channels the math reads (the
 * config's: `groupRolloutOf`), null where not scored, so encoding and decoding is exact.
 */
import { describe } from '../../core/describe.js'
import type { Group, RewardColumns, Rollout } from '../../core/types.js'
import { wirePackr, wireUnpackr } from '../codec.js'
import type { TrainerRollout } from '../outboxEncoder.js'
import { RawPayload } from '../rawPayload.js'
import { float64sOf } from './float64Bytes.js'

/** A rollout of a formed group as the sequencer needs it: no payload, only where it is logged. */
export interface GroupRollout {
  id: string
  promptId: string
  policyVersion?: number
  groupSize?: number
  /** The config's channels, in its order: a number, or null when not scored. */
  rewards: Record<string, number | null>
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

export const emptyDropCounts = (): DropCounts => ({ stale: 0, duplicate: 0, incompleteGroups: 0, incompleteGroupRollouts: 0 })

/**
 * A rollout as a group message carries it: the reward `channels` the math reads (null where
 * it was not scored; other channels are the trainer's business and stay in the logged frame),
 * its payload by reference — which must be logged (a `RawPayload` with an entry) or absent.
 */
export function groupRolloutOf(rollout: Rollout, channels: readonly string[]): GroupRollout {
  const rewards: Record<string, number | null> = {}
  for (const channel of channels) rewards[channel] = rollout.rewards[channel] ?? null
  const payload = rollout.payload
  if (payload !== undefined && !(payload instanceof RawPayload && payload.entry !== undefined))
    throw new Error(`rollout ${JSON.stringify(rollout.id)}: its payload is not a logged frame's bytes`)
  // the reference in the literal (most rollouts have one): added after, it costs each a property store
  const out: GroupRollout =
    payload === undefined
      ? { id: rollout.id, promptId: rollout.promptId, rewards, ts: rollout.ts!, seq: rollout.seq! }
      : { id: rollout.id, promptId: rollout.promptId, rewards, ts: rollout.ts!, seq: rollout.seq!, ref: [payload.entry!, payload.offset, payload.length] }
  if (rollout.policyVersion !== undefined) out.policyVersion = rollout.policyVersion
  if (rollout.groupSize !== undefined) out.groupSize = rollout.groupSize
  return out
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

/** A GroupsEntry with its groups ready to score (`rolloutsOf` of each): what `decodeGroupsForScoring` gives for its bytes. */
export function scoringEntryOf(entry: GroupsEntry): ScoringGroupsEntry {
  return { ...entry, groups: entry.groups.map((g) => ({ promptId: g.promptId, partial: g.partial, ts: g.ts, rollouts: rolloutsOf(g) })) }
}

/** The `cols` of a GroupsEntry on the wire (see the top of this file). */
interface GroupColumns {
  channels: string[]
  promptId: string[]
  partial: Uint8Array
  ts: Uint8Array
  size: Uint8Array
  id: string[]
  rts: Uint8Array
  seq: Uint8Array
  rewards: Uint8Array
  policyVersion?: Uint8Array
  groupSize?: Uint8Array
  ref?: Uint8Array
}

const F64 = 8

/**
 * A GroupsEntry's bytes: its groups as columns. Throws when a rollout's promptId is not its
 * group's, or its rewards are not the channels of the message's first rollout (both are the
 * owner's invariants: `completeGroups` groups by prompt, `groupRolloutOf` picks the channels).
 */
export function encodeGroupsEntry(entry: GroupsEntry): Uint8Array {
  const { groups } = entry
  const g = groups.length
  let n = 0
  let policyVersions = false
  let groupSizes = false
  let refs = false
  let first: GroupRollout | undefined
  for (const group of groups)
    for (const r of group.rollouts) {
      n++
      first ??= r
      policyVersions ||= r.policyVersion !== undefined
      groupSizes ||= r.groupSize !== undefined
      refs ||= r.ref !== undefined
    }
  const channels = first === undefined ? [] : Object.keys(first.rewards)
  const c = channels.length
  const perRollout = 2 + c + (policyVersions ? 1 : 0) + (groupSizes ? 1 : 0) + (refs ? 3 : 0)
  const buffer = new ArrayBuffer(g * (1 + F64 + 4) + n * F64 * perRollout)
  const view = new DataView(buffer)
  let at = 0
  const column = (bytes: number): { start: number; bin: Uint8Array } => {
    const start = at
    at += bytes
    return { start, bin: new Uint8Array(buffer, start, bytes) }
  }
  const partial = column(g)
  const ts = column(g * F64)
  const size = column(g * 4)
  const rts = column(n * F64)
  const seq = column(n * F64)
  const rewards = column(n * c * F64)
  const policyVersion = policyVersions ? column(n * F64) : undefined
  const groupSize = groupSizes ? column(n * F64) : undefined
  const ref = refs ? column(n * 3 * F64) : undefined
  const promptId = new Array<string>(g)
  const id = new Array<string>(n)
  let i = 0
  for (let k = 0; k < g; k++) {
    const group = groups[k]
    promptId[k] = group.promptId
    partial.bin[k] = group.partial ? 1 : 0
    view.setFloat64(ts.start + k * F64, group.ts, true)
    view.setUint32(size.start + k * 4, group.rollouts.length, true)
    for (const r of group.rollouts) {
      if (r.promptId !== group.promptId)
        throw new Error(
          `GROUPS entry of partition ${entry.p}: rollout ${JSON.stringify(r.id)} of prompt ${JSON.stringify(r.promptId)} is in the group of ${JSON.stringify(group.promptId)}`,
        )
      id[i] = r.id
      view.setFloat64(rts.start + i * F64, r.ts, true)
      view.setFloat64(seq.start + i * F64, r.seq, true)
      let given = 0
      for (const _ in r.rewards) given++
      if (given !== c) throw new Error(channelsError(entry, r, channels))
      for (let ch = 0; ch < c; ch++) {
        const value = r.rewards[channels[ch]]
        if (value === undefined) throw new Error(channelsError(entry, r, channels))
        if (value !== null && typeof value !== 'number')
          throw new Error(
            `GROUPS entry of partition ${entry.p}: rollout ${JSON.stringify(r.id)} has rewards.${channels[ch]} = ${describe(value)}, not a number or null`,
          )
        view.setFloat64(rewards.start + (ch * n + i) * F64, value ?? NaN, true)
      }
      if (policyVersion !== undefined) view.setFloat64(policyVersion.start + i * F64, r.policyVersion ?? NaN, true)
      if (groupSize !== undefined) view.setFloat64(groupSize.start + i * F64, r.groupSize ?? NaN, true)
      if (ref !== undefined) for (let k3 = 0; k3 < 3; k3++) view.setFloat64(ref.start + (i * 3 + k3) * F64, r.ref === undefined ? NaN : r.ref[k3], true)
      i++
    }
  }
  const cols: GroupColumns = { channels, promptId, partial: partial.bin, ts: ts.bin, size: size.bin, id, rts: rts.bin, seq: seq.bin, rewards: rewards.bin }
  if (policyVersion !== undefined) cols.policyVersion = policyVersion.bin
  if (groupSize !== undefined) cols.groupSize = groupSize.bin
  if (ref !== undefined) cols.ref = ref.bin
  return wirePackr.pack({ p: entry.p, n: entry.n, through: entry.through, drops: entry.drops, cols })
}

function channelsError(entry: GroupsEntry, r: GroupRollout, channels: readonly string[]): string {
  return `GROUPS entry of partition ${entry.p}: rollout ${JSON.stringify(r.id)} has the reward channels ${JSON.stringify(Object.keys(r.rewards))}, the message's are ${JSON.stringify(channels)}`
}

/** A GROUPS message that is not one: says which and what is wrong with it. */
export class GroupsMessageError extends Error {
  constructor(reason: string) {
    super(`not a GROUPS message of this dualstream version: ${reason}`)
    this.name = 'GroupsMessageError'
  }
}

/** A MessagePack map as decoded (not an array, not binary). */
export const isObject = (x: unknown): x is Record<string, unknown> => typeof x === 'object' && x !== null && !Array.isArray(x) && !(x instanceof Uint8Array)

/** A column's bytes as a DataView, after checking its length. */
function columnView(cols: Record<string, unknown>, key: string, bytes: number, where: string): DataView {
  const bin = cols[key]
  if (!(bin instanceof Uint8Array)) throw new GroupsMessageError(`${where}: cols.${key} is not binary`)
  if (bin.byteLength !== bytes) throw new GroupsMessageError(`${where}: cols.${key} has ${bin.byteLength} bytes, ${bytes} expected`)
  return new DataView(bin.buffer, bin.byteOffset, bin.byteLength)
}

function strings(cols: Record<string, unknown>, key: string, where: string): string[] {
  const list = cols[key]
  if (!Array.isArray(list) || !list.every((s) => typeof s === 'string')) throw new GroupsMessageError(`${where}: cols.${key} is not a list of strings`)
  return list as string[]
}

/** What a decoded entry's rollouts are made of: the columns' values of one rollout (NaN where absent). */
type RolloutOf<R> = (
  id: string,
  promptId: string,
  rewards: Record<string, number | null>,
  ts: number,
  seq: number,
  policyVersion: number,
  groupSize: number,
  frame: number,
  offset: number,
  length: number,
) => R

// (the payload in the literal, as in groupRolloutOf)
const groupRollout: RolloutOf<GroupRollout> = (id, promptId, rewards, ts, seq, policyVersion, groupSize, frame, offset, length) => {
  const r: GroupRollout = Number.isNaN(frame) ? { id, promptId, rewards, ts, seq } : { id, promptId, rewards, ts, seq, ref: [frame, offset, length] }
  if (!Number.isNaN(policyVersion)) r.policyVersion = policyVersion
  if (!Number.isNaN(groupSize)) r.groupSize = groupSize
  return r
}

// the same rollout as `rolloutsOf` makes it from the group message, without the message in between
const scoredRollout: RolloutOf<Rollout> = (id, promptId, rewards, ts, seq, policyVersion, groupSize, frame, offset, length) => {
  const r: Rollout = Number.isNaN(frame)
    ? { id, promptId, rewards, ts, seq }
    : { id, promptId, rewards, ts, seq, payload: RawPayload.at(frame, offset, length) }
  if (!Number.isNaN(policyVersion)) r.policyVersion = policyVersion
  if (!Number.isNaN(groupSize)) r.groupSize = groupSize
  return r
}

/**
 * Decodes a message of the GROUPS stream: a GroupsEntry (its columns back into groups, exactly
 * as encoded) or a watermark. Throws a `GroupsMessageError` naming what is wrong when the
 * bytes are neither (another version's message, or not ours at all).
 *
 * @example
 * const message = decodeGroupsMessage(stored.data)
 * if ('wm' in message) advance(message.wm)
 * else for (const group of message.groups) feed(group)
 */
export function decodeGroupsMessage(bytes: Uint8Array): GroupsEntry | GroupsWatermark {
  const parsed = parseGroups(bytes)
  if ('wm' in parsed) return parsed
  const groups = new Array<GroupMessage>(parsed.promptId.length)
  forEachGroup(parsed, (k, start, end) => {
    const rollouts = new Array<GroupRollout>(end - start)
    for (let i = start; i < end; i++) rollouts[i - start] = rolloutAt(parsed, i, k, groupRollout)
    groups[k] = groupAt(parsed, k, rollouts)
  })
  return { p: parsed.p, n: parsed.n, through: parsed.through, groups, drops: parsed.drops }
}

/**
 * A GroupsEntry whose groups are ready to score: `rolloutsOf` of each group message. From
 * `decodeGroupsForScoring`, the groups also carry their reward columns and `newestTs` gives
 * each group's newest rollout time.
 */
export type ScoringGroupsEntry = Omit<GroupsEntry, 'groups'> & { groups: Group[]; newestTs?: Float64Array }

/**
 * Decodes a message of the GROUPS stream straight into the groups the sequencer scores: each
 * group's rewards as columns (`Group.rewardColumns`: views of one array per message, which is
 * all the math reads), its rollouts built only when something asks for them (as `rolloutsOf`
 * of `decodeGroupsMessage`'s groups makes them: the delivering node's trainer record does,
 * the sequencer does not), and each group's newest rollout time.
 */
export function decodeGroupsForScoring(bytes: Uint8Array): ScoringGroupsEntry | GroupsWatermark {
  const parsed = parseGroups(bytes)
  if ('wm' in parsed) return parsed
  const { channels, count } = parsed
  const rewards = float64sOf(parsed.rewards, count * channels.length)
  const values: Record<string, Float64Array> = {}
  for (let ch = 0; ch < channels.length; ch++) values[channels[ch]] = rewards.subarray(ch * count, (ch + 1) * count)
  const times = float64sOf(parsed.rts, count)
  const groups = new Array<Group>(parsed.promptId.length)
  const newestTs = new Float64Array(groups.length)
  forEachGroup(parsed, (k, start, end) => {
    let newest = -Infinity
    for (let i = start; i < end; i++) if (times[i] > newest) newest = times[i]
    newestTs[k] = newest
    groups[k] = new ColumnarGroup(parsed, k, { values, start, size: end - start })
  })
  return { p: parsed.p, n: parsed.n, through: parsed.through, groups, drops: parsed.drops, newestTs }
}

/**
 * A group of a decoded GroupsEntry whose rollouts are built from the entry's columns on first
 * read (the math reads `rewardColumns`). A class, not a property defined per object: that
 * made every group an object of its own shape and cost more than the rollouts it saved.
 */
class ColumnarGroup implements Group {
  readonly promptId: string
  readonly partial: boolean
  readonly ts: number
  // private fields (not own enumerable properties): a spread or a serialiser sees only the group's own fields
  readonly #parsed: ParsedGroups
  readonly #k: number
  #built: Rollout[] | undefined

  constructor(
    parsed: ParsedGroups,
    k: number,
    readonly rewardColumns: RewardColumns,
  ) {
    this.#parsed = parsed
    this.#k = k
    this.promptId = parsed.promptId[k]
    this.partial = parsed.partial.getUint8(k) === 1
    this.ts = parsed.ts.getFloat64(k * F64, true)
  }

  /**
   * What the trainer's record reads of the rollouts: their ids, prompts and payload
   * references, without the rewards the whole rollouts would build (the delivering node writes
   * a record per step and reads nothing else of them). The whole rollouts when built already.
   */
  trainerRollouts(): TrainerRollout[] {
    if (this.#built !== undefined) return this.#built
    const { start, size } = this.rewardColumns
    const { id, ref } = this.#parsed
    const rollouts = new Array<TrainerRollout>(size)
    for (let i = start; i < start + size; i++) {
      const frame = ref === undefined ? NaN : ref.getFloat64(i * 3 * F64, true)
      rollouts[i - start] = Number.isNaN(frame)
        ? { id: id[i], promptId: this.promptId }
        : {
            id: id[i],
            promptId: this.promptId,
            payload: RawPayload.at(frame, ref!.getFloat64((i * 3 + 1) * F64, true), ref!.getFloat64((i * 3 + 2) * F64, true)),
          }
    }
    return rollouts
  }

  /** As `rolloutsOf` makes them from the group message; built once. */
  get rollouts(): Rollout[] {
    if (this.#built === undefined) {
      const { start, size } = this.rewardColumns
      this.#built = new Array<Rollout>(size)
      for (let i = 0; i < size; i++) this.#built[i] = rolloutAt(this.#parsed, start + i, this.#k, scoredRollout)
    }
    return this.#built
  }
}

/**
 * What the trainer's record reads of a group's rollouts (ids, prompts, payloads): for a group of
 * `decodeGroupsForScoring`, built from its columns without the rest; otherwise its rollouts.
 */
export function trainerRolloutsOf(group: Group): readonly TrainerRollout[] {
  return group instanceof ColumnarGroup ? group.trainerRollouts() : group.rollouts
}

/** A GroupsEntry's columns, checked (lengths, group sizes): what both decoders build from. */
interface ParsedGroups {
  p: number
  n: number
  through: number
  drops: DropCounts
  channels: string[]
  promptId: string[]
  id: string[]
  count: number
  partial: DataView
  ts: DataView
  size: DataView
  rts: DataView
  seq: DataView
  rewards: DataView
  policyVersion?: DataView
  groupSize?: DataView
  ref?: DataView
}

function parseGroups(bytes: Uint8Array): ParsedGroups | GroupsWatermark {
  let message: unknown
  try {
    message = wireUnpackr.unpack(bytes)
  } catch (error) {
    throw new GroupsMessageError(`not MessagePack (${(error as Error).message})`)
  }
  if (isObject(message) && typeof message.wm === 'number') return { wm: message.wm }
  if (!isObject(message) || !isObject(message.cols) || !isObject(message.drops))
    throw new GroupsMessageError('neither a watermark nor a groups entry with columns (cols)')
  const { p, n, through } = message as { p: number; n: number; through: number }
  const where = `partition ${p}, message ${n}`
  const cols = message.cols
  const channels = strings(cols, 'channels', where)
  const promptId = strings(cols, 'promptId', where)
  const id = strings(cols, 'id', where)
  const g = promptId.length
  const count = id.length
  const parsed: ParsedGroups = {
    p,
    n,
    through,
    drops: message.drops as unknown as DropCounts,
    channels,
    promptId,
    id,
    count,
    partial: columnView(cols, 'partial', g, where),
    ts: columnView(cols, 'ts', g * F64, where),
    size: columnView(cols, 'size', g * 4, where),
    rts: columnView(cols, 'rts', count * F64, where),
    seq: columnView(cols, 'seq', count * F64, where),
    rewards: columnView(cols, 'rewards', count * channels.length * F64, where),
  }
  if (cols.policyVersion !== undefined) parsed.policyVersion = columnView(cols, 'policyVersion', count * F64, where)
  if (cols.groupSize !== undefined) parsed.groupSize = columnView(cols, 'groupSize', count * F64, where)
  if (cols.ref !== undefined) parsed.ref = columnView(cols, 'ref', count * 3 * F64, where)
  // the group sizes must add up to the rollouts: checked before anything is built from them
  let total = 0
  for (let k = 0; k < g; k++) {
    total += parsed.size.getUint32(k * 4, true)
    if (total > count) throw new GroupsMessageError(`${where}: the group sizes add up to more than the ${count} rollout ids`)
  }
  if (total !== count) throw new GroupsMessageError(`${where}: the group sizes add up to ${total}, there are ${count} rollout ids`)
  return parsed
}

/** Calls `each(k, start, end)` for every group: its rollouts are `start` to `end` (exclusive). */
function forEachGroup(parsed: ParsedGroups, each: (k: number, start: number, end: number) => void): void {
  for (let k = 0, start = 0; k < parsed.promptId.length; k++) {
    const end = start + parsed.size.getUint32(k * 4, true)
    each(k, start, end)
    start = end
  }
}

function groupAt<R>(parsed: ParsedGroups, k: number, rollouts: R[]): { promptId: string; partial: boolean; ts: number; rollouts: R[] } {
  return { promptId: parsed.promptId[k], partial: parsed.partial.getUint8(k) === 1, ts: parsed.ts.getFloat64(k * F64, true), rollouts }
}

/** Rollout `i` (of group `k`) from the columns. */
function rolloutAt<R>(parsed: ParsedGroups, i: number, k: number, rolloutOf: RolloutOf<R>): R {
  const { channels, count, rewards, ref, policyVersion, groupSize } = parsed
  const scores: Record<string, number | null> = {}
  for (let ch = 0; ch < channels.length; ch++) {
    const value = rewards.getFloat64((ch * count + i) * F64, true)
    scores[channels[ch]] = Number.isNaN(value) ? null : value
  }
  const frame = ref === undefined ? NaN : ref.getFloat64(i * 3 * F64, true)
  return rolloutOf(
    parsed.id[i],
    parsed.promptId[k],
    scores,
    parsed.rts.getFloat64(i * F64, true),
    parsed.seq.getFloat64(i * F64, true),
    policyVersion === undefined ? NaN : policyVersion.getFloat64(i * F64, true),
    groupSize === undefined ? NaN : groupSize.getFloat64(i * F64, true),
    frame,
    Number.isNaN(frame) ? 0 : ref!.getFloat64((i * 3 + 1) * F64, true),
    Number.isNaN(frame) ? 0 : ref!.getFloat64((i * 3 + 2) * F64, true),
  )
}
