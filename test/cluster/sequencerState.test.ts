import t from 'tap'
import fc from 'fast-check'
import { Subject } from 'rxjs'
import { scoreBatches } from '../../operators/scoreBatches.js'
import { windowBatches } from '../../operators/windowBatches.js'
import { parseConfig, type Config, type ConfigInput } from '../../src/core/config.js'
import type { Group, ScoredBatch } from '../../src/core/types.js'
import { batchSummary } from '../../src/state/batchRecord.js'
import { assembleBatch } from '../../src/state/outboxEncoder.js'
import {
  decodeGroupsForScoring,
  decodeMessage,
  emptyDropCounts,
  encodeMessage,
  rolloutsOf,
  type BatchEntry,
  type DropCounts,
  type GroupMessage,
  type GroupRollout,
  type GroupsEntry,
  type GroupsWatermark,
} from '../../src/state/cluster/messages.js'
import { SequencerState } from '../../src/state/cluster/sequencerState.js'
import { trainerRecordOf } from '../../src/state/cluster/trainerRecord.js'

type GroupsMessage = GroupsEntry | GroupsWatermark

/** One accuracy objective and a '>=' consistency constraint pooled over two batches. */
function configOf(overrides: Partial<ConfigInput> = {}): Config {
  return parseConfig({
    groupSize: 4,
    batchGroups: 2,
    objectives: [{ channel: 'acc' }],
    constraints: [{ channel: 'consistency', sense: '>=', threshold: 0.8, sampleThreshold: 0.5, window: 2, dual: { rule: 'sgd', lr: 0.1 } }],
    ...overrides,
  })
}

/** A logged frame as the tests fake it: byte i is the MessagePack of the integer i, so a one-byte payload at offset i decodes to i. */
const FRAME = Uint8Array.from({ length: 128 }, (_, i) => i)

/**
 * The trainer's view of a step: its record written as a delivering node writes it, from the
 * GROUPS messages it names as the stream holds them (encoded, decoded), its payloads spliced
 * in from the fake frames.
 */
function trainerView(
  entry: BatchEntry,
  messages: readonly GroupsMessage[],
): { step: number; rollouts: { id: string; promptId: string; advantage: number; payload?: unknown }[] } {
  const record = trainerRecordOf(entry, (seq) => {
    const message = decodeGroupsForScoring(encodeMessage(messages[seq - 1]))
    if ('wm' in message) throw new Error(`step ${entry.step} names watermark ${seq}`)
    return message.groups
  })
  return decodeMessage(assembleBatch(record, () => FRAME))
}

let nextId = 0
/** A group of `size` rollouts with the given rewards; every third rollout has a logged payload. */
function groupOf(promptId: string, ts: number, rewards: [number | null, number][], partial = false): GroupMessage {
  const rollouts: GroupRollout[] = rewards.map(([acc, consistency], i) => {
    const n = nextId++
    const r: GroupRollout = { id: `r${n}`, promptId, rewards: { acc, consistency }, ts: ts - i, seq: n }
    if (n % 3 === 0) r.ref = [1 + (n % 5), n % 128, 1]
    if (n % 4 === 0) r.policyVersion = n % 7
    return r
  })
  return { promptId, partial, ts, rollouts }
}

/** The reference: the same groups and watermarks fed straight to windowBatches → scoreBatches. */
function referenceBatches(config: Config, messages: readonly GroupsMessage[]): ScoredBatch[] {
  const groups = new Subject<Group>()
  const watermarks = new Subject<number>()
  const out: ScoredBatch[] = []
  const subscription = groups
    .pipe(windowBatches({ size: config.batchGroups, maxWaitMs: config.batchMaxWaitMs, watermarks }), scoreBatches(config))
    .subscribe((batch) => out.push(batch))
  for (const message of messages) {
    if ('wm' in message) watermarks.next(message.wm)
    else for (const g of message.groups) groups.next({ promptId: g.promptId, rollouts: rolloutsOf(g), partial: g.partial, ts: g.ts })
  }
  subscription.unsubscribe()
  return out
}

/** Feeds messages (the GROUPS stream, seq i + 1 at index i) from `from`; returns every BatchEntry, as the stream would hold it. */
function run(state: SequencerState, messages: readonly GroupsMessage[], from = state.resumeFrom): BatchEntry[] {
  const out: BatchEntry[] = []
  for (let seq = from; seq <= messages.length; seq++) out.push(...state.feed(seq, messages[seq - 1]))
  return out.map((entry) => decodeMessage<BatchEntry>(encodeMessage(entry)))
}

/** What the trainer and the dashboard see of a batch entry, to compare with the reference batch. */
function essentials(entry: BatchEntry, messages: readonly GroupsMessage[]) {
  const view = trainerView(entry, messages)
  return {
    step: entry.step,
    state: entry.state,
    summary: entry.summary,
    watermark: entry.watermark,
    rollouts: view.rollouts.map((r) => [r.id, r.promptId, r.advantage]),
  }
}

function referenceEssentials(batch: ScoredBatch) {
  let i = 0
  return decodeMessage<ReturnType<typeof essentials>>(
    encodeMessage({
      step: batch.step,
      state: batch.dualState,
      summary: batchSummary(batch),
      watermark: batch.ts,
      rollouts: batch.groups.flatMap((g) => g.rollouts.map((r) => [r.id, r.promptId, batch.advantages[i++]])),
    } as never),
  )
}

/**
 * A random GROUPS stream: groups formed in `partitions` partitions, each partition's groups
 * published in order in entries of random sizes (some with none: drops only), the partitions'
 * entries interleaved at random, and the sequencer's watermarks in between.
 */
const streamArb = fc
  .record({
    partitions: fc.integer({ min: 1, max: 3 }),
    groups: fc.array(
      fc.record({
        partition: fc.nat(2),
        gap: fc.integer({ min: 0, max: 6 }),
        partial: fc.boolean(),
        rewards: fc.array(fc.tuple(fc.constantFrom(0, 1, null), fc.constantFrom(0, 1)), { minLength: 1, maxLength: 4 }),
      }),
      { maxLength: 24 },
    ),
    // per group: how many entries of its partition end right after it (0: the next group joins it)
    cuts: fc.array(fc.integer({ min: 0, max: 2 }), { minLength: 24, maxLength: 24 }),
    order: fc.array(fc.nat(2), { minLength: 80, maxLength: 80 }),
    watermarks: fc.array(fc.tuple(fc.nat(80), fc.integer({ min: -5, max: 25 })), { maxLength: 6 }),
    drops: fc.array(fc.tuple(fc.nat(3), fc.nat(3), fc.nat(2), fc.nat(5)), { minLength: 80, maxLength: 80 }),
  })
  .map(({ partitions, groups, cuts, order, watermarks, drops }) => {
    // each partition's entries
    const perPartition: GroupMessage[][][] = Array.from({ length: partitions }, () => [[]])
    let ts = 0
    groups.forEach((g, i) => {
      ts += g.gap
      const p = g.partition % partitions
      const entries = perPartition[p]
      entries[entries.length - 1].push(groupOf(`p${p}-${i}`, ts, g.rewards, g.partial))
      for (let k = 0; k < cuts[i]; k++) entries.push([])
    })
    // interleaved as the partition owners' publishes land, each entry with its partition's cumulative drops
    const messages: GroupsMessage[] = []
    const cursor = perPartition.map(() => 0)
    const totals: DropCounts[] = perPartition.map(() => emptyDropCounts())
    let pick = 0
    while (cursor.some((c, p) => c < perPartition[p].length)) {
      let p = order[pick % order.length] % partitions
      while (cursor[p] >= perPartition[p].length) p = (p + 1) % partitions
      const [stale, duplicate, incompleteGroups, incompleteGroupRollouts] = drops[pick % drops.length]
      const total = totals[p]
      totals[p] = {
        stale: total.stale + stale,
        duplicate: total.duplicate + duplicate,
        incompleteGroups: total.incompleteGroups + incompleteGroups,
        incompleteGroupRollouts: total.incompleteGroupRollouts + incompleteGroupRollouts,
      }
      messages.push({ p, n: cursor[p] + 1, through: 10 * cursor[p] + 3, groups: perPartition[p][cursor[p]], drops: totals[p] })
      cursor[p]++
      pick++
    }
    // the sequencer's watermarks, at random places, around the group times
    for (const [at, offset] of [...watermarks].sort((a, b) => b[0] - a[0])) {
      const index = at % (messages.length + 1)
      messages.splice(index, 0, { wm: ts + offset })
    }
    return messages
  })

const configArb = fc
  .record({ batchGroups: fc.integer({ min: 1, max: 4 }), batchMaxWaitMs: fc.option(fc.integer({ min: 1, max: 12 }), { nil: undefined }) })
  .map(({ batchGroups, batchMaxWaitMs }) => configOf({ batchGroups, batchMaxWaitMs }))

t.test('equivalence: the batch entries are what windowBatches → scoreBatches make of the same groups in the same order', (t) => {
  fc.assert(
    fc.property(configArb, streamArb, (config, messages) => {
      const entries = run(new SequencerState(config), messages)
      const reference = referenceBatches(config, messages)
      t.same(
        entries.map((e) => essentials(e, messages)),
        reference.map(referenceEssentials),
      )
      // the payloads travel as references, spliced in from their frames
      for (const entry of entries) {
        const fed = new Map(messages.flatMap((m) => ('wm' in m ? [] : m.groups.flatMap((g) => g.rollouts))).map((r) => [r.id, r]))
        for (const r of trainerView(entry, messages).rollouts) t.equal(r.payload, fed.get(r.id)!.ref?.[1])
      }
      // the newest rollout time of each batch
      t.same(
        entries.map((e) => e.newestTs),
        reference.map((b) => Math.max(0, ...b.groups.flatMap((g) => g.rollouts.map((r) => r.ts!)))),
      )
    }),
    { numRuns: 150 },
  )
  t.end()
})

t.test('the sequencer’s own path (GROUPS bytes decoded into columnar groups) makes the same entries, byte for byte', (t) => {
  fc.assert(
    fc.property(configArb, streamArb, (config, messages) => {
      const fed = run(new SequencerState(config), messages).map((e) => Buffer.from(encodeMessage(e)).toString('base64'))
      const state = new SequencerState(config)
      const decoded: string[] = []
      messages.forEach((message, i) => {
        for (const entry of state.feedScoring(i + 1, decodeGroupsForScoring(encodeMessage(message))))
          decoded.push(Buffer.from(encodeMessage(entry)).toString('base64'))
      })
      t.same(decoded, fed)
    }),
    { numRuns: 150 },
  )
  t.end()
})

t.test('resume: a fresh sequencer from any batch entry makes exactly the entries that follow it, byte for byte', (t) => {
  let resumedInsideAnEntry = 0
  fc.assert(
    fc.property(configArb, streamArb, (config, messages) => {
      const entries = run(new SequencerState(config), messages)
      const bytes = entries.map((e) => Buffer.from(encodeMessage(e)).toString('base64'))
      entries.forEach((last, k) => {
        const resumed = new SequencerState(config, last)
        t.equal(resumed.resumeFrom, last.resumeFrom)
        const feedsTheSameEntry = last.resumeFrom <= messages.length && 'groups' in messages[last.resumeFrom - 1] && k + 1 < entries.length
        if (feedsTheSameEntry && entries[k + 1].resumeFrom === last.resumeFrom) resumedInsideAnEntry++
        const rest = run(resumed, messages).map((e) => Buffer.from(encodeMessage(e)).toString('base64'))
        t.same(rest, bytes.slice(k + 1), `resumed after step ${last.step}`)
      })
    }),
    { numRuns: 150 },
  )
  t.ok(resumedInsideAnEntry > 0, 'some runs resumed in the middle of a GroupsEntry')
  t.end()
})

t.test('counters: batches and rollouts add up, drops are the sum of each partition’s latest', (t) => {
  fc.assert(
    fc.property(configArb, streamArb, (config, messages) => {
      const state = new SequencerState(config)
      const latest: Record<string, DropCounts> = {}
      let rollouts = 0
      messages.forEach((message, i) => {
        if (!('wm' in message)) latest[message.p] = message.drops
        for (const entry of state.feed(i + 1, message)) {
          rollouts += entry.summary.rollouts
          const sum = (key: keyof DropCounts) => Object.values(latest).reduce((s, d) => s + d[key], 0)
          t.same(entry.partitionDrops, latest)
          t.same(entry.pipeline, {
            batches: entry.step,
            rolloutsInBatches: rollouts,
            stale: sum('stale'),
            incompleteGroups: sum('incompleteGroups'),
            incompleteGroupRollouts: sum('incompleteGroupRollouts'),
          })
        }
      })
    }),
    { numRuns: 100 },
  )
  t.end()
})

/** An entry of partition `p` with the given groups and no drops. */
const entryOf = (p: number, n: number, groups: GroupMessage[]): GroupsEntry => ({ p, n, through: n, groups, drops: emptyDropCounts() })

t.test('a group whose time closes the previous batch by maxWait starts the next one; resuming there skips nothing of its entry', (t) => {
  const config = configOf({ batchGroups: 3, batchMaxWaitMs: 10 })
  const a = groupOf('a', 1, [[1, 1]])
  const b = groupOf('b', 2, [[0, 1]])
  const c = groupOf('c', 20, [[1, 0]]) // 20 ≥ 1 + 10: closes [a, b], then waits in the next batch
  const d = groupOf('d', 21, [[1, 1]])
  const messages: GroupsMessage[] = [entryOf(0, 1, [a]), entryOf(1, 1, [b]), entryOf(0, 2, [c, d]), { wm: 40 }]
  const state = new SequencerState(config)
  t.same(state.feed(1, messages[0]), [])
  t.same(state.feed(2, messages[1]), [])
  t.equal(state.pendingGroups, 2)
  t.equal(state.watermark, 2)
  const [first] = state.feed(3, messages[2])
  t.match(first, { step: 1, resumeFrom: 3, watermark: 20, summary: { groups: 2 } })
  t.equal(state.pendingGroups, 2, 'c and d wait')
  const [second] = state.feed(4, messages[3])
  t.match(second, { step: 2, resumeFrom: 5, watermark: 40, summary: { groups: 2 } })
  t.equal(state.pendingGroups, 0)
  t.equal(state.resumeFrom, 5)
  const resumed = new SequencerState(config, decodeMessage(encodeMessage(first)))
  t.equal(resumed.watermark, 20)
  t.same(run(resumed, messages), [decodeMessage(encodeMessage(second))])
  t.end()
})

t.test('a maxWait close by a group in the middle of its entry: the entry is fed again from that group', (t) => {
  const config = configOf({ batchGroups: 4, batchMaxWaitMs: 10 })
  const groups = [groupOf('a', 1, [[1, 1]]), groupOf('b', 5, [[0, 1]]), groupOf('c', 30, [[1, 0]]), groupOf('d', 31, [[0, 0]])]
  const messages: GroupsMessage[] = [entryOf(0, 1, groups), { wm: 100 }]
  const entries = run(new SequencerState(config), messages)
  t.match(entries, [
    { step: 1, resumeFrom: 1, summary: { groups: 2 } },
    { step: 2, resumeFrom: 3, summary: { groups: 2 } },
  ])
  t.same(run(new SequencerState(config, entries[0]), messages), entries.slice(1))
  t.end()
})

t.test('batches that fill up inside one entry resume inside it', (t) => {
  const config = configOf({ batchGroups: 2 })
  const groups = Array.from({ length: 5 }, (_, i) =>
    groupOf(`q${i}`, i, [
      [i % 2, 1],
      [1, 0],
    ]),
  )
  const messages: GroupsMessage[] = [entryOf(0, 1, groups), entryOf(0, 2, [groupOf('q5', 9, [[1, 1]])])]
  const entries = run(new SequencerState(config), messages)
  t.same(
    entries.map((e) => [e.step, e.resumeFrom]),
    [
      [1, 1],
      [2, 1],
      [3, 3],
    ],
  )
  for (const [k, last] of entries.entries()) t.same(run(new SequencerState(config, last), messages), entries.slice(k + 1))
  t.end()
})

t.test('resuming from a step without its state (one inside a BATCHES message) is refused', (t) => {
  const config = configOf({ batchGroups: 1 })
  const [entry] = run(new SequencerState(config), [entryOf(0, 1, [groupOf('s', 1, [[1, 1]])])])
  const { state: _state, ...bare } = entry
  t.throws(
    () => new SequencerState(config, bare),
    /^sequencer: step 1 carries no state \(only the last step of a BATCHES message does\): resume from that one$/,
  )
  t.throws(() => new SequencerState(config, { ...entry, partitionDrops: undefined }), /step 1 carries no state/)
  t.end()
})

t.test('feeding out of stream order is refused', (t) => {
  const state = new SequencerState(configOf())
  state.feed(3, { wm: 1 })
  t.throws(() => state.feed(3, { wm: 2 }), /GROUPS message 3 fed after 3/)
  t.throws(() => new SequencerState(configOf()).feed(0, { wm: 1 }), /GROUPS message 0 fed after 0/)
  t.end()
})

t.test('a reward that cannot be scored fails the feed, and every feed after it', (t) => {
  const state = new SequencerState(configOf({ batchGroups: 1 }))
  const bad = groupOf('bad', 1, [[1, 1]])
  bad.rollouts[0].rewards = { acc: 'high' as never, consistency: 1 }
  const fine = groupOf('fine', 1, [[1, 1]])
  t.throws(() => state.feed(1, entryOf(0, 1, [bad, fine])), /acc/)
  t.throws(() => state.feed(2, { wm: 5 }), /acc/)
  t.end()
})

t.test('a saved state that does not fit the config is refused', (t) => {
  const [entry] = run(new SequencerState(configOf({ batchGroups: 1 })), [entryOf(0, 1, [groupOf('x', 1, [[1, 1]])])])
  const other = parseConfig({ groupSize: 2, batchGroups: 1, objectives: [{ channel: 'acc' }], constraints: [] })
  t.throws(() => new SequencerState(other, entry), /does not fit the config/)
  t.end()
})

t.test('close stops the pipeline: nothing more comes out', (t) => {
  const state = new SequencerState(configOf({ batchGroups: 1 }))
  state.close()
  t.same(state.feed(1, entryOf(0, 1, [groupOf('x', 1, [[1, 1]])])), [])
  t.end()
})
