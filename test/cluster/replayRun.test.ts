/**
 * `replay --nats` over a run whose partition owners coalesced their messages
 * (src/state/cluster/replayRun.ts): the stored GROUPS messages give where each owner cut, the
 * partitions' entries give the groups, and under the run's config every recomputed message
 * and batch equals the stored one; under another config nothing is compared. What does not
 * replay is reported with where it is: a message of a partition the run does not have, a
 * message that is not what its entries make, a replayed step the BATCHES stream lacks, a
 * stored step that differs, a stored step the replay does not reach.
 */
import { createHash } from 'node:crypto'
import t from 'tap'
import { jetstream, jetstreamManager, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream'
import { Kvm } from '@nats-io/kv'
import { connect, type NatsConnection } from '@nats-io/transport-node'
import { parseConfig } from '../../src/core/config.js'
import { wirePackr } from '../../src/state/codec.js'
import { openRun } from '../../src/state/cluster/clusterRun.js'
import { FrameCache } from '../../src/state/cluster/frameCache.js'
import {
  batchesMessages,
  decodeGroupsMessage,
  decodeMessage,
  emptyDropCounts,
  encodeMessage,
  type BatchEntry,
  type GroupsEntry,
  type PartitionEntry,
} from '../../src/state/cluster/messages.js'
import { PartitionOwner } from '../../src/state/cluster/partitionOwner.js'
import { groupsEntryOf, PartitionState, type PartitionOutput } from '../../src/state/cluster/partitionState.js'
import { readStream, replayRun } from '../../src/state/cluster/replayRun.js'
import { partitionOf, type RunLayout } from '../../src/state/cluster/runLayout.js'
import { Sequencer } from '../../src/state/cluster/sequencer.js'
import { natsMissing, startNats, waitFor } from '../support/natsServers.js'
import { VirtualClock } from '../support/virtualTime.js'

const PARTITIONS = 2
const config = parseConfig({ groupSize: 2, batchGroups: 2, objectives: [{ channel: 'acc' }] })

/** Rollouts of `prompts` prompts of partition `p`, two each, ids starting with `tag`. */
function itemsFor(p: number, prompts: number, tag: string): { id: string; promptId: string; rewards: { acc: number }; payload: number[] }[] {
  const items = []
  for (let k = 0; items.length < prompts * 2; k++) {
    const promptId = `${tag}-q${k}`
    if (partitionOf(promptId, PARTITIONS) !== p) continue
    for (let r = 0; r < 2; r++) items.push({ id: `${promptId}-r${r}`, promptId, rewards: { acc: (k + r) % 2 }, payload: [k, r] })
  }
  return items
}

/** Logs a frame and its partition entries as an ingest node does. */
async function ingest(js: JetStreamClient, layout: RunLayout, items: unknown[], ts: number): Promise<void> {
  const bytes = wirePackr.pack({ type: 'rollouts', rollouts: items })
  const { seq: frame } = await js.publish(layout.subjects.frames, bytes, { msgID: createHash('sha256').update(bytes).digest('hex') })
  const byPartition = new Map<number, number[]>()
  items.forEach((item, index) => {
    const p = partitionOf((item as { promptId: string }).promptId, PARTITIONS)
    byPartition.set(p, [...(byPartition.get(p) ?? []), index])
  })
  for (const [p, indices] of [...byPartition].sort((a, b) => a[0] - b[0])) {
    const entry: PartitionEntry = { k: 'rollouts', frame, items: indices, ts }
    await js.publish(layout.subjects.partition(p), encodeMessage(entry), { msgID: `${frame}.${p}` })
  }
}

/** What partition `p`'s entries now in the stream output. */
async function outputsOf(js: JetStreamClient, jsm: JetStreamManager, layout: RunLayout, p: number): Promise<PartitionOutput[]> {
  const frames = new FrameCache({ jsm, stream: layout.streams.rollouts })
  const state = new PartitionState(config, p)
  const outputs: PartitionOutput[] = []
  for await (const message of readStream(js, jsm, layout.streams.rollouts, layout.subjects.partition(p))) {
    const entry = decodeMessage<PartitionEntry>(message.data)
    const output = state.feed(message.seq, entry, entry.k === 'rollouts' ? await frames.decoded(entry.frame) : undefined)
    if (output !== undefined) outputs.push(output)
  }
  state.close()
  return outputs
}

t.test('replay --nats of a run with coalesced group messages: exact, and what differs is named', { skip: natsMissing }, async (t) => {
  const nats = await startNats({ servers: 1 })
  t.teardown(() => nats.stop())
  const nc: NatsConnection = await connect({ servers: nats.urls })
  t.teardown(() => nc.close())
  const js = jetstream(nc)
  const jsm = await jetstreamManager(nc)
  const { layout } = await openRun({ nc, run: 'rp', config, partitions: PARTITIONS })

  // the owners' publishes held at first, so that partition 0's second message carries three entries' groups
  let open!: () => void
  const opened = new Promise<void>((resolve) => (open = resolve))
  let held = 0
  const gated = Object.create(js, {
    publish: {
      value: async (...args: Parameters<JetStreamClient['publish']>) => {
        if (args[0] === layout.subjects.groups(0) && held++ === 0) await opened
        return js.publish(...args)
      },
    },
  }) as JetStreamClient
  const owners = await Promise.all(
    [0, 1].map((partition) => PartitionOwner.start({ js: gated, jsm, layout, config, partition, isHeld: () => true, scheduler: new VirtualClock() })),
  )
  const steps: BatchEntry[] = []
  const sequencer = await Sequencer.start({ js, jsm, layout, config, isHeld: () => true, scheduler: new VirtualClock(), onBatch: (entry) => steps.push(entry) })
  for (let f = 0; f < 4; f++) await ingest(js, layout, [...itemsFor(0, 1, `f${f}`), ...itemsFor(1, 1, `f${f}`)], 100 + f)
  await waitFor('partition 0’s three later outputs waiting', () => owners[0].stats().unpublished === 4)
  open()
  // 8 groups, 2 a batch
  await waitFor('four steps', () => steps.length === 4)
  for (const owner of owners) await owner.stop()
  await sequencer.stop()
  const stored = (await groupsOf(js, jsm, layout)).filter((m) => m.p === 0)
  t.same(
    stored.map((m) => m.groups.length),
    [1, 3],
    'partition 0: one message of one entry, then one of three',
  )

  // a watermark entry: input that outputs nothing here
  await js.publish(layout.subjects.partition(1), encodeMessage({ k: 'watermark', ts: 200 }))
  const lines: number[] = []
  const exact = await replayRun({ nc, run: 'rp' }, (line) => lines.push(line.step))
  t.same(exact.differences, [])
  t.same(lines, [1, 2, 3, 4])
  t.match(exact, { partitionEntries: 9, batches: 4, record: { partitions: PARTITIONS } })
  const other = await replayRun({ nc, run: 'rp', config: { ...config, batchGroups: 4 } }, () => {})
  t.match(other, { batches: 2, differences: [] })

  // a message of a partition the run does not have, and one of partition 0 its entries do not make
  const foreign = await js.publish(layout.subjects.groups(7), encodeMessage({ p: 7, n: 1, through: 2, groups: [], drops: emptyDropCounts() }))
  // and a sequencer's watermark (no maxWait here: it closes nothing)
  await js.publish(layout.subjects.groupsWatermark, encodeMessage({ wm: 300 }))
  const last = stored.at(-1)!
  const wrong = await js.publish(layout.subjects.groups(0), encodeMessage({ ...last, n: 3 }))
  // then two more entries of partition 0 and their message as its owner would publish it: two steps (one BATCHES message) the stream does not have
  for (let f = 4; f < 6; f++) await ingest(js, layout, itemsFor(0, 2, `f${f}`), 100 + f)
  const outputs = await outputsOf(js, jsm, layout, 0)
  await js.publish(layout.subjects.groups(0), encodeMessage(groupsEntryOf(0, 4, outputs.slice(-2))))
  const tampered = await replayRun({ nc, run: 'rp' }, () => {})
  t.same(tampered.differences, [
    `GROUPS seq ${foreign.seq}: a message of partition 7, which the run does not have (${PARTITIONS} partitions)`,
    `GROUPS seq ${wrong.seq}: partition 0 message 3 (through partition seq ${last.through}) differs from what its index produces`,
    'steps 5–6: replayed, not in the BATCHES stream (it ends before)',
  ])
  t.equal(tampered.batches, 6)
  t.same((await replayRun({ nc, run: 'rp', config: { ...config, batchGroups: 4 } }, () => {})).differences, [], 'a counterfactual compares nothing')

  // BATCHES: steps 5 and 6 that are not what the replay makes, then one more message
  const first = steps[0]
  const message = (...entries: BatchEntry[]) => batchesMessages(entries)[0].bytes
  const five = await js.publish(layout.subjects.batches, message({ ...first, step: 5 }, { ...first, step: 6 }))
  const extra = await js.publish(layout.subjects.batches, message({ ...first, step: 7 }))
  await js.publish(layout.subjects.batches, message({ ...first, step: 8 }))
  const batches = await replayRun({ nc, run: 'rp' }, () => {})
  t.same(batches.differences.slice(2), [
    `steps 5–6: the replayed batches differ from the stored message (BATCHES seq ${five.seq})`,
    `BATCHES seq ${extra.seq}: stored, but the replay of GROUPS does not reach it`,
  ])
  const appended = [five.seq, extra.seq, extra.seq + 1]
  const replaceAppended = async (...entries: BatchEntry[]) => {
    for (const seq of appended.splice(0)) await jsm.streams.deleteMessage(layout.streams.batches, seq)
    const stored = await js.publish(layout.subjects.batches, message(...entries))
    appended.push(stored.seq)
    return stored.seq
  }
  // a stored message that holds more steps than the replay makes
  const longer = await replaceAppended({ ...first, step: 5 }, { ...first, step: 6 }, { ...first, step: 7 })
  t.same((await replayRun({ nc, run: 'rp' }, () => {})).differences.slice(2), [
    'steps 5–6: replayed, but the stored message that holds them has more',
    `BATCHES seq ${longer}: stored, but the replay of GROUPS does not reach it`,
  ])
  // one that holds step 5 alone, not as replayed, and nothing after it
  const alone = await replaceAppended({ ...first, step: 5 })
  t.same((await replayRun({ nc, run: 'rp' }, () => {})).differences.slice(2), [
    `step 5: the replayed batches differ from the stored message (BATCHES seq ${alone})`,
    'step 6: replayed, not in the BATCHES stream (it ends before)',
  ])
  // and one that starts at another step than the replay's next
  const skipping = await replaceAppended({ ...first, step: 6 })
  t.same((await replayRun({ nc, run: 'rp' }, () => {})).differences.slice(2), [`BATCHES seq ${skipping} holds steps 6–6; the replay makes step 5 next`])

  // a subject with no message reads as nothing; a run whose record was deleted is no run
  const none: unknown[] = []
  for await (const message of readStream(js, jsm, layout.streams.rollouts, layout.subjects.partition(5))) none.push(message)
  t.same(none, [])
  await (await new Kvm(js).open(layout.buckets.run)).delete('run')
  await t.rejects(
    replayRun({ nc, run: 'rp' }, () => {}),
    { message: `no cluster run "rp" on these NATS servers (no record in bucket ${layout.buckets.run})` },
  )
})

async function groupsOf(js: JetStreamClient, jsm: JetStreamManager, layout: RunLayout): Promise<GroupsEntry[]> {
  const out: GroupsEntry[] = []
  for await (const message of readStream(js, jsm, layout.streams.groups)) out.push(decodeGroupsMessage(message.data) as GroupsEntry)
  return out
}
