/**
 * A partition owner's pure function (src/state/cluster/partitionState.ts): what each entry
 * outputs is a function of the partition's entries alone (fed twice, the same bytes), it holds
 * exactly the groups and drops `fgrpo`'s first two stages give for the same rollouts,
 * duplicates are counted and dropped, watermark entries time groups out, policy entries make
 * rollouts stale, payload references point at the payload's bytes in the frame, and an
 * unreadable entry is refused with where it is, leaving the state as it was. Messages
 * (`groupsEntryOf`) carry consecutive outputs however they are cut.
 */
import fc from 'fast-check'
import { Subject } from 'rxjs'
import t from 'tap'
import { fgrpo } from '../../operators/fgrpo.js'
import { configChannels, parseConfig, type Config, type ConfigInput } from '../../src/core/config.js'
import type { DropEvent, Rollout } from '../../src/core/types.js'
import { wirePackr } from '../../src/state/codec.js'
import {
  emptyDropCounts,
  encodeMessage,
  groupRolloutOf,
  ITEMS_PER_FRAME,
  rolloutSeq,
  type GroupMessage,
  type PartitionEntry,
} from '../../src/state/cluster/messages.js'
import {
  decodePartitionFrame,
  groupsEntryOf,
  partitionEntryOf,
  PartitionState,
  type PartitionFrame,
  type PartitionOutput,
} from '../../src/state/cluster/partitionState.js'
import { RawPayload } from '../../src/state/rawPayload.js'

const config = (overrides: Partial<ConfigInput> = {}): Config => parseConfig({ groupSize: 2, batchGroups: 1, objectives: [{ channel: 'acc' }], ...overrides })

interface Item {
  id: string
  promptId: string
  rewards: Record<string, number | null>
  policyVersion?: number
  groupSize?: number
  payload?: unknown
}

/** One entry of a partition as an owner reads it: its stream seq, the entry, and its frame's bytes for a rollouts entry. */
interface Fed {
  seq: number
  entry: PartitionEntry
  bytes?: Uint8Array
}

const frameBytes = (items: readonly unknown[]) => wirePackr.pack({ type: 'rollouts', rollouts: items })

/** Feeds `entries` into a fresh state; `frames` decodes (or reuses) each frame. */
function run(cfg: Config, entries: readonly Fed[], frames: (fed: Fed) => PartitionFrame | undefined = (fed) => frameOf(fed)): (PartitionOutput | undefined)[] {
  const state = new PartitionState(cfg, 3)
  const out = entries.map((fed) => state.feed(fed.seq, fed.entry, frames(fed)))
  state.close()
  return out
}

const frameOf = (fed: Fed): PartitionFrame | undefined => (fed.bytes === undefined ? undefined : decodePartitionFrame(fed.bytes, `frame of seq ${fed.seq}`))

/**
 * What one node's pipeline makes of the same entries: ids deduplicated, rollouts stamped
 * (seq from frame and item, event time never backwards, payload by reference), then `fgrpo`
 * with one group per batch, so that each batch is exactly one group of its first two stages.
 */
function reference(cfg: Config, entries: readonly Fed[]): (PartitionOutput | undefined)[] {
  const rollouts = new Subject<Rollout>()
  const watermarks = new Subject<number>()
  const policyVersions = new Subject<number>()
  const drops = emptyDropCounts()
  let groups: GroupMessage[] = []
  let dropped = false
  const onDrop = (event: DropEvent) => {
    dropped = true
    if (event.reason === 'stale') drops.stale += event.count
    else {
      drops.incompleteGroups++
      drops.incompleteGroupRollouts += event.count
    }
  }
  const subscription = rollouts
    .pipe(fgrpo({ ...cfg, batchGroups: 1, batchMaxWaitMs: undefined }, { watermarks, policyVersions, eventTime: (r) => r.ts!, onDrop }))
    .subscribe((batch) => {
      for (const g of batch.groups)
        groups.push({ promptId: g.promptId, partial: g.partial, ts: g.ts, rollouts: g.rollouts.map((r) => groupRolloutOf(r, configChannels(cfg))) })
    })
  const seen = new Set<string>()
  let ts = -Infinity
  const out = entries.map(({ seq, entry, bytes }) => {
    groups = []
    dropped = false
    ts = Math.max(ts, entry.ts)
    if (entry.k === 'watermark') watermarks.next(entry.ts)
    else if (entry.k === 'policy') policyVersions.next(entry.version)
    else {
      const items = (decodePartitionFrame(bytes!, 'reference').items as Item[]).map((item) => item)
      for (const index of entry.items) {
        const item = items[index]
        if (seen.has(item.id)) {
          drops.duplicate++
          dropped = true
          continue
        }
        seen.add(item.id)
        const rollout: Rollout = { ...item, ts, seq: rolloutSeq(entry.frame, index) }
        if (item.payload instanceof RawPayload)
          rollout.payload = RawPayload.at(entry.frame, item.payload.bytes!.byteOffset - bytes!.byteOffset, item.payload.length)
        rollouts.next(rollout)
      }
    }
    if (groups.length === 0 && !dropped) return undefined
    return { seq, groups, drops: { ...drops } }
  })
  subscription.unsubscribe()
  return out
}

const payload = fc.oneof(
  fc.string({ maxLength: 12 }),
  fc.array(fc.double({ noNaN: true }), { maxLength: 5 }),
  fc.uint8Array({ maxLength: 24 }).map((b) => Buffer.from(b)),
  fc.dictionary(fc.string({ maxLength: 4 }), fc.integer(), { maxKeys: 3 }),
)

const item: fc.Arbitrary<Item> = fc.record(
  {
    id: fc.integer({ min: 0, max: 40 }).map((k) => `r${k}`),
    promptId: fc.constantFrom('a', 'b', 'c', 'd'),
    rewards: fc.record({ acc: fc.oneof(fc.double({ min: -1, max: 1, noNaN: true }), fc.constant(null)) }),
    policyVersion: fc.nat(6),
    groupSize: fc.integer({ min: 1, max: 4 }),
    payload,
  },
  { requiredKeys: ['id', 'promptId', 'rewards'] },
)

type Op =
  | { k: 'rollouts'; items: Item[]; pick: boolean[]; dt: number; gap: number }
  | { k: 'watermark'; dt: number; gap: number }
  | { k: 'policy'; version: number; dt: number; gap: number }

const dt = fc.integer({ min: -100, max: 400 })
const gap = fc.integer({ min: 1, max: 3 })
const op: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      k: fc.constant('rollouts' as const),
      items: fc.array(item, { minLength: 1, maxLength: 6 }),
      pick: fc.array(fc.boolean(), { maxLength: 6 }),
      dt,
      gap,
    }),
  },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('watermark' as const), dt, gap }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('policy' as const), version: fc.nat(8), dt, gap }) },
)

const configInput: fc.Arbitrary<Partial<ConfigInput>> = fc
  .record({
    groupSize: fc.integer({ min: 1, max: 4 }),
    minGroupSize: fc.integer({ min: 1, max: 4 }),
    groupTimeoutMs: fc.option(fc.integer({ min: 50, max: 1000 }), { nil: undefined }),
    maxStaleness: fc.option(fc.integer({ min: 0, max: 2 }), { nil: undefined }),
  })
  .map((c) => ({ ...c, minGroupSize: Math.min(c.minGroupSize, c.groupSize) }))

/** The entries of a partition in a stream shared with other subjects: frames and other partitions' entries take the seqs in between. */
function entriesOf(ops: readonly Op[]): Fed[] {
  let seq = 0
  let ts = 1_000
  return ops.map((o) => {
    seq += o.gap
    ts += o.dt
    if (o.k === 'watermark') return { seq, entry: { k: 'watermark', ts } }
    if (o.k === 'policy') return { seq, entry: { k: 'policy', version: o.version, ts } }
    // the frame was logged just before: its items not picked belong to other partitions
    const frame = seq++
    const picked = o.items.map((_, index) => index).filter((index) => o.pick[index] ?? true)
    return { seq, entry: { k: 'rollouts', frame, items: picked.length > 0 ? picked : [0], ts }, bytes: frameBytes(o.items) }
  })
}

t.test('the same entries give the same messages, byte for byte, and one decoded frame may serve twice', (t) => {
  fc.assert(
    fc.property(configInput, fc.array(op, { maxLength: 30 }), (input, ops) => {
      const cfg = config(input)
      const entries = entriesOf(ops)
      const decoded = new Map<number, PartitionFrame | undefined>()
      const first = run(cfg, entries, (fed) => {
        const frame = frameOf(fed)
        decoded.set(fed.seq, frame)
        return frame
      })
      // a second owner, here handed the very objects the first one read (a node's shared frame cache)
      const second = run(cfg, entries, (fed) => decoded.get(fed.seq))
      const third = run(cfg, entries)
      t.same(second, first)
      t.same(third, first)
      const bytes = (out: (PartitionOutput | undefined)[]) =>
        out.map((m, k) => (m === undefined ? '-' : Buffer.from(encodeMessage(groupsEntryOf(3, k + 1, [m]))).toString('hex'))).join()
      return bytes(first) === bytes(third)
    }),
    { numRuns: 150 },
  )
  t.end()
})

t.test('each entry’s message holds the groups and drops fgrpo’s first two stages give, payloads by reference to their bytes', (t) => {
  fc.assert(
    fc.property(configInput, fc.array(op, { maxLength: 40 }), (input, ops) => {
      const cfg = config(input)
      const entries = entriesOf(ops)
      const actual = run(cfg, entries)
      t.same(actual, reference(cfg, entries))
      const frames = new Map(entries.filter((e) => e.entry.k === 'rollouts').map((e) => [(e.entry as { frame: number }).frame, e]))
      const state = new PartitionState(cfg, 3)
      let grouped = 0
      let accepted = 0
      for (const fed of entries) {
        const message = state.feed(fed.seq, fed.entry, frameOf(fed))
        if (fed.entry.k === 'rollouts') accepted += fed.entry.items.length
        for (const group of message?.groups ?? []) {
          for (const r of group.rollouts) {
            grouped++
            const frame = Math.floor(r.seq / ITEMS_PER_FRAME)
            const fedFrame = frames.get(frame)!
            const original = (wirePackr.unpack(fedFrame.bytes!) as { rollouts: Item[] }).rollouts[r.seq % ITEMS_PER_FRAME]
            t.equal(r.id, original.id)
            if (original.payload === undefined) t.equal(r.ref, undefined)
            else {
              t.equal(r.ref![0], frame, 'the reference names the frame’s stream seq')
              t.same(Buffer.from(fedFrame.bytes!.subarray(r.ref![1], r.ref![1] + r.ref![2])), wirePackr.pack(original.payload), 'and the payload’s bytes in it')
            }
          }
        }
      }
      // every rollout accepted is in a group, dropped, a duplicate, or still waiting
      const drops = state.dropCounts
      t.ok(state.pendingRollouts >= 0)
      t.equal(grouped + drops.stale + drops.incompleteGroupRollouts + state.pendingRollouts, accepted - drops.duplicate)
      state.close()
    }),
    { numRuns: 150 },
  )
  t.end()
})

t.test('groupsEntryOf: however consecutive outputs are cut into messages, the messages carry them all, in order, through the last of each', (t) => {
  fc.assert(
    fc.property(configInput, fc.array(op, { maxLength: 40 }), fc.array(fc.boolean(), { maxLength: 40 }), (input, ops, cuts) => {
      const outputs = run(config(input), entriesOf(ops)).filter((o): o is PartitionOutput => o !== undefined)
      const messages = []
      let from = 0
      for (let k = 0; k < outputs.length; k++) {
        // a message ends after output k when the cut says so, and after the last output
        if (!(cuts[k] ?? true) && k < outputs.length - 1) continue
        messages.push(groupsEntryOf(3, messages.length + 1, outputs.slice(from, k + 1)))
        from = k + 1
      }
      t.same(
        messages.flatMap((m) => m.groups),
        outputs.flatMap((o) => o.groups),
      )
      t.same(
        messages.map((m) => m.n),
        messages.map((_, k) => k + 1),
      )
      for (const message of messages) {
        const last = outputs.find((o) => o.seq === message.through)!
        t.ok(last, 'through names an output’s entry')
        t.same(message.drops, last.drops, 'the drops after it')
        t.equal(message.p, 3)
      }
      return true
    }),
    { numRuns: 100 },
  )
  const drops = { stale: 1, duplicate: 0, incompleteGroups: 0, incompleteGroupRollouts: 0 }
  const one: PartitionOutput = { seq: 7, groups: [], drops }
  t.same(groupsEntryOf(2, 5, [one]), { p: 2, n: 5, through: 7, groups: [], drops })
  t.same(Object.keys(groupsEntryOf(2, 5, [one])), ['p', 'n', 'through', 'groups', 'drops'], 'keys in the order every owner encodes them')
  t.same(
    groupsEntryOf(2, 6, [], 9, drops),
    { p: 2, n: 6, through: 9, groups: [], drops },
    'no outputs: through and drops as given (a replay rebuilding a message)',
  )
  t.end()
})

t.test('duplicate ids (in one entry, or across entries and frames) are dropped and counted', (t) => {
  const state = new PartitionState(config({ groupSize: 3 }), 0)
  const f1 = frameBytes([
    { id: 'x', promptId: 'p', rewards: { acc: 1 } },
    { id: 'y', promptId: 'p', rewards: { acc: 0 } },
  ])
  const f2 = frameBytes([
    { id: 'x', promptId: 'p', rewards: { acc: 0.5 } },
    { id: 'z', promptId: 'p', rewards: { acc: 0.5 } },
  ])
  const first = state.feed(2, { k: 'rollouts', frame: 1, items: [0, 0, 1], ts: 10 }, decodePartitionFrame(f1, 'f1'))
  t.same(first, { seq: 2, groups: [], drops: { stale: 0, duplicate: 1, incompleteGroups: 0, incompleteGroupRollouts: 0 } })
  t.equal(state.pendingRollouts, 2)
  const second = state.feed(4, { k: 'rollouts', frame: 3, items: [0, 1], ts: 11 }, decodePartitionFrame(f2, 'f2'))!
  t.same(second.drops, { stale: 0, duplicate: 2, incompleteGroups: 0, incompleteGroupRollouts: 0 }, 'drops are cumulative')
  t.same(
    second.groups.map((g) => g.rollouts.map((r) => [r.id, r.seq, r.ts])),
    [
      [
        ['x', rolloutSeq(1, 0), 10],
        ['y', rolloutSeq(1, 1), 10],
        ['z', rolloutSeq(3, 1), 11],
      ],
    ],
  )
  t.equal(state.pendingRollouts, 0)
  t.equal(state.lastSeq, 4)
  t.equal(
    state.feed(6, { k: 'rollouts', frame: 3, items: [1], ts: 12 }, decodePartitionFrame(f2, 'f2'))!.drops.duplicate,
    3,
    'a frame read again: all duplicates',
  )
  state.close()
  t.end()
})

t.test('watermark entries time groups out: partial ones emitted, small ones dropped', (t) => {
  const state = new PartitionState(config({ groupSize: 4, minGroupSize: 2, groupTimeoutMs: 1000 }), 1)
  const frame = frameBytes([
    { id: 'a1', promptId: 'a', rewards: { acc: 1 } },
    { id: 'a2', promptId: 'a', rewards: { acc: 0 } },
    { id: 'b1', promptId: 'b', rewards: { acc: 1 } },
  ])
  t.equal(state.lastTs, -Infinity)
  t.equal(state.feed(2, { k: 'rollouts', frame: 1, items: [0, 1, 2], ts: 5_000 }, decodePartitionFrame(frame, 'f')), undefined, 'nothing complete yet')
  t.equal(state.pendingRollouts, 3)
  t.equal(state.feed(3, { k: 'watermark', ts: 5_999 }), undefined, 'not yet')
  t.equal(state.lastTs, 5_999)
  t.equal(state.feed(5, { k: 'watermark', ts: 4_000 }), undefined, 'a watermark from the past moves nothing')
  t.equal(state.lastTs, 5_999)
  const out = state.feed(9, { k: 'watermark', ts: 6_000 })!
  t.same(out, {
    seq: 9,
    groups: [
      {
        promptId: 'a',
        partial: true,
        ts: 6_000,
        rollouts: [
          { id: 'a1', promptId: 'a', rewards: { acc: 1 }, ts: 5_000, seq: rolloutSeq(1, 0) },
          { id: 'a2', promptId: 'a', rewards: { acc: 0 }, ts: 5_000, seq: rolloutSeq(1, 1) },
        ],
      },
    ],
    drops: { stale: 0, duplicate: 0, incompleteGroups: 1, incompleteGroupRollouts: 1 },
  })
  t.equal(state.pendingRollouts, 0)
  state.close()
  t.end()
})

t.test('an entry’s time never goes backwards: rollouts after a later entry take its time', (t) => {
  const state = new PartitionState(config({ groupSize: 2, groupTimeoutMs: 100 }), 0)
  const frame = frameBytes([
    { id: '1', promptId: 'p', rewards: { acc: 1 } },
    { id: '2', promptId: 'p', rewards: { acc: 1 } },
  ])
  state.feed(1, { k: 'policy', version: 1, ts: 500 })
  const out = state.feed(3, { k: 'rollouts', frame: 2, items: [0, 1], ts: 20 }, decodePartitionFrame(frame, 'f'))!
  t.same(
    out.groups[0].rollouts.map((r) => r.ts),
    [500, 500],
  )
  t.equal(out.groups[0].ts, 500)
  state.close()
  t.end()
})

t.test('policy entries make older rollouts stale (maxStaleness); without maxStaleness they change nothing', (t) => {
  const frame = frameBytes([
    { id: 'old', promptId: 'p', rewards: { acc: 1 }, policyVersion: 3 },
    { id: 'ok', promptId: 'p', rewards: { acc: 1 }, policyVersion: 4 },
    { id: 'new', promptId: 'p', rewards: { acc: 0 }, policyVersion: 5 },
  ])
  const state = new PartitionState(config({ groupSize: 2, maxStaleness: 1 }), 2)
  t.equal(state.feed(1, { k: 'policy', version: 5, ts: 1 }), undefined)
  const out = state.feed(3, { k: 'rollouts', frame: 2, items: [0, 1, 2], ts: 2 }, decodePartitionFrame(frame, 'f'))!
  t.same(out.drops, { stale: 1, duplicate: 0, incompleteGroups: 0, incompleteGroupRollouts: 0 })
  t.same(
    out.groups.map((g) => g.rollouts.map((r) => [r.id, r.policyVersion])),
    [
      [
        ['ok', 4],
        ['new', 5],
      ],
    ],
  )
  state.close()
  const lax = new PartitionState(config({ groupSize: 2 }), 2)
  t.equal(lax.feed(1, { k: 'policy', version: 5, ts: 1 }), undefined)
  const all = lax.feed(3, { k: 'rollouts', frame: 2, items: [0, 1, 2], ts: 2 }, decodePartitionFrame(frame, 'f'))!
  t.same(all.drops, emptyDropCounts())
  t.same(
    all.groups.map((g) => g.rollouts.map((r) => r.id)),
    [['old', 'ok']],
  )
  t.equal(lax.pendingRollouts, 1)
  lax.close()
  t.end()
})

t.test('a rollout’s own groupSize wins, and the payload reference points at its bytes in the frame', (t) => {
  const payloadValue = { tokens: [1, 2, 3], logprobs: new Float32Array([-0.5, -1.25]) }
  const bytes = frameBytes([
    { id: 'solo', promptId: 'q', rewards: { acc: 1 }, groupSize: 1, payload: payloadValue },
    { id: 'bare', promptId: 'q2', rewards: { acc: 1 }, groupSize: 1 },
  ])
  // a frame inside a bigger buffer (as a NATS message's data may be)
  const big = new Uint8Array(bytes.length + 7)
  big.set(bytes, 7)
  const framed = big.subarray(7)
  const state = new PartitionState(config({ groupSize: 4 }), 0)
  const out = state.feed(12, { k: 'rollouts', frame: 11, items: [0, 1], ts: 1 }, decodePartitionFrame(framed, 'f'))!
  const [solo, bare] = out.groups.map((g) => g.rollouts[0])
  t.equal(solo.groupSize, 1)
  t.equal(solo.ref![0], 11)
  t.same(Buffer.from(framed.subarray(solo.ref![1], solo.ref![1] + solo.ref![2])), wirePackr.pack(payloadValue))
  t.equal(bare.ref, undefined)
  state.close()
  t.end()
})

t.test('an unreadable entry is refused with where it is, and the state stays as it was', (t) => {
  const good = frameBytes([
    { id: 'g1', promptId: 'p', rewards: { acc: 1 } },
    { id: 'g2', promptId: 'p', rewards: { acc: 1 } },
  ])
  const bad = frameBytes([
    { id: 'b1', promptId: 'p', rewards: { acc: 1 } },
    { id: 'b2', promptId: 'p', rewards: { acc: 'high' } },
  ])
  const state = new PartitionState(config({ groupSize: 2 }), 7)
  t.throws(
    () => state.feed(5, { k: 'rollouts', frame: 4, items: [0, 1], ts: 1 }, decodePartitionFrame(bad, 'f')),
    /^partition 7, stream seq 5, frame 4, item 1: not a valid rollout: rollout "b2": rewards.acc: must be a finite number or null/,
  )
  t.throws(
    () => state.feed(5, { k: 'rollouts', frame: 4, items: [2], ts: 1 }, decodePartitionFrame(bad, 'f')),
    /partition 7, stream seq 5, frame 4: item 2 does not exist \(the frame has 2 rollouts\)/,
  )
  t.throws(
    () => state.feed(5, { k: 'rollouts', frame: 4, items: [0], ts: 1 }),
    /partition 7, stream seq 5, frame 4: a rollouts entry was fed without its frame/,
  )
  const foreign = decodePartitionFrame(frameBytes([{ id: 'f', promptId: 'p', rewards: {}, payload: 1 }]), 'f')
  const elsewhere = { items: foreign.items, bytes: new Uint8Array(foreign.bytes) }
  t.throws(() => state.feed(5, { k: 'rollouts', frame: 4, items: [0], ts: 1 }, elsewhere), /frame 4, item 0: its payload is not a view of the frame's bytes/)
  const decodedPayload = { items: [{ id: 'f', promptId: 'p', rewards: {}, payload: 1 }], bytes: foreign.bytes }
  t.throws(() => state.feed(5, { k: 'rollouts', frame: 4, items: [0], ts: 1 }, decodedPayload), /its payload is not a view of the frame's bytes \(1\)/)
  const released = RawPayload.at(4, 0, 1)
  t.throws(
    () =>
      state.feed(
        5,
        { k: 'rollouts', frame: 4, items: [0], ts: 1 },
        { items: [{ id: 'f', promptId: 'p', rewards: {}, payload: released }], bytes: foreign.bytes },
      ),
    /not a view/,
  )
  t.throws(() => state.feed(5, { k: 'nonsense', ts: 1 } as unknown as PartitionEntry), /partition 7, stream seq 5: not a partition entry: k must be/)
  // nothing of that changed the state: the ids are all new
  t.equal(state.lastSeq, 0)
  t.equal(state.lastTs, -Infinity)
  const out = state.feed(6, { k: 'rollouts', frame: 4, items: [0, 1], ts: 2 }, decodePartitionFrame(good, 'f'))!
  t.equal(out.seq, 6)
  t.same(out.drops, emptyDropCounts())
  t.throws(() => state.feed(6, { k: 'watermark', ts: 3 }), /partition 7, stream seq 6: fed after stream seq 6 \(entries must come in increasing stream order\)/)
  state.close()
  t.throws(() => state.feed(8, { k: 'watermark', ts: 3 }), /partition 7, stream seq 8: the partition state is closed/)
  t.end()
})

t.test('partitionEntryOf refuses what is not a partition entry, saying what is wrong', (t) => {
  const where = 'partition 1, stream seq 9'
  t.same(partitionEntryOf({ k: 'watermark', ts: 5 }, where), { k: 'watermark', ts: 5 })
  t.same(partitionEntryOf({ k: 'policy', version: 0, ts: 5 }, where), { k: 'policy', version: 0, ts: 5 })
  t.same(partitionEntryOf({ k: 'rollouts', frame: 1, items: [], ts: 5 }, where), { k: 'rollouts', frame: 1, items: [], ts: 5 })
  const refused: [unknown, RegExp][] = [
    [null, /got null, not a map/],
    [[1], /got an array, not a map/],
    ['x', /got the string "x", not a map/],
    [{ k: 'watermark' }, /ts must be a finite number, got nothing/],
    [{ k: 'watermark', ts: Infinity }, /ts must be a finite number, got Infinity/],
    [{ k: 'rollouts', frame: 0, items: [], ts: 1 }, /frame must be a stream sequence >= 1, got 0/],
    [{ k: 'rollouts', frame: 1.5, items: [], ts: 1 }, /frame must be a stream sequence >= 1, got 1.5/],
    [{ k: 'rollouts', frame: 1, items: 'all', ts: 1 }, /items must be item indices below 16384, got the string "all"/],
    [{ k: 'rollouts', frame: 1, items: [ITEMS_PER_FRAME], ts: 1 }, /items must be item indices below 16384, got an array/],
    [{ k: 'rollouts', frame: 1, items: [-1], ts: 1 }, /items must be item indices/],
    [{ k: 'policy', version: -1, ts: 1 }, /version must be an integer >= 0, got -1/],
    [{ k: 'policy', ts: 1 }, /version must be an integer >= 0, got nothing/],
    [{ ts: 1 }, /k must be 'rollouts', 'watermark' or 'policy', got nothing/],
  ]
  for (const [value, message] of refused) t.throws(() => partitionEntryOf(value, where), message, JSON.stringify(value))
  t.throws(() => partitionEntryOf(null, where), /^partition 1, stream seq 9: not a partition entry: /)
  t.end()
})

t.test('decodePartitionFrame refuses bytes that are not a rollouts frame, naming where they came from', (t) => {
  t.throws(
    () => decodePartitionFrame(new Uint8Array([0xa5, 0x61]), 'frame 12 of run x'),
    /^frame 12 of run x: not a MessagePack frame \(Unexpected end of MessagePack data\)/,
  )
  t.throws(() => decodePartitionFrame(wirePackr.pack({ type: 'credit' }), 'frame 12'), /^frame 12: not a rollouts frame \(its rollouts are nothing\)/)
  t.throws(() => decodePartitionFrame(wirePackr.pack(null), 'frame 12'), /not a rollouts frame \(its rollouts are nothing\)/)
  t.throws(() => decodePartitionFrame(wirePackr.pack({ rollouts: 3 }), 'frame 12'), /not a rollouts frame \(its rollouts are 3\)/)
  const bytes = frameBytes([{ id: 'a', promptId: 'p', rewards: {} }])
  t.same(decodePartitionFrame(bytes, 'f'), { items: [{ id: 'a', promptId: 'p', rewards: {} }], bytes })
  t.end()
})
