/**
 * The group messages of a cluster run carry rollouts without their payloads' bytes, only
 * where they are logged, and only the reward channels the math reads: `groupRolloutOf` and
 * `rolloutsOf` must be inverse on those (optional fields kept when present, absent when not),
 * and a payload that is not a logged frame's bytes cannot be put in a group message at all.
 * On the wire a GroupsEntry is columns (groupsEntry.ts): encoding then decoding gives back
 * exactly the entry, in both decoded forms, for any entry (property test), and a message that
 * is not one is refused with what is wrong. A BATCHES message carries consecutive steps, split
 * by size the same way by everyone who makes them.
 */
import t from 'tap'
import fc from 'fast-check'
import type { Rollout } from '../../src/core/types.js'
import { wirePackr } from '../../src/state/codec.js'
import {
  ackedSteps,
  batchesMessages,
  BatchesMessageError,
  decodeAckMessage,
  decodeBatchesMessage,
  decodeGroupsForScoring,
  decodeGroupsMessage,
  encodeMessage,
  groupRolloutOf,
  GroupsMessageError,
  rolloutSeq,
  rolloutsOf,
  ITEMS_PER_FRAME,
  type BatchEntry,
  type GroupMessage,
  type GroupRollout,
  type GroupsEntry,
  type ScoringGroupsEntry,
} from '../../src/state/cluster/messages.js'
import { RawPayload } from '../../src/state/rawPayload.js'

const CHANNELS = ['accuracy', 'consistency']

t.test('a rollout with every optional field survives a group message on the wire', async (t) => {
  const rollout: Rollout = {
    id: 'r1',
    promptId: 'p1',
    rewards: { accuracy: 1, consistency: 0.5 },
    ts: 1234,
    seq: rolloutSeq(7, 3),
    policyVersion: 4,
    groupSize: 2,
    payload: RawPayload.at(7, 40, 12),
  }
  const carried = groupRolloutOf(rollout, CHANNELS)
  t.same(carried, {
    id: 'r1',
    promptId: 'p1',
    rewards: { accuracy: 1, consistency: 0.5 },
    ts: 1234,
    seq: 7 * ITEMS_PER_FRAME + 3,
    policyVersion: 4,
    groupSize: 2,
    ref: [7, 40, 12],
  })
  const entry: GroupsEntry = { p: 0, n: 1, through: 3, groups: [{ promptId: 'p1', partial: false, ts: 1234, rollouts: [carried] }], drops: zero() }
  const decoded = rolloutsOf((decodeGroupsMessage(encodeMessage(entry)) as GroupsEntry).groups[0])
  t.equal(decoded.length, 1)
  const payload = decoded[0].payload as RawPayload
  t.ok(payload instanceof RawPayload, 'the payload comes back as a reference')
  t.same([payload.entry, payload.offset, payload.length], [7, 40, 12])
  t.same({ ...decoded[0], payload: undefined }, { ...rollout, payload: undefined })
  t.same(groupRolloutOf(decoded[0], CHANNELS), carried, 'and goes into a group message again unchanged')
})

t.test('a rollout without the optional fields: none appear on either side', async (t) => {
  const rollout: Rollout = { id: 'r2', promptId: 'p2', rewards: { accuracy: 0, consistency: null }, ts: 5, seq: rolloutSeq(1, 0) }
  const carried = groupRolloutOf(rollout, CHANNELS)
  t.same(Object.keys(carried).sort(), ['id', 'promptId', 'rewards', 'seq', 'ts'])
  const [back] = rolloutsOf({ promptId: 'p2', partial: true, ts: 5, rollouts: [carried] })
  t.same(Object.keys(back).sort(), ['id', 'promptId', 'rewards', 'seq', 'ts'])
  t.same(back, rollout)
})

t.test('a group message carries the channels the math reads: others are left out, a missing one is null', async (t) => {
  const rollout: Rollout = { id: 'r5', promptId: 'p5', rewards: { accuracy: 1, length: 812 }, ts: 1, seq: 1 }
  t.same(groupRolloutOf(rollout, CHANNELS).rewards, { accuracy: 1, consistency: null })
  t.same(groupRolloutOf(rollout, []).rewards, {})
})

t.test('a payload that is not a logged frame is refused with the rollout named', async (t) => {
  const inline: Rollout = { id: 'r3', promptId: 'p3', rewards: { accuracy: 1 }, ts: 1, seq: 1, payload: { text: 'inline' } }
  t.throws(() => groupRolloutOf(inline, CHANNELS), /rollout "r3": its payload is not a logged frame's bytes/)
  // the producer's bytes, not yet logged: no entry to point at
  const unlogged: Rollout = { ...inline, id: 'r4', payload: new RawPayload(new Uint8Array([0xa1, 0x78])) }
  t.throws(() => groupRolloutOf(unlogged, CHANNELS), /rollout "r4": its payload is not a logged frame's bytes/)
})

function zero() {
  return { stale: 0, duplicate: 0, incompleteGroups: 0, incompleteGroupRollouts: 0 }
}

/** Any GroupsEntry an owner can publish: groups of one prompt each, every rollout with the same channels. */
const anyEntry = fc
  .record({
    channels: fc.uniqueArray(fc.string({ minLength: 1, maxLength: 6 }), { maxLength: 4 }),
    p: fc.nat(63),
    n: fc.integer({ min: 1, max: 1e6 }),
    through: fc.integer({ min: 1, max: 2 ** 40 }),
    drops: fc.record({ stale: fc.nat(), duplicate: fc.nat(), incompleteGroups: fc.nat(), incompleteGroupRollouts: fc.nat() }),
    groups: fc.array(
      fc.record({
        promptId: fc.string({ maxLength: 12 }),
        partial: fc.boolean(),
        ts: fc.double({ noNaN: true }),
        rollouts: fc.array(
          fc.record(
            {
              id: fc.string({ minLength: 1, maxLength: 20 }),
              scores: fc.array(fc.option(fc.double({ noNaN: true, noDefaultInfinity: true }), { nil: null }), { minLength: 4, maxLength: 4 }),
              ts: fc.double({ noNaN: true }),
              seq: fc.nat(),
              policyVersion: fc.nat(),
              groupSize: fc.integer({ min: 1, max: 64 }),
              ref: fc.tuple(fc.integer({ min: 1, max: 2 ** 50 }), fc.nat(2 ** 31), fc.nat(2 ** 31)),
            },
            { requiredKeys: ['id', 'scores', 'ts', 'seq'] },
          ),
          { maxLength: 9 },
        ),
      }),
      { maxLength: 6 },
    ),
  })
  .map(({ channels, p, n, through, drops, groups }): GroupsEntry => ({
    p,
    n,
    through,
    drops,
    groups: groups.map((g): GroupMessage => ({
      promptId: g.promptId,
      partial: g.partial,
      ts: g.ts,
      rollouts: g.rollouts.map(({ scores, ...r }): GroupRollout => ({
        ...r,
        promptId: g.promptId,
        rewards: Object.fromEntries(channels.map((channel, k) => [channel, scores[k]])),
      })),
    })),
  }))

t.test('property: a GroupsEntry decodes from its columns exactly as it was, in both forms', async (t) => {
  fc.assert(
    fc.property(anyEntry, (entry) => {
      const bytes = encodeMessage(entry)
      t.same(decodeGroupsMessage(bytes), entry)
      const { groups, newestTs, ...scoring } = decodeGroupsForScoring(bytes) as ScoringGroupsEntry
      const { groups: _groups, ...rest } = entry
      t.same(scoring, rest)
      // the sequencer's form: the same groups, their rewards also as columns, their rollouts built when read
      t.same(
        groups.map((g) => ({ promptId: g.promptId, partial: g.partial, ts: g.ts, rollouts: g.rollouts })),
        entry.groups.map((g) => ({ promptId: g.promptId, partial: g.partial, ts: g.ts, rollouts: rolloutsOf(g) })),
      )
      t.equal(groups[0]?.rollouts, groups[0]?.rollouts, 'built once')
      for (const [k, g] of groups.entries()) {
        const { values, start, size } = g.rewardColumns!
        t.equal(size, g.rollouts.length)
        for (const channel of Object.keys(values))
          t.same(
            [...values[channel].subarray(start, start + size)],
            g.rollouts.map((r) => r.rewards[channel] ?? NaN),
          )
        t.equal(newestTs![k], Math.max(...g.rollouts.map((r) => r.ts!)), 'the newest rollout time')
        t.same(Object.keys(g).sort(), ['partial', 'promptId', 'rewardColumns', 'ts'], 'nothing else is its own field')
      }
      t.ok(Buffer.from(encodeMessage(decodeGroupsMessage(bytes) as GroupsEntry)).equals(Buffer.from(bytes)), 'and encodes to the same bytes again')
    }),
    { numRuns: 300 },
  )
})

t.test('the columns are plain MessagePack: little-endian float64 bins a reader can take apart', async (t) => {
  const entry: GroupsEntry = {
    p: 2,
    n: 1,
    through: 9,
    drops: zero(),
    groups: [{ promptId: 'p', partial: true, ts: 7, rollouts: [{ id: 'a', promptId: 'p', rewards: { accuracy: 0.25, consistency: null }, ts: 6, seq: 3 }] }],
  }
  const raw = wirePackr.unpack(encodeMessage(entry)) as { cols: Record<string, unknown> }
  t.same(Object.keys(raw.cols).sort(), ['channels', 'id', 'partial', 'promptId', 'rewards', 'rts', 'seq', 'size', 'ts'], 'no column for fields no rollout has')
  const rewards = raw.cols.rewards as Uint8Array
  const view = new DataView(rewards.buffer, rewards.byteOffset, rewards.byteLength)
  t.same([view.getFloat64(0, true), view.getFloat64(8, true)], [0.25, NaN], 'channel after channel, NaN for null')
  t.same(raw.cols.channels, CHANNELS)
  t.same([...(raw.cols.partial as Uint8Array)], [1])
})

t.test('an entry that breaks the owner’s invariants is not encoded', async (t) => {
  const rollout = (id: string, promptId: string, rewards: Record<string, number | null>): GroupRollout => ({ id, promptId, rewards, ts: 1, seq: 1 })
  const entry = (rollouts: GroupRollout[]): GroupsEntry => ({
    p: 4,
    n: 1,
    through: 1,
    drops: zero(),
    groups: [{ promptId: 'p', partial: false, ts: 1, rollouts }],
  })
  t.throws(() => encodeMessage(entry([rollout('a', 'q', {})])), /partition 4: rollout "a" of prompt "q" is in the group of "p"/)
  t.throws(
    () => encodeMessage(entry([rollout('a', 'p', { x: 1 }), rollout('b', 'p', { y: 1 })])),
    /rollout "b" has the reward channels \["y"\], the message's are \["x"\]/,
  )
  t.throws(() => encodeMessage(entry([rollout('a', 'p', { x: 1 }), rollout('b', 'p', { x: 1, y: 2 })])), /rollout "b" has the reward channels \["x","y"\]/)
  t.throws(() => encodeMessage(entry([rollout('a', 'p', { x: 'high' as never })])), /rollout "a" has rewards.x = the string "high", not a number or null/)
})

t.test('a GROUPS message that is not one of this version is refused with what is wrong', async (t) => {
  const good = wirePackr.unpack(
    encodeMessage({
      p: 1,
      n: 3,
      through: 5,
      drops: zero(),
      groups: [{ promptId: 'p', partial: false, ts: 1, rollouts: [{ id: 'a', promptId: 'p', rewards: { x: 1 }, ts: 1, seq: 1, policyVersion: 2 }] }],
    }),
  ) as { cols: Record<string, unknown> }
  const withCols = (change: Record<string, unknown>) => wirePackr.pack({ ...good, cols: { ...good.cols, ...change } })
  const cases: [string, Uint8Array, RegExp][] = [
    ['not MessagePack', Uint8Array.of(0x92, 1), /not MessagePack \(Unexpected end/],
    ['the format before columns', wirePackr.pack({ p: 1, n: 1, through: 1, groups: [], drops: zero() }), /neither a watermark nor a groups entry with columns/],
    ['a column that is not binary', withCols({ rts: [1] }), /partition 1, message 3: cols.rts is not binary/],
    ['a column of the wrong length', withCols({ seq: new Uint8Array(4) }), /cols.seq has 4 bytes, 8 expected/],
    ['an optional column of the wrong length', withCols({ policyVersion: new Uint8Array(16) }), /cols.policyVersion has 16 bytes, 8 expected/],
    ['ids that are not strings', withCols({ id: [1] }), /cols.id is not a list of strings/],
    ['group sizes beyond the ids', withCols({ size: Uint8Array.of(2, 0, 0, 0) }), /the group sizes add up to more than the 1 rollout ids/],
    ['group sizes short of the ids', withCols({ size: Uint8Array.of(0, 0, 0, 0) }), /the group sizes add up to 0, there are 1 rollout ids/],
  ]
  for (const [what, bytes, reason] of cases) {
    t.throws(() => decodeGroupsMessage(bytes), reason, what)
    t.throws(() => decodeGroupsForScoring(bytes), GroupsMessageError, `${what}: the sequencer's decoder as well`)
  }
  t.same(decodeGroupsMessage(wirePackr.pack({ wm: 42 })), { wm: 42 }, 'a watermark is one')
})

/** A batch entry of step `step` with `rollouts` advantages (8 bytes each). */
function entryOf(step: number, rollouts: number): BatchEntry {
  return {
    step,
    resumeFrom: step + 1,
    watermark: 10 * step,
    state: { step, constraints: {} },
    pipeline: { batches: step, rolloutsInBatches: 8 * step, stale: 0, incompleteGroups: 0, incompleteGroupRollouts: 0 },
    partitionDrops: {},
    summary: {
      step,
      groups: 2,
      rollouts: 8,
      partialGroups: 0,
      lambda: {},
      constraints: {},
      objectives: {},
      fracZeroStd: {},
      advantageMean: 0,
      advantageStd: 1,
    },
    newestTs: 10 * step - 1,
    groupsAt: [[step, 0, 2]],
    advantages: new Uint8Array(8 * rollouts).fill(step),
  }
}

/** Steps as a BATCHES message holds them: the state and partition drops on the last one only, binary as a reader gets it. */
function onWire(steps: readonly BatchEntry[]): unknown[] {
  return steps.map(({ state, partitionDrops, ...rest }, k) => ({
    ...rest,
    advantages: Buffer.from(rest.advantages),
    ...(k === steps.length - 1 ? { state, partitionDrops } : {}),
  }))
}

t.test('a BATCHES message: consecutive steps as plain MessagePack, as many as fit, split the same way every time', async (t) => {
  const entries = [1, 2, 3, 4, 5].map((step) => entryOf(step, 40))
  const [all] = batchesMessages(entries)
  t.same(all.steps, entries, 'under the bound: one message')
  t.same(wirePackr.unpack(all.bytes), { steps: onWire(entries) }, 'what any MessagePack reader sees: the last step alone with its state')
  t.same(decodeBatchesMessage(all.bytes), wirePackr.unpack(all.bytes).steps)
  t.ok(all.bytes.length < wirePackr.pack({ steps: entries }).length - 4 * 20, 'smaller than every step with its state')
  const one = wirePackr.pack(entries[0]).length
  // room for two entries and the message's own bytes, not three
  const split = batchesMessages(entries, 2 * one + 10)
  t.same(
    split.map((m) => m.steps.map((e) => e.step)),
    [[1, 2], [3, 4], [5]],
  )
  t.same(
    split.map((m) => m.bytes),
    batchesMessages(entries, 2 * one + 10).map((m) => m.bytes),
    'deterministic',
  )
  for (const m of split) t.same(decodeBatchesMessage(m.bytes), onWire(m.steps))
  t.same(
    batchesMessages([entryOf(1, 600), entryOf(2, 1)], 1000).map((m) => m.steps.map((e) => e.step)),
    [[1], [2]],
    'a step larger than the bound goes alone',
  )
  // step 2's state is large: both fit without it, but not with it at the end, so step 1 ends the first message
  const large = {
    ...entryOf(2, 1),
    state: { step: 2, constraints: { c: { controller: { rule: 'sgd' as const, lambda: 0 }, window: Array(100).fill({ sum: 1, count: 1 }) } } },
  }
  const small = [entryOf(1, 1), large]
  const bound = wirePackr.pack(entryOf(1, 1)).length + wirePackr.pack(large).length - 100
  t.same(
    batchesMessages(small, bound).map((m) => m.steps.map((e) => e.step)),
    [[1], [2]],
    'the last step is measured with its state',
  )
  t.same(batchesMessages([]), [], 'no steps, no message')
  // 16 steps and more: the array's 3-byte header
  const many = Array.from({ length: 20 }, (_, i) => entryOf(i + 1, 1))
  const [twenty] = batchesMessages(many)
  t.equal(twenty.steps.length, 20)
  t.same(wirePackr.unpack(twenty.bytes), { steps: onWire(many) })
  t.same(
    decodeBatchesMessage(twenty.bytes).map((e) => e.step),
    many.map((e) => e.step),
  )
  // a step of 16 fields and more: a map16 header, the state's two fields added to its count
  const wide = { ...entryOf(1, 1), ...Object.fromEntries(Array.from({ length: 8 }, (_, i) => [`extra${i}`, i])) } as BatchEntry
  t.same(wirePackr.unpack(batchesMessages([wide])[0].bytes), { steps: onWire([wide]) })
  t.throws(() => batchesMessages([{ ...entryOf(1, 1), state: undefined }]), /^batchesMessages: step 1 has no state or partition drops to end a message with$/)
})

t.test('a BATCHES message that is not one of this version is refused with where it is', async (t) => {
  const refused = (bytes: Uint8Array, why: string) =>
    t.throws(() => decodeBatchesMessage(bytes, 'DS_r_BATCHES seq 4'), new BatchesMessageError('DS_r_BATCHES seq 4', why), why)
  refused(wirePackr.pack(entryOf(1, 1)), 'no "steps" array of batch entries')
  refused(wirePackr.pack({ steps: [] }), 'no "steps" array of batch entries')
  refused(wirePackr.pack(null), 'no "steps" array of batch entries')
  const { state: _state, ...stateless } = entryOf(1, 1)
  refused(wirePackr.pack({ steps: [stateless] }), 'its last step carries no state and partition drops')
  refused(wirePackr.pack({ steps: [{ ...entryOf(1, 1), partitionDrops: null }] }), 'its last step carries no state and partition drops')
  refused(wirePackr.pack({ steps: [7] }), 'its last step carries no state and partition drops')
  t.throws(() => decodeBatchesMessage(Uint8Array.of(0x81, 0xa5, 0x73, 0x74, 0x65, 0x70, 0x73, 0xdc, 0x00)), {
    name: 'BatchesMessageError',
    message: /^a message is not a BATCHES message of this dualstream version: not MessagePack \(/,
  })
})

t.test('an ACKS message: steps, node and policy version, checked; its steps as a log line names them', async (t) => {
  const entry = { steps: [3, 4, 6], node: 'a', policyVersion: 2 }
  t.same(decodeAckMessage(encodeMessage(entry), 'DS_r_ACKS seq 1'), entry)
  const refused = (message: unknown) =>
    t.throws(
      () => decodeAckMessage(wirePackr.pack(message), 'DS_r_ACKS seq 5'),
      { message: /^DS_r_ACKS seq 5: not an acknowledgement message of this dualstream version \(\{steps: \[step ≥ 1\], node, policyVersion\?\}\): / },
      JSON.stringify(message),
    )
  refused({ step: 3, node: 'a' })
  refused({ steps: [], node: 'a' })
  refused({ steps: [0], node: 'a' })
  refused({ steps: [1.5], node: 'a' })
  refused({ steps: [1], node: 7 })
  refused({ steps: [1], node: 'a', policyVersion: 'new' })
  refused([1])
  refused(null)
  t.throws(() => decodeAckMessage(Uint8Array.of(0x92, 0x01), 'DS_r_ACKS seq 6'), {
    message: /^DS_r_ACKS seq 6: not an acknowledgement message \(not MessagePack: /,
  })
  t.equal(ackedSteps({ steps: [9], node: 'a' }), 'step 9')
  t.equal(ackedSteps(entry), 'steps 3, 4, 6')
  t.equal(ackedSteps({ steps: [1, 2, 3, 4, 5, 6, 7, 8], node: 'a' }), 'steps 1, 2, 3, … 8 (8)')
})
