/**
 * `dualstream replay --nats URL --run NAME` (DESIGN §8): a cluster run's streams through a
 * fresh pipeline, as `replay --log` does for a data folder. Each partition's index is read
 * again through a fresh owner's state (`PartitionState`: what each entry outputs) and the
 * GROUPS stream through a fresh sequencer's (`SequencerState`), in the GROUPS stream's own
 * order. Two things the partitions' input does not decide are taken from the stored GROUPS
 * stream: the interleaving of the partitions, and where each owner cut its messages (it
 * coalesces what waits while a publish is in flight). So a stored message of partition p
 * through entry T is recomputed as the outputs of p's entries in (T of p's previous message,
 * T], with p's drops after T, numbered 1, 2, … per partition (`groupsEntryOf`), and that is
 * what the sequencer is fed. Under the run's own config every recomputed group message must
 * equal the stored one, and every stored BATCHES message what its steps, replayed, make (the
 * sequencer cuts its messages by timing too), byte for byte: a difference is reported with
 * where it is.
 * Under another config it is a counterfactual (the same cuts, other groups). Only committed
 * steps are replayed (no flush of a last partial batch, unlike `--log`).
 */
import { DeliverPolicy, jetstream, jetstreamManager, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import { Kvm } from '@nats-io/kv'
import type { Config } from '../../core/config.js'
import type { Group } from '../../core/types.js'
import type { BatchRecord } from '../batchRecord.js'
import { checkRunFormat, type RunRecord } from './clusterRun.js'
import { FrameCache } from './frameCache.js'
import {
  batchesMessages,
  decodeBatchesMessage,
  decodeGroupsMessage,
  decodeMessage,
  emptyDropCounts,
  encodeMessage,
  scoringEntryOf,
  type BatchEntry,
  type DropCounts,
  type GroupsEntry,
  type GroupsWatermark,
} from './messages.js'
import { groupsEntryOf, partitionEntryOf, PartitionState, type PartitionOutput } from './partitionState.js'
import { runLayout, type RunLayout, CONSUME_EXPIRES_MS } from './runLayout.js'
import { SequencerState } from './sequencerState.js'
import { advantagesOf, batchGroupsOf } from './trainerRecord.js'

/** Every message of `stream` (of `subject` only, when given) stored when the call starts, in order. */
export async function* readStream(
  js: JetStreamClient,
  jsm: JetStreamManager,
  stream: string,
  subject?: string,
): AsyncGenerator<{ seq: number; subject: string; data: Uint8Array }> {
  const info = await jsm.streams.info(stream, subject === undefined ? undefined : { subjects_filter: subject })
  const last = info.state.last_seq
  const count = subject === undefined ? info.state.messages : (info.state.subjects?.[subject] ?? 0)
  if (count === 0) return
  const consumer = await js.consumers.get(stream, { deliver_policy: DeliverPolicy.All, ...(subject === undefined ? {} : { filter_subjects: subject }) })
  const messages = await consumer.consume({ expires: CONSUME_EXPIRES_MS })
  let seen = 0
  try {
    for await (const message of messages) {
      const seq = message.info.streamSequence
      /* c8 ignore next -- a message stored after the stream info was read (a live run; the fault suite replays a stopped one) */
      if (seq > last) break
      yield { seq, subject: message.subject, data: message.data }
      if (++seen >= count || seq >= last) break
    }
  } finally {
    await messages.close()
  }
}

export interface ReplayRunOptions {
  nc: NatsConnection
  run: string
  /** The config to replay under (default the run's own). */
  config?: Config
}

export interface ReplayRunResult {
  /** The run's own record (its config, partitions, replicas). */
  record: RunRecord
  partitionEntries: number
  groupMessages: number
  batches: number
  /** Under the run's config: where a recomputed message differs from the stored one (empty when the run replays exactly). */
  differences: string[]
}

/** The batch line `replay` prints for a committed step (the fields of `replay --log`'s, from the stored entry): `groups` are its groups, in batch order (`batchGroupsOf`). */
export function batchLineOf(entry: BatchEntry, groups: readonly Group[]): BatchRecord {
  const { advantageMean: _mean, advantageStd: _std, ...summary } = entry.summary
  const values = advantagesOf(entry)
  const advantages: Record<string, number> = {}
  let i = 0
  for (const group of groups) for (const rollout of group.rollouts) advantages[rollout.id] = values[i++]
  return { ...summary, advantages }
}

/** "step 4" or "steps 4–6". */
const stepsNamed = (steps: readonly BatchEntry[]): string =>
  steps.length === 1 ? `step ${steps[0].step}` : `steps ${steps[0].step}–${steps[steps.length - 1].step}`

const same = (a: unknown, b: unknown): boolean => Buffer.from(encodeMessage(a as never)).equals(Buffer.from(encodeMessage(b as never)))

/**
 * Replays run `run`; calls `onBatch` with each step's line, in step order.
 *
 * @example
 * const result = await replayRun({ nc, run: 'exp7' }, (line) => console.log(JSON.stringify(line)))
 * if (result.differences.length > 0) console.error(result.differences.join('\n'))
 */
export async function replayRun(options: ReplayRunOptions, onBatch: (line: BatchRecord) => void): Promise<ReplayRunResult> {
  const { nc, run } = options
  const layout: RunLayout = runLayout(run)
  const js = jetstream(nc)
  const jsm = await jetstreamManager(nc)
  const bucket = await new Kvm(js).open(layout.buckets.run)
  const stored = await bucket.get('run').catch(() => null)
  if (stored === null || stored.length === 0)
    throw new Error(`no cluster run ${JSON.stringify(run)} on these NATS servers (no record in bucket ${layout.buckets.run})`)
  const record = stored.json<RunRecord>()
  checkRunFormat(run, record)
  const config = options.config ?? record.config
  const exact = JSON.stringify(config) === JSON.stringify(record.config)
  const differences: string[] = []
  const frames = new FrameCache({ jsm, stream: layout.streams.rollouts })
  // the replayed groups of each GROUPS message until all of them are in steps: the lines name their rollouts
  // (under another config they are not the stored messages' groups)
  const replayed = new Map<number, { groups: Group[]; left: number }>()
  // each partition's outputs, recomputed from its index, in entry order
  const recomputed = new Map<number, PartitionOutput[]>()
  let partitionEntries = 0
  for (let p = 0; p < record.partitions; p++) {
    const state = new PartitionState(config, p)
    const outputs: PartitionOutput[] = []
    try {
      for await (const message of readStream(js, jsm, layout.streams.rollouts, layout.subjects.partition(p))) {
        partitionEntries++
        const entry = partitionEntryOf(decodeMessage(message.data), `partition ${p}, stream seq ${message.seq}`)
        const output = state.feed(message.seq, entry, entry.k === 'rollouts' ? await frames.decoded(entry.frame) : undefined)
        if (output !== undefined) outputs.push(output)
      }
    } finally {
      state.close()
    }
    recomputed.set(p, outputs)
  }
  // where each partition's stored messages have got to: the next output, the message count, the drops so far
  const cursors = new Map<number, { next: number; n: number; drops: DropCounts }>()
  // the sequencer over the GROUPS stream's order, with the recomputed messages in the stored ones' places
  const sequencer = new SequencerState(config)
  const storedBatches = readStream(js, jsm, layout.streams.batches)
  // the next stored BATCHES message not yet matched, with the steps it holds
  let storedNext: { seq: number; data: Uint8Array; first: number; last: number } | undefined
  const nextStored = async (): Promise<typeof storedNext> => {
    const next = await storedBatches.next()
    if (next.done === true) return undefined
    const where = `${layout.streams.batches} seq ${next.value.seq}`
    const steps = decodeBatchesMessage(next.value.data, where)
    return { seq: next.value.seq, data: next.value.data, first: steps[0].step, last: steps[steps.length - 1].step }
  }
  // steps replayed and not yet matched with a stored message
  const unmatched: BatchEntry[] = []
  let groupMessages = 0
  let batches = 0
  try {
    for await (const message of readStream(js, jsm, layout.streams.groups)) {
      groupMessages++
      const storedMessage = decodeGroupsMessage(message.data)
      let fed: GroupsEntry | GroupsWatermark = storedMessage
      if ('p' in storedMessage) {
        const { p, n, through } = storedMessage
        const outputs = recomputed.get(p)
        if (outputs === undefined) {
          if (exact) differences.push(`GROUPS seq ${message.seq}: a message of partition ${p}, which the run does not have (${record.partitions} partitions)`)
          continue
        }
        let cursor = cursors.get(p)
        if (cursor === undefined) cursors.set(p, (cursor = { next: 0, n: 0, drops: emptyDropCounts() }))
        const from = cursor.next
        while (cursor.next < outputs.length && outputs[cursor.next].seq <= through) cursor.next++
        if (cursor.next > from) cursor.drops = outputs[cursor.next - 1].drops
        const mine = groupsEntryOf(p, ++cursor.n, outputs.slice(from, cursor.next), through, cursor.drops)
        if (exact && !same(mine, storedMessage))
          differences.push(`GROUPS seq ${message.seq}: partition ${p} message ${n} (through partition seq ${through}) differs from what its index produces`)
        fed = mine
      }
      let entries: BatchEntry[]
      if ('wm' in fed) entries = sequencer.feed(message.seq, fed)
      else {
        const scoring = scoringEntryOf(fed)
        replayed.set(message.seq, { groups: scoring.groups, left: scoring.groups.length })
        entries = sequencer.feedScoring(message.seq, scoring)
      }
      for (const entry of entries) {
        batches++
        onBatch(
          batchLineOf(
            entry,
            batchGroupsOf(entry, (seq) => replayed.get(seq)!.groups),
          ),
        )
        for (const [seq, , count] of entry.groupsAt) replayed.get(seq)!.left -= count
      }
      // the oldest messages whose groups are all in steps now: batches take groups in order
      for (const [seq, kept] of replayed) {
        if (kept.left > 0) break
        replayed.delete(seq)
      }
      if (!exact) continue
      // BATCHES holds the steps as the sequencer published them, cut where it cut them (it sends
      // together the steps made while its previous messages were in flight): each stored message
      // must be what its steps, replayed, make
      unmatched.push(...entries)
      while (unmatched.length > 0) {
        storedNext ??= await nextStored()
        if (storedNext === undefined) {
          differences.push(`${stepsNamed(unmatched)}: replayed, not in the BATCHES stream (it ends before)`)
          unmatched.length = 0
          break
        }
        const { seq, data, first, last } = storedNext
        if (first !== unmatched[0].step) {
          differences.push(`BATCHES seq ${seq} holds steps ${first}–${last}; the replay makes step ${unmatched[0].step} next`)
          unmatched.length = 0
          storedNext = undefined
          break
        }
        // the message's steps are not all replayed yet: the next GROUPS messages complete them
        if (unmatched[unmatched.length - 1].step < last) break
        const steps = unmatched.splice(0, last - first + 1)
        const made = batchesMessages(steps)
        if (made.length !== 1 || !Buffer.from(data).equals(Buffer.from(made[0].bytes)))
          differences.push(`${stepsNamed(steps)}: the replayed batches differ from the stored message (BATCHES seq ${seq})`)
        storedNext = undefined
      }
    }
    if (exact) {
      if (unmatched.length > 0) differences.push(`${stepsNamed(unmatched)}: replayed, but the stored message that holds them has more`)
      const extra = storedNext ?? (await nextStored())
      if (extra !== undefined) differences.push(`BATCHES seq ${extra.seq}: stored, but the replay of GROUPS does not reach it`)
    }
  } finally {
    sequencer.close()
    await storedBatches.return(undefined)
  }
  return { record, partitionEntries, groupMessages, batches, differences }
}
