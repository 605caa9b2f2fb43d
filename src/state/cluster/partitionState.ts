/**
 * What a partition's owner computes (DESIGN §8, cluster spec §2), without any I/O: the
 * deterministic function from the entries of `ds.R.part.<p>` (in stream order) to what each
 * entry caused — the groups it completed and the partition's drops after it. Every owner of
 * the partition, a takeover that re-reads the partition from seq 1, and `replay --nats` run
 * this same function, so they all form the same groups for the same entries.
 *
 * How those outputs are cut into the GroupsEntry messages of `ds.R.groups.<p>` is the owner's
 * choice (it coalesces whatever waits while its previous publish is in flight, so the cut
 * depends on timing): a message carries the outputs of consecutive entries, in order, and says
 * through which entry (`through`). That is all a new owner or a replay needs: the outputs of
 * the entries in (previous message's `through`, this message's `through`] are the message's
 * groups (`groupsEntryOf`), whatever the cut was; a new owner publishes the outputs of the
 * entries after the last message's `through`, none twice, none lost.
 *
 * Inside it is the single-node pipeline's front half, driven the way src/state/pipeline.ts
 * drives `fgrpo`: an exact id index (the node's dedup at ingest), then `dropStale` (with the
 * policy versions of the partition's `policy` entries) and `completeGroups` (on event time,
 * advanced by the rollouts' ts and the `watermark` entries), fed synchronously through RxJS
 * Subjects. The operators are synchronous, so a `feed` returns after everything the entry
 * caused has been emitted.
 *
 * An entry the owner cannot read (a rollouts entry naming an item its frame does not have, an
 * item that is not a valid rollout, a payload that is not a view of its frame: a corrupt or
 * foreign message, since ingest validated every item) throws an error that says which
 * partition, stream seq, frame and item, and leaves the state as it was. It is not skipped:
 * skipping would make the output depend on the validation rules of the owner's version, and
 * two versions would then publish different groups for the same entries. Stopping is the
 * safe answer; the message names what to look at (and delete from the stream, if it is junk).
 */
import { Subject, type Subscription } from 'rxjs'
import { configChannels, type Config } from '../../core/config.js'
import type { DropEvent, Group, Rollout } from '../../core/types.js'
import { DEFAULT_LIMITS, formatFieldError, validateRollout } from '../../core/validate.js'
import { describe } from '../../core/describe.js'
import { completeGroups } from '../../../operators/completeGroups.js'
import { dropStale } from '../../../operators/dropStale.js'
import { decodeLoggedFrame, RawPayload } from '../rawPayload.js'
import {
  emptyDropCounts,
  groupRolloutOf,
  ITEMS_PER_FRAME,
  rolloutSeq,
  type DropCounts,
  type GroupMessage,
  type GroupsEntry,
  type PartitionEntry,
} from './messages.js'

/** What one entry of a partition caused: the groups it completed, in order, and the partition's drops after it. */
export interface PartitionOutput {
  /** The entry's partition stream seq. */
  seq: number
  groups: GroupMessage[]
  /** Cumulative for the partition, through this entry. */
  drops: DropCounts
}

/**
 * The GroupsEntry message `n` of partition `p` carrying `outputs` (consecutive entries'
 * outputs, in order): their groups, `through` the last one's entry, with the partition's
 * drops after it (pass `through` and `drops` when `outputs` may be empty: a replay rebuilding
 * a stored message). Owners and `replay --nats` build messages with this one function, so the
 * same outputs make the same bytes (`encodeMessage`).
 *
 * @example
 * const message = groupsEntryOf(3, lastN + 1, waiting) // → { p: 3, n, through, groups, drops }
 */
export function groupsEntryOf(
  p: number,
  n: number,
  outputs: readonly PartitionOutput[],
  through: number = outputs[outputs.length - 1].seq,
  drops: DropCounts = outputs[outputs.length - 1].drops,
): GroupsEntry {
  const groups = outputs.length === 1 ? outputs[0].groups : outputs.flatMap((output) => output.groups)
  return { p, n, through, groups, drops }
}

/** A logged frame as a partition reads it: its `rollouts` items (payloads as views of `bytes`) and its bytes. */
export interface PartitionFrame {
  items: readonly unknown[]
  bytes: Uint8Array
}

/**
 * Decodes a frame's bytes (from `ds.R.frames`) into its rollouts items, payloads as
 * `RawPayload` views of the bytes; throws, naming `where`, when it is not a rollouts frame.
 * The items are never modified by `PartitionState.feed`, so one decoded frame may serve every
 * partition it spans (a node's `FrameCache.decoded` decodes each frame once for all its owners).
 *
 * @example
 * state.feed(seq, entry, decodePartitionFrame(await frames(entry.frame), `frame ${entry.frame}`))
 */
export function decodePartitionFrame(bytes: Uint8Array, where: string): PartitionFrame {
  let frame: unknown
  try {
    frame = decodeLoggedFrame(bytes, 'msgpack')
  } catch (error) {
    throw new Error(`${where}: not a MessagePack frame (${(error as Error).message})`, { cause: error })
  }
  const items = (frame as { rollouts?: unknown } | null)?.rollouts
  if (!Array.isArray(items)) throw new Error(`${where}: not a rollouts frame (its rollouts are ${describe(items)})`)
  return { items, bytes }
}

const isTime = (value: unknown): value is number => typeof value === 'number' && Number.isFinite(value)
const isIndex = (value: unknown, below: number): value is number => Number.isSafeInteger(value) && (value as number) >= 0 && (value as number) < below

/**
 * `value` as a partition entry, or an error naming `where` and what is wrong: entries are
 * decoded from a stream anyone with access may write to.
 *
 * @example
 * const entry = partitionEntryOf(decodeMessage(message.data), `partition 3, stream seq ${message.seq}`)
 */
export function partitionEntryOf(value: unknown, where: string): PartitionEntry {
  const entry = value as Record<string, unknown> | null
  const bad = (what: string) => new Error(`${where}: not a partition entry: ${what}`)
  if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) throw bad(`got ${describe(value)}, not a map`)
  if (!isTime(entry.ts)) throw bad(`ts must be a finite number, got ${describe(entry.ts)}`)
  switch (entry.k) {
    case 'rollouts':
      if (!Number.isSafeInteger(entry.frame) || (entry.frame as number) < 1) throw bad(`frame must be a stream sequence >= 1, got ${describe(entry.frame)}`)
      if (!Array.isArray(entry.items) || !entry.items.every((item) => isIndex(item, ITEMS_PER_FRAME)))
        throw bad(`items must be item indices below ${ITEMS_PER_FRAME}, got ${describe(entry.items)}`)
      return entry as PartitionEntry
    case 'watermark':
      return entry as PartitionEntry
    case 'policy':
      if (!Number.isSafeInteger(entry.version) || (entry.version as number) < 0) throw bad(`version must be an integer >= 0, got ${describe(entry.version)}`)
      return entry as PartitionEntry
    default:
      throw bad(`k must be 'rollouts', 'watermark' or 'policy', got ${describe(entry.k)}`)
  }
}

/**
 * The state of one partition's owner: feed it the partition's entries in stream order; each
 * entry that completed groups or dropped rollouts returns its output, to be published (in
 * order, in messages of one or more outputs: `groupsEntryOf`).
 *
 * @example
 * const state = new PartitionState(config, 3)
 * let n = 0
 * for (const { seq, entry, frame } of partitionEntries) {
 *   const output = state.feed(seq, entry, frame)
 *   if (output !== undefined) await publish(groupsEntryOf(3, ++n, [output]))
 * }
 */
export class PartitionState {
  private readonly rollouts = new Subject<Rollout>()
  private readonly watermarks = new Subject<number>()
  private readonly policyVersions = new Subject<number>()
  private readonly subscription: Subscription
  // the exact id index: every id this partition ever accepted (as one node's LMDB index)
  private readonly seen = new Set<string>()
  private readonly drops: DropCounts = emptyDropCounts()
  // what the entry being fed caused
  private emitted: GroupMessage[] = []
  private dropped = false
  private pending = 0
  private latest = -Infinity
  private through = 0
  private closed = false
  private failure: unknown

  constructor(
    config: Config,
    readonly partition: number,
  ) {
    const onDrop = (event: DropEvent) => {
      this.dropped = true
      this.pending -= event.count
      if (event.reason === 'stale') this.drops.stale += event.count
      else {
        this.drops.incompleteGroups++
        this.drops.incompleteGroupRollouts += event.count
      }
    }
    // a group message carries the reward channels the sequencer's math reads
    const channels = configChannels(config)
    const stale =
      config.maxStaleness === undefined
        ? this.rollouts
        : this.rollouts.pipe(dropStale({ maxStaleness: config.maxStaleness, policyVersions: this.policyVersions, onDrop }))
    this.subscription = stale
      .pipe(
        completeGroups({
          groupSize: config.groupSize,
          minGroupSize: config.minGroupSize,
          timeoutMs: config.groupTimeoutMs,
          eventTime: (rollout) => rollout.ts!,
          watermarks: this.watermarks,
          onDrop,
        }),
      )
      .subscribe({
        next: (group: Group) => {
          this.pending -= group.rollouts.length
          this.emitted.push({
            promptId: group.promptId,
            partial: group.partial,
            ts: group.ts,
            rollouts: group.rollouts.map((r) => groupRolloutOf(r, channels)),
          })
        },
        // dropStale and completeGroups do not fail on any input (kept so that a failure would surface in feed, not as an unhandled error)
        /* c8 ignore next */
        error: (error) => (this.failure = error),
      })
  }

  /**
   * Feeds the entry at partition stream seq `seq` (seqs must increase); for a rollouts entry
   * `frame` is its frame, decoded (`decodePartitionFrame`). Returns the entry's output when it
   * completed groups or dropped rollouts, else undefined. Throws, leaving the state as it was,
   * on an entry it cannot read.
   */
  feed(seq: number, entry: PartitionEntry, frame?: PartitionFrame): PartitionOutput | undefined {
    const where = `partition ${this.partition}, stream seq ${seq}`
    if (this.closed) throw new Error(`${where}: the partition state is closed`)
    if (!(seq > this.through)) throw new Error(`${where}: fed after stream seq ${this.through} (entries must come in increasing stream order)`)
    partitionEntryOf(entry, where)
    // everything is checked before anything changes: a refused entry leaves the state as it was
    const accepted = entry.k === 'rollouts' ? this.read(entry, frame, where) : []
    this.through = seq
    this.latest = Math.max(this.latest, entry.ts)
    this.emitted = []
    this.dropped = false
    switch (entry.k) {
      case 'rollouts':
        for (const rollout of accepted) {
          if (this.seen.has(rollout.id)) {
            this.drops.duplicate++
            this.dropped = true
            continue
          }
          this.seen.add(rollout.id)
          // event time never goes backwards within a partition (the timeouts replay the same)
          rollout.ts = this.latest
          this.pending++
          this.rollouts.next(rollout)
        }
        break
      case 'watermark':
        this.watermarks.next(entry.ts)
        break
      case 'policy':
        this.policyVersions.next(entry.version)
        break
    }
    /* c8 ignore next */
    if (this.failure !== undefined) throw this.failure // unreachable: see the subscription's error handler
    if (this.emitted.length === 0 && !this.dropped) return undefined
    const groups = this.emitted
    this.emitted = []
    return { seq, groups, drops: { ...this.drops } }
  }

  /** The rollouts of a rollouts entry, validated, with seqs and payload references (ts is stamped by `feed`); throws on anything unreadable. */
  private read(entry: Extract<PartitionEntry, { k: 'rollouts' }>, frame: PartitionFrame | undefined, where: string): Rollout[] {
    const at = `${where}, frame ${entry.frame}`
    if (frame === undefined) throw new Error(`${at}: a rollouts entry was fed without its frame`)
    const rollouts: Rollout[] = []
    for (const index of entry.items) {
      if (index >= frame.items.length) throw new Error(`${at}: item ${index} does not exist (the frame has ${frame.items.length} rollouts)`)
      const result = validateRollout(frame.items[index], DEFAULT_LIMITS, true)
      if (!result.ok) throw new Error(`${at}, item ${index}: not a valid rollout: ${result.errors.map(formatFieldError).join('; ')}`)
      const item = result.rollout
      const payload = item.payload
      let reference: RawPayload | undefined
      if (payload !== undefined) {
        // a reference to the payload's bytes in the logged frame; the frame's items stay untouched
        if (!(payload instanceof RawPayload) || payload.bytes === undefined || payload.bytes.buffer !== frame.bytes.buffer)
          throw new Error(`${at}, item ${index}: its payload is not a view of the frame's bytes (${describe(payload)})`)
        reference = RawPayload.at(entry.frame, payload.bytes.byteOffset - frame.bytes.byteOffset, payload.length)
      }
      // every field in one literal, absent ones undefined, ts stamped by feed: a field added
      // later gives each rollout a property store of its own (these rollouts stay in the owner)
      rollouts.push({
        id: item.id,
        promptId: item.promptId,
        rewards: item.rewards,
        seq: rolloutSeq(entry.frame, index),
        ts: 0,
        policyVersion: item.policyVersion,
        groupSize: item.groupSize,
        payload: reference,
      })
    }
    return rollouts
  }

  /** Rollouts waiting in incomplete groups (an owner appends watermarks only while some do). */
  get pendingRollouts(): number {
    return this.pending
  }

  /** The partition's event time: the largest ts of the entries fed (-Infinity before any). */
  get lastTs(): number {
    return this.latest
  }

  /** The stream seq of the last entry fed (0 before any). */
  get lastSeq(): number {
    return this.through
  }

  /** The cumulative drops so far (a copy). */
  get dropCounts(): DropCounts {
    return { ...this.drops }
  }

  close(): void {
    this.closed = true
    this.subscription.unsubscribe()
  }
}
