import fc from 'fast-check'
import t from 'tap'
import { wirePackr, wireUnpackr } from '../../src/state/codec.js'
import { parseConfig } from '../../src/core/config.js'
import { encodeBatchForTrainer } from '../../src/state/outboxEncoder.js'
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
