/**
 * The group messages of a cluster run carry rollouts without their payloads' bytes, only
 * where they are logged: `groupRolloutOf` and `rolloutsOf` must be inverse (optional fields
 * kept when present, absent when not), and a payload that is not a logged frame's bytes
 * cannot be put in a group message at all.
 */
import t from 'tap'
import type { Rollout } from '../../src/core/types.js'
import { decodeMessage, encodeMessage, groupRolloutOf, rolloutSeq, rolloutsOf, ITEMS_PER_FRAME, type GroupMessage } from '../../src/state/cluster/messages.js'
import { RawPayload } from '../../src/state/rawPayload.js'

t.test('a rollout with every optional field survives a group message through MessagePack', async (t) => {
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
  const carried = groupRolloutOf(rollout)
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
  const group: GroupMessage = { promptId: 'p1', partial: false, ts: 1234, rollouts: [carried] }
  const decoded = rolloutsOf(decodeMessage<GroupMessage>(encodeMessage(group as never)))
  t.equal(decoded.length, 1)
  const payload = decoded[0].payload as RawPayload
  t.ok(payload instanceof RawPayload, 'the payload comes back as a reference')
  t.same([payload.entry, payload.offset, payload.length], [7, 40, 12])
  t.same({ ...decoded[0], payload: undefined }, { ...rollout, payload: undefined })
  t.same(groupRolloutOf(decoded[0]), carried, 'and goes into a group message again unchanged')
})

t.test('a rollout without the optional fields: none appear on either side', async (t) => {
  const rollout: Rollout = { id: 'r2', promptId: 'p2', rewards: { accuracy: 0 }, ts: 5, seq: rolloutSeq(1, 0) }
  const carried = groupRolloutOf(rollout)
  t.same(Object.keys(carried).sort(), ['id', 'promptId', 'rewards', 'seq', 'ts'])
  const [back] = rolloutsOf({ promptId: 'p2', partial: true, ts: 5, rollouts: [carried] })
  t.same(Object.keys(back).sort(), ['id', 'promptId', 'rewards', 'seq', 'ts'])
  t.same(back, rollout)
})

t.test('a payload that is not a logged frame is refused with the rollout named', async (t) => {
  const inline: Rollout = { id: 'r3', promptId: 'p3', rewards: { accuracy: 1 }, ts: 1, seq: 1, payload: { text: 'inline' } }
  t.throws(() => groupRolloutOf(inline), /rollout "r3": its payload is not a logged frame's bytes/)
  // the producer's bytes, not yet logged: no entry to point at
  const unlogged: Rollout = { ...inline, id: 'r4', payload: new RawPayload(new Uint8Array([0xa1, 0x78])) }
  t.throws(() => groupRolloutOf(unlogged), /rollout "r4": its payload is not a logged frame's bytes/)
})

t.test('rollout seqs order by frame then item', async (t) => {
  t.ok(rolloutSeq(2, ITEMS_PER_FRAME - 1) < rolloutSeq(3, 0))
  t.equal(rolloutSeq(0, 5), 5)
})
