/**
 * The trainer's record of a cluster step, written by the delivering node from the GROUPS
 * messages its entry names: byte for byte the record one node writes for the same batch
 * (`encodeBatchForTrainer`), with errors naming the step when the entry and the messages do
 * not fit together; and the GROUPS cache against a real nats-server.
 */
import t from 'tap'
import { jetstream, jetstreamManager, type JetStreamManager } from '@nats-io/jetstream'
import { connect } from '@nats-io/transport-node'
import type { Group, ScoredBatch } from '../../src/core/types.js'
import { batchSummary } from '../../src/state/batchRecord.js'
import { wirePackr } from '../../src/state/codec.js'
import { decodeGroupsForScoring, emptyDropCounts, encodeMessage, scoringEntryOf, type BatchEntry, type GroupsEntry } from '../../src/state/cluster/messages.js'
import { runLayout } from '../../src/state/cluster/runLayout.js'
import { createRunStreams } from '../../src/state/cluster/runStreams.js'
import { advantagesOf, batchGroupsOf, groupsOfEntry, groupsSeqsOf, GroupsCache, trainerRecordOf } from '../../src/state/cluster/trainerRecord.js'
import { encodeBatchForTrainer, referencedEntries } from '../../src/state/outboxEncoder.js'
import { natsMissing, startNats } from '../support/natsServers.js'

/** A GROUPS entry of partition `p` with `groups` groups of `size` rollouts (ids `<tag>.<group>.<rollout>`), every other one with a payload reference (with `payloads`). */
function groupsEntry(tag: string, groups: number, size: number, p = 0, payloads = true): GroupsEntry {
  return {
    p,
    n: 1,
    through: 1,
    drops: emptyDropCounts(),
    groups: Array.from({ length: groups }, (_, g) => ({
      promptId: `${tag}.p${g}`,
      partial: false,
      ts: 10 + g,
      rollouts: Array.from({ length: size }, (_, i) => ({
        id: `${tag}.${g}.${i}`,
        promptId: `${tag}.p${g}`,
        rewards: { acc: (g + i) % 2, len: i === 0 ? null : i / size },
        ts: 10 + g,
        seq: 100 * g + i,
        ...(payloads && i % 2 === 0 ? { ref: [7, 16 * i, 16] as [number, number, number] } : {}),
      })),
    })),
  }
}

/** The groups of a GROUPS entry as a delivering node reads them (its bytes decoded). */
function decoded(entry: GroupsEntry): Group[] {
  const message = decodeGroupsForScoring(encodeMessage(entry))
  if ('wm' in message) throw new Error('a watermark')
  return message.groups
}

/** A scored batch of `groups` with made-up advantages and measures, and its BATCHES entry naming `groupsAt`. */
function stepOf(groups: Group[], groupsAt: BatchEntry['groupsAt']): { batch: ScoredBatch; entry: BatchEntry } {
  const n = groups.reduce((sum, g) => sum + g.rollouts.length, 0)
  const advantages = Float64Array.from({ length: n }, (_, i) => (i % 3) - 1 + i / 7)
  const batch: ScoredBatch = {
    step: 4,
    ts: 20,
    reason: 'full',
    groups,
    lambda: { len: { before: 0.25, after: 0.3125 } },
    constraints: { len: { mean: 0.5, violation: Number.NaN, sampleViolationRate: 0.25, count: n } },
    dualState: { step: 4, constraints: {} },
    advantages,
    fracZeroStd: { acc: 0 },
    objectiveMeans: { acc: 0.5 },
    advantageMean: 0,
    advantageStd: 1,
    rolloutCount: n,
  } as unknown as ScoredBatch
  const bytes = new Uint8Array(8 * n)
  const view = new DataView(bytes.buffer)
  advantages.forEach((a, i) => view.setFloat64(8 * i, a, true))
  const summary = wirePackr.unpack(wirePackr.pack(batchSummary(batch))) as BatchEntry['summary']
  const entry: BatchEntry = {
    step: 4,
    resumeFrom: 3,
    watermark: 20,
    state: batch.dualState,
    pipeline: { batches: 4, rolloutsInBatches: 4 * n, stale: 0, incompleteGroups: 0, incompleteGroupRollouts: 0 },
    partitionDrops: {},
    summary,
    newestTs: 13,
    groupsAt,
    advantages: bytes,
  }
  return { batch, entry }
}

t.test('the record: the one a single node writes for the same batch, from the groups the entry names', async (t) => {
  // GROUPS seq 5: 4 groups of 3; seq 6: 2 groups of 3. The batch: groups 2–3 of seq 5, then 0 of seq 6
  const messages = new Map([
    [5, decoded(groupsEntry('a', 4, 3))],
    [6, decoded(groupsEntry('b', 2, 3, 1))],
  ])
  const groups = [...messages.get(5)!.slice(2, 4), messages.get(6)![0]]
  const { batch, entry } = stepOf(groups, [
    [5, 2, 2],
    [6, 0, 1],
  ])
  t.same(groupsSeqsOf(entry), [5, 6])
  t.same(
    batchGroupsOf(entry, (seq) => messages.get(seq)!).map((g) => g.promptId),
    ['a.p2', 'a.p3', 'b.p0'],
  )
  t.same([...advantagesOf(entry)], [...batch.advantages])
  const record = trainerRecordOf(entry, (seq) => messages.get(seq)!)
  t.ok(record.equals(encodeBatchForTrainer(batch)), 'byte for byte')
  t.same(referencedEntries(record), [7], 'its payloads by reference to the logged frame')
})

t.test('the record from groups whose rollouts were never built: the same bytes from their ids, prompts and payloads alone', async (t) => {
  for (const payloads of [true, false]) {
    const entry5 = groupsEntry('a', 4, 3, 0, payloads)
    // the reference batch, over groups whose whole rollouts are built (stepOf reads them)
    const { batch, entry } = stepOf(decoded(entry5).slice(1, 4), [[5, 1, 3]])
    const fresh = decoded(entry5)
    // one group's rollouts built already (the sequencer's node may have): those are used as they are
    t.equal(fresh[2].rollouts.length, 3)
    const record = trainerRecordOf(entry, () => fresh)
    t.ok(record.equals(encodeBatchForTrainer(batch)), `byte for byte, ${payloads ? 'with' : 'without'} payloads`)
    t.same(referencedEntries(record), payloads ? [7] : [])
  }
  // groups that are plain objects (not decoded from GROUPS bytes): their rollouts as they are
  const plain = scoringEntryOf(groupsEntry('c', 2, 3)).groups
  const { batch, entry } = stepOf(plain, [[9, 0, 2]])
  t.ok(trainerRecordOf(entry, () => plain).equals(encodeBatchForTrainer(batch)), 'byte for byte from plain groups')
})

t.test('an entry that does not fit its messages is an error naming the step', async (t) => {
  const messages = new Map([[5, decoded(groupsEntry('a', 2, 3))]])
  const at = (seq: number) => messages.get(seq)!
  const { entry } = stepOf(messages.get(5)!, [[5, 0, 2]])
  t.throws(() => trainerRecordOf({ ...entry, groupsAt: [[5, 1, 2]] }, at), /^step 4: groups 1–2 of GROUPS seq 5, which has 2$/)
  t.throws(() => trainerRecordOf({ ...entry, groupsAt: [[5, 0, 1]] }, at), /^step 4: its groups hold 3 rollouts, it has 6 advantages$/)
  t.throws(() => advantagesOf({ ...entry, advantages: new Uint8Array(12) }), /^step 4: its advantages are not little-endian float64s \(12 bytes\)$/)
  t.throws(() => advantagesOf({ ...entry, advantages: [0.5] as never }), /not little-endian float64s \(object\)/)
})

t.test('the GROUPS cache against a real nats-server', { skip: natsMissing }, async (t) => {
  const nats = await startNats({ servers: 1 })
  t.teardown(() => nats.stop())
  const nc = await connect({ servers: nats.urls })
  t.teardown(() => nc.close())
  const layout = runLayout('groupscache')
  const jsm: JetStreamManager = await jetstreamManager(nc)
  await createRunStreams(jsm, layout, 1)
  const js = jetstream(nc)
  // seqs 1–3: groups entries of 2×3, 2×3 and 1×3 rollouts; 4: a watermark
  const entries = [groupsEntry('a', 2, 3), groupsEntry('b', 2, 3, 1), groupsEntry('c', 1, 3, 2)]
  for (const entry of entries) await js.publish(layout.subjects.groups(entry.p), encodeMessage(entry))
  await js.publish(layout.subjects.groupsWatermark, encodeMessage({ wm: 99 }))
  const stream = layout.streams.groups

  t.test('fetched by sequence, decoded as the sequencer decodes them, kept by rollouts', async (t) => {
    const cache = new GroupsCache({ jsm, stream, maxRollouts: 12 })
    t.same(await cache.get(1), decoded(entries[0]))
    t.same(await cache.get(2), decoded(entries[1]))
    t.equal(cache.fetched, 2)
    t.same(await cache.get(1), decoded(entries[0]))
    t.equal(cache.fetched, 2, 'a kept message is not fetched again')
    // 12 rollouts kept; seq 3 (3 more) makes seq 2, the least recently used, go
    await cache.get(3)
    t.ok(cache.peek(1))
    t.equal(cache.peek(2), undefined)
    t.ok(cache.peek(3))
    // concurrent reads share one fetch
    const reads = await Promise.all([cache.get(2), cache.get(2)])
    t.equal(reads[0], reads[1])
    t.equal(cache.fetched, 4)
  })

  t.test('a message larger than the cache is returned, not kept; put keeps what a node has at hand', async (t) => {
    const cache = new GroupsCache({ jsm, stream, maxRollouts: 5 })
    t.same(await cache.get(1), decoded(entries[0]))
    t.equal(cache.peek(1), undefined)
    const groups = decoded(entries[2])
    cache.put(3, groups)
    cache.put(3, decoded(entries[2]))
    t.equal(await cache.get(3), groups, 'the groups put, not fetched')
    t.equal(cache.fetched, 1)
    // groups without columns (as a replay builds them) are weighed by their rollouts
    const plain = new GroupsCache({ jsm, stream, maxRollouts: 3 })
    plain.put(8, [{ promptId: 'q', partial: false, ts: 1, rollouts: [{ id: 'a', promptId: 'q', rewards: {} }] }])
    plain.put(9, [{ promptId: 'q', partial: false, ts: 1, rollouts: Array.from({ length: 4 }, (_, i) => ({ id: `b${i}`, promptId: 'q', rewards: {} })) }])
    t.ok(plain.peek(8))
    t.equal(plain.peek(9), undefined, '4 rollouts > 3: not kept')
  })

  t.test('groupsOfEntry holds what it fetched for the entry', async (t) => {
    const cache = new GroupsCache({ jsm, stream, maxRollouts: 3 })
    const { entry } = stepOf(
      [...decoded(entries[0]), ...decoded(entries[2])],
      [
        [1, 0, 2],
        [3, 0, 1],
      ],
    )
    const at = await groupsOfEntry(entry, cache)
    t.equal(cache.peek(1), undefined, 'the cache let seq 1 go')
    t.equal(batchGroupsOf(entry, at).length, 3, 'the entry still has its groups')
  })

  t.test('a watermark, or no message, where a step names groups is an error naming it', async (t) => {
    const cache = new GroupsCache({ jsm, stream })
    await t.rejects(cache.get(4), /^GROUPS message 4: a watermark, where a step's groups were expected$/)
    await t.rejects(cache.get(40), /GROUPS message 40: stream DS_groupscache_GROUPS has no message 40/)
  })
})
