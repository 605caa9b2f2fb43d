import fc from 'fast-check'
import t from 'tap'
import { parseConfig, type Normalize } from '../../src/core/config.js'
import { computeAdvantages, senseSign } from '../../src/math/advantages.js'
import { cellArb, channelOn, close, columnsOf, GRPO, normalizeArb, shapeArb } from '../support/batches.js'
import { referenceAdvantages, referenceNormalize, type Cell } from '../support/reference.js'

const settingsArb = fc.record({
  aggregation: fc.constantFrom('normalize-then-sum' as const, 'sum-then-normalize' as const),
  scaleByLambda: fc.boolean(),
  whiten: fc.constantFrom('none' as const, 'batch' as const),
  normalize: normalizeArb,
  weight: fc.constantFrom(1, 0.5, 2),
  senses: fc.tuple(fc.constantFrom('>=' as const, '<=' as const), fc.constantFrom('>=' as const, '<=' as const)),
  lambdas: fc.tuple(fc.constantFrom(0, 0.3, 1, 5), fc.constantFrom(0, 0.7)),
  overrides: fc.tuple(fc.option(normalizeArb, { nil: undefined }), fc.option(normalizeArb, { nil: undefined })),
})

t.test('agrees with the slow float64 reference: both aggregations, λ scaling, whitening, per-channel normalisation', (t) => {
  fc.assert(
    fc.property(
      shapeArb.chain((shape) => fc.tuple(channelOn(shape, cellArb), channelOn(shape, cellArb), channelOn(shape, cellArb), settingsArb)),
      ([acc, cons, cost, s]) => {
        const objectives = [{ channel: 'acc', weight: s.weight, normalize: s.normalize }]
        const constraints = [
          { channel: 'cons', sense: s.senses[0], norm: s.overrides[0] ?? s.normalize, lambda: s.lambdas[0], groups: cons },
          { channel: 'cost', sense: s.senses[1], norm: s.overrides[1] ?? s.normalize, lambda: s.lambdas[1], groups: cost },
        ]
        const config = {
          aggregation: s.aggregation,
          scaleByLambda: s.scaleByLambda,
          whiten: s.whiten,
          normalize: s.normalize,
          objectives,
          constraints: constraints.map((c) => ({
            channel: c.channel,
            sense: c.sense,
            threshold: 0.5,
            sampleThreshold: 0.5,
            window: 1,
            normalize: c.norm,
            dual: { rule: 'sgd' as const, lr: 1, init: 0, max: 10 },
          })),
        }
        const ours = computeAdvantages(columnsOf({ acc, cons, cost }), config, { cons: s.lambdas[0], cost: s.lambdas[1] })
        const ref = referenceAdvantages(
          [
            { groups: acc, coefficient: s.weight, normalize: s.normalize },
            ...constraints.map((c) => ({ groups: c.groups, coefficient: senseSign(c.sense) * c.lambda, normalize: c.norm })),
          ],
          { aggregation: s.aggregation, lambdaSum: s.lambdas[0] + s.lambdas[1], scaleByLambda: s.scaleByLambda, whiten: s.whiten, normalize: s.normalize },
        )
        t.equal(ours.fracZeroStd.cons, referenceNormalize(cons, constraints[0].norm).silent / acc.length)
        return Array.from(ours.advantages).every((a, i) => Number.isFinite(a) && close(a, ref[i], 1e-7))
      },
    ),
    { numRuns: 400 },
  )
  t.end()
})

t.test('GRPO settings (one objective, no constraints) give (r − mean)/(std + eps) per group', (t) => {
  const config = parseConfig({ groupSize: 4, batchGroups: 2, objectives: [{ channel: 'accuracy' }] })
  const groups: Cell[][] = [
    [1, 0, 0, 0],
    [1, 1, 0, 1],
  ]
  const { advantages, fracZeroStd } = computeAdvantages(columnsOf({ accuracy: groups }), config, {})
  groups.forEach((g, gi) => {
    const xs = g as number[]
    const m = xs.reduce((a, b) => a + b) / xs.length
    const s = Math.sqrt(xs.reduce((a, x) => a + (x - m) ** 2, 0) / (xs.length - 1))
    xs.forEach((x, i) => t.ok(close(advantages[gi * 4 + i], (x - m) / (s + 1e-6), 1e-12)))
  })
  t.same(fracZeroStd, { accuracy: 0 })
  t.end()
})

t.test('normalize-then-sum: A = Σ w·Â_obj + Σ σ·λ·Â_k; a "<=" constraint is a cost', (t) => {
  const config = parseConfig({
    groupSize: 2,
    batchGroups: 1,
    objectives: [{ channel: 'acc', weight: 2 }],
    constraints: [{ channel: 'len', sense: '<=', threshold: 10, dual: { rule: 'sgd', lr: 0.1 } }],
  })
  const { advantages } = computeAdvantages(columnsOf({ acc: [[1, 0]], len: [[20, 5]] }), config, { len: 0.5 })
  t.ok(close(advantages[0], 2 * 0.7071067 - 0.5 * 0.7071067, 1e-5))
  t.ok(close(advantages[1], -2 * 0.7071067 + 0.5 * 0.7071067, 1e-5))
  t.end()
})

t.test('a channel nobody scored yields zero advantages and is reported silent', (t) => {
  const config = parseConfig({
    groupSize: 2,
    batchGroups: 1,
    objectives: [{ channel: 'acc' }],
    constraints: [{ channel: 'judge', sense: '>=', threshold: 0.9, dual: { rule: 'sgd', lr: 0.1 } }],
  })
  const both = ['normalize-then-sum', 'sum-then-normalize'] as const
  for (const aggregation of both) {
    const result = computeAdvantages(columnsOf({ acc: [[1, 0]] }), { ...config, aggregation }, { judge: 1 })
    t.same(result.fracZeroStd, { acc: 0, judge: 1 }, aggregation)
    t.same(Array.from(result.advantages), aggregation === 'normalize-then-sum' ? [0.5 / (Math.SQRT1_2 + 1e-6), -0.5 / (Math.SQRT1_2 + 1e-6)] : [0, 0])
  }
  const empty = computeAdvantages({ offsets: Int32Array.of(0), columns: {} }, config, {})
  t.same(empty, { advantages: new Float64Array(0), fracZeroStd: { acc: 0, judge: 0 } })
  t.end()
})

t.test('whitening a flat batch gives zeros, never NaN', (t) => {
  const normalize: Normalize = { ...GRPO, minStd: 0, eps: 0 }
  const config = parseConfig({ groupSize: 2, batchGroups: 2, whiten: 'batch', normalize, objectives: [{ channel: 'acc' }] })
  const { advantages } = computeAdvantages(
    columnsOf({
      acc: [
        [1, 1],
        [0, 0],
      ],
    }),
    config,
    {},
  )
  t.same(Array.from(advantages), [0, 0, 0, 0])
  t.end()
})

t.test('batches of any size, one after another, agree with the reference (the scratch column is reused and grown)', (t) => {
  const config = parseConfig({
    groupSize: 8,
    batchGroups: 1,
    objectives: [{ channel: 'acc' }],
    constraints: [{ channel: 'cons', sense: '>=', threshold: 0.9, dual: { rule: 'sgd', lr: 0.1 } }],
  })
  let seed = 7
  const random = () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 4294967296
  for (const groups of [300, 2, 1000, 5]) {
    const acc: Cell[][] = Array.from({ length: groups }, () => Array.from({ length: 8 }, () => (random() < 0.5 ? 1 : 0)))
    const cons: Cell[][] = Array.from({ length: groups }, () => Array.from({ length: 8 }, () => (random() < 0.1 ? null : random())))
    const ours = computeAdvantages(columnsOf({ acc, cons }), config, { cons: 0.4 })
    const ref = referenceAdvantages(
      [
        { groups: acc, coefficient: 1, normalize: config.normalize },
        { groups: cons, coefficient: 0.4, normalize: config.normalize },
      ],
      { aggregation: 'normalize-then-sum', lambdaSum: 0.4, scaleByLambda: false, whiten: 'none', normalize: config.normalize },
    )
    t.equal(ours.advantages.length, groups * 8)
    t.ok(
      Array.from(ours.advantages).every((a, i) => close(a, ref[i], 1e-9)),
      `${groups} groups`,
    )
  }
  t.end()
})
