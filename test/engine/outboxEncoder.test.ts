import fc from 'fast-check'
import t from 'tap'
import { wirePackr, wireUnpackr } from '../../src/state/codec.js'
import { parseConfig } from '../../src/core/config.js'
import { assembleBatch, encodeBatchForTrainer } from '../../src/state/outboxEncoder.js'
import { RawPayload } from '../../src/state/rawPayload.js'
import { initialDualState } from '../../src/math/dual.js'
import { batchColumns } from '../../src/math/columns.js'
import { scoreGroups } from '../../src/math/score.js'
import type { Group, Rollout, ScoredBatch } from '../../src/core/types.js'
import type { OutboxBatch } from '../../src/state/engineStore.js'
import { constraintsRecord } from '../../src/state/batchRecord.js'

const config = parseConfig({
  groupSize: 2,
  batchGroups: 1,
  objectives: [{ channel: 'acc' }],
  constraints: [{ channel: 'c', sense: '>=', threshold: 0.9, dual: { rule: 'sgd', lr: 0.1 } }],
})

function scored(groups: Group[]): ScoredBatch {
  const step = scoreGroups(groups, config, initialDualState(config.constraints))
  return { groups, ts: 0, reason: 'full', columns: batchColumns(groups, ['acc', 'c']), windows: {}, ...step }
}

/** The reference: the trainer's view of a batch built as plain objects (what the bytes must decode to). */
function toOutbox(batch: ScoredBatch): OutboxBatch {
  const rollouts: OutboxBatch['rollouts'] = []
  let i = 0
  for (const group of batch.groups) {
    for (const rollout of group.rollouts as Rollout[]) {
      const item: OutboxBatch['rollouts'][number] = { id: rollout.id, promptId: rollout.promptId, advantage: batch.advantages[i++] }
      if (rollout.payload !== undefined) item.payload = rollout.payload
      rollouts.push(item)
    }
  }
  return { type: 'batch', step: batch.step, lambda: batch.lambda, constraints: constraintsRecord(batch.constraints), rollouts }
}

/**
 * What a decoder makes of the encoder's bytes must equal what it makes of the reference packed by
 * msgpackr itself: both go through the same decoder, so its own conventions (msgpackr renames a
 * `__proto__` key to `__proto_` as its guard against prototype pollution) apply to both sides.
 */
function sameOnTheWire(batch: ScoredBatch): boolean {
  return JSON.stringify(wireUnpackr.unpack(encodeBatchForTrainer(batch))) === JSON.stringify(wireUnpackr.unpack(wirePackr.pack(toOutbox(batch))))
}

const text = fc.oneof(
  fc.string({ minLength: 1, maxLength: 40 }),
  fc.string({ unit: 'grapheme', minLength: 1, maxLength: 120 }),
  fc.string({ minLength: 250, maxLength: 300 }),
)

t.test('the bytes decode to exactly the trainer view, for any ids, prompt ids, payloads and batch size', (t) => {
  fc.assert(
    fc.property(
      fc.array(
        fc.record({
          promptId: text,
          rollouts: fc.array(
            fc.record({
              id: text,
              acc: fc.constantFrom(0, 1, 0.5),
              c: fc.option(fc.double({ min: -1, max: 1, noNaN: true }), { nil: null }),
              payload: fc.option(fc.jsonValue(), { nil: undefined }),
            }),
            { minLength: 1, maxLength: 6 },
          ),
        }),
        { minLength: 1, maxLength: 4 },
      ),
      (spec) => {
        const groups: Group[] = spec.map((g) => ({
          promptId: g.promptId,
          partial: false,
          ts: 0,
          rollouts: g.rollouts.map((r) => ({
            id: r.id,
            promptId: g.promptId,
            rewards: { acc: r.acc, c: r.c },
            ...(r.payload === undefined ? {} : { payload: r.payload }),
          })),
        }))
        const batch = scored(groups)
        return sameOnTheWire(batch)
      },
    ),
    { numRuns: 60 },
  )
  t.end()
})

t.test('array headers for 16 and 65,536 rollouts; ids of 70,000 characters', (t) => {
  for (const [n, id] of [
    [16, 'r'],
    [65536, 'r'],
    [2, 'x'.repeat(70_000)],
  ] as const) {
    const groups: Group[] = [
      {
        promptId: 'p',
        partial: false,
        ts: 0,
        rollouts: Array.from({ length: n }, (_, i) => ({ id: `${id}${i}`, promptId: 'p', rewards: { acc: i % 2, c: 1 } })),
      },
    ]
    const batch = scored(groups)
    const decoded = wireUnpackr.unpack(encodeBatchForTrainer(batch)) as { rollouts: unknown[] }
    t.equal(decoded.rollouts.length, n)
    t.equal(JSON.stringify(decoded), JSON.stringify(toOutbox(batch)))
  }
  t.end()
})

t.test('a payload key __proto__ (legal JSON) goes out verbatim; msgpackr decoders rename it on both sides alike', (t) => {
  const payload = JSON.parse('{"__proto__":0,"text":"ok"}') as unknown
  const batch = scored([
    {
      promptId: 'p',
      partial: false,
      ts: 0,
      rollouts: [
        { id: 'a', promptId: 'p', rewards: { acc: 1, c: 1 }, payload },
        { id: 'b', promptId: 'p', rewards: { acc: 0, c: 1 } },
      ],
    },
  ])
  const bytes = encodeBatchForTrainer(batch)
  t.ok(Buffer.from(bytes).includes(Buffer.from('\xa9__proto__', 'latin1')), 'the key is in the bytes as sent, for decoders that keep it')
  t.ok(sameOnTheWire(batch))
  t.end()
})

t.test('payloads from the wire: logged ones by reference, spliced back at delivery into exactly the bytes of the same batch given as values', (t) => {
  fc.assert(
    fc.property(
      fc.array(fc.record({ payload: fc.option(fc.jsonValue(), { nil: undefined }), logged: fc.boolean() }), { minLength: 1, maxLength: 12 }),
      fc.nat(40),
      (spec, padding) => {
        // one frame holds every payload, after some padding; the log has it at entry 7
        const packed = spec.map((s) => (s.payload === undefined ? undefined : Buffer.from(wirePackr.pack(s.payload))))
        const frame = Buffer.concat([Buffer.alloc(padding, 0xc0), ...packed.filter((p) => p !== undefined)])
        let at = padding
        const rollouts = spec.map((s, i) => {
          const rollout: Rollout = { id: `r${i}`, promptId: 'p', rewards: { acc: i % 2, c: 1 } }
          const bytes = packed[i]
          if (bytes === undefined) return rollout
          const raw = new RawPayload(frame.subarray(at, at + bytes.length))
          at += bytes.length
          if (s.logged) {
            raw.logged(7, frame)
            raw.release()
          }
          rollout.payload = raw
          return rollout
        })
        const asValues = rollouts.map((r, i) => (r.payload === undefined ? r : { ...r, payload: spec[i].payload }))
        const record = encodeBatchForTrainer(scored([{ promptId: 'p', partial: false, ts: 0, rollouts }]))
        const reference = encodeBatchForTrainer(scored([{ promptId: 'p', partial: false, ts: 0, rollouts: asValues }]))
        const reads: number[] = []
        const assembled = assembleBatch(record, (entry) => (reads.push(entry), frame))
        const references = spec.filter((s) => s.logged && s.payload !== undefined).length
        if (references === 0)
          t.equal(
            record,
            assembleBatch(record, () => t.fail('nothing to read') as never),
            'a record without references is the batch',
          )
        t.ok(reads.length <= 1, 'each log entry read once per batch')
        t.equal(record.length < reference.length + 5 + 20 * references, true)
        return Buffer.compare(Buffer.from(assembled), reference) === 0
      },
    ),
    { numRuns: 200 },
  )
  t.end()
})

t.test('a record whose reference lies outside its log entry is refused, saying where; a payload must be a view of its frame', (t) => {
  const frame = Buffer.from(wirePackr.pack({ text: 'hello' }))
  const raw = new RawPayload(frame.subarray(0))
  raw.logged(3, frame)
  raw.release()
  const record = encodeBatchForTrainer(
    scored([{ promptId: 'p', partial: false, ts: 0, rollouts: [{ id: 'a', promptId: 'p', rewards: { acc: 1, c: 1 }, payload: raw }] }]),
  )
  t.throws(() => assembleBatch(record, () => frame.subarray(0, 3)), /a payload of the batch lies outside its log entry 3 \(0 \+ 14 > 3 bytes\)/)
  t.throws(() => new RawPayload(new Uint8Array([1])).logged(5, new Uint8Array([1])), /a payload logged at seq 5 is not a view of its frame/)
  const released = new RawPayload(frame)
  released.release()
  t.ok(released.bytes, 'not released before it is logged')
  t.end()
})
