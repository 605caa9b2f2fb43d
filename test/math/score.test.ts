import t from 'tap'
import fc from 'fast-check'
import { parseConfig } from '../../src/core/config.js'
import { batchColumns } from '../../src/math/columns.js'
import { describe } from '../../src/core/describe.js'
import { initialDualState } from '../../src/math/dual.js'
import { measureBatch, scoreGroups, stepBatch } from '../../src/math/score.js'
import type { Group } from '../../src/core/types.js'

const group = (promptId: string, rewards: Record<string, number | null>[]): Group => ({
  promptId,
  partial: false,
  ts: 0,
  rollouts: rewards.map((r, i) => ({ id: `${promptId}-${i}`, promptId, rewards: r })),
})

const config = parseConfig({
  groupSize: 2,
  batchGroups: 2,
  objectives: [{ channel: 'acc' }],
  constraints: [{ channel: 'cons', sense: '>=', threshold: 0.95, sampleThreshold: 0.5, dual: { rule: 'sgd', lr: 0.05, max: 10 } }],
})

t.test('one step: measure, update λ, then advantages with the updated λ', (t) => {
  const groups = [
    group('p', [
      { acc: 1, cons: 1 },
      { acc: 0, cons: 0 },
    ]),
    group('q', [
      { acc: 1, cons: 1 },
      { acc: 1, cons: null },
    ]),
  ]
  const state = initialDualState(config.constraints)
  const result = scoreGroups(groups, config, state)
  t.equal(result.step, 1)
  t.same(result.constraints.cons, { mean: 2 / 3, violation: 0.95 - 2 / 3, sampleViolationRate: 1 / 3, count: 3 })
  const lambda = 0.05 * (0.95 - 2 / 3)
  t.same(result.lambda, { cons: { before: 0, after: lambda } })
  const a = 0.5 / (Math.SQRT1_2 + 1e-6)
  t.same(Array.from(result.advantages), [a + lambda * a, -a - lambda * a, 0, 0])
  t.same(result.fracZeroStd, { acc: 0.5, cons: 0.5 })
  t.same(result.objectiveMeans, { acc: 0.75 })
  t.equal(result.rolloutCount, 4)
  t.equal(result.advantageMean, 0)
  t.ok(result.advantageStd > 0)
  t.equal(state.step, 0, 'pure: the input state is untouched')
  t.end()
})

t.test('an empty batch and a constraint with no saved window', (t) => {
  const result = scoreGroups([], config, initialDualState(config.constraints))
  t.equal(result.rolloutCount, 0)
  t.ok(Number.isNaN(result.advantageMean))
  t.same(result.lambda, { cons: { before: 0, after: 0 } }, 'no data holds λ')
  const measured = measureBatch({ offsets: Int32Array.of(0, 1), columns: {} }, config, { step: 0, constraints: {} })
  t.equal(measured.constraints.cons.count, 0)
  t.end()
})

t.test('a non-finite reward from a user step upstream is an error naming the rollout and channel', (t) => {
  t.throws(() => batchColumns([group('p', [{ acc: NaN }])], ['acc']), {
    name: 'RangeError',
    message: 'rollout "p-0" (prompt "p"): rewards.acc is NaN, expected a finite number or null',
  })
  const bad = group('p', [{ acc: 1 }])
  ;(bad.rollouts[0].rewards as Record<string, unknown>).acc = 'yes'
  t.throws(() => batchColumns([bad], ['acc']), { message: /rewards\.acc is the string "yes"/ })
  t.equal(describe({}), 'a map')
  t.equal(describe(null), 'null')
  t.end()
})

t.test('stepBatch is the step as a reducer: the next state and the figures a scored batch carries', (t) => {
  const windowed = parseConfig({
    groupSize: 2,
    batchGroups: 1,
    objectives: [{ channel: 'acc' }],
    constraints: [{ channel: 'cons', sense: '>=', threshold: 0.95, window: 2, dual: { rule: 'pid', delay: 2 } }],
  })
  const batches = [
    [
      group('p', [
        { acc: 1, cons: 1 },
        { acc: 0, cons: 0 },
      ]),
    ],
    [
      group('q', [
        { acc: 0, cons: 1 },
        { acc: 1, cons: 1 },
      ]),
    ],
  ]
  const start = initialDualState(windowed.constraints)
  const before = structuredClone({ start, batches })
  const first = stepBatch(start, batches[0], windowed)
  const second = stepBatch(first.state, batches[1], windowed)
  t.equal(first.state, first.figures.dualState, 'the state carried on is the one the figures report')
  t.same([first.figures.step, second.figures.step], [1, 2])
  t.same(
    second.figures.windows,
    {
      cons: [
        { sum: 1, count: 2 },
        { sum: 2, count: 2 },
      ],
    },
    'the window is carried in the state',
  )
  t.equal(second.figures.constraints.cons.mean, 3 / 4, 'and pooled from it')
  t.same(second.figures.columns.columns.acc, Float64Array.of(0, 1))
  t.equal(second.figures.lambda.cons.before, first.figures.lambda.cons.after)
  t.same({ start, batches }, before, 'pure: neither the state nor the groups are modified')
  const { columns: _columns, windows: _windows, ...withoutColumns } = second.figures
  t.same(scoreGroups(batches[1], windowed, first.state), withoutColumns, 'scoreGroups is the same step, without the columns and windows')
  t.same(
    Object.keys(first.figures),
    [
      'constraints',
      'columns',
      'windows',
      'step',
      'lambda',
      'dualState',
      'advantages',
      'fracZeroStd',
      'objectiveMeans',
      'advantageMean',
      'advantageStd',
      'rolloutCount',
    ],
    'in the order a scored batch carries them',
  )
  t.throws(
    () => stepBatch({ step: 0, constraints: { cons: { controller: { rule: 'sgd', lambda: 0 }, window: [] } } }, batches[0], windowed),
    TypeError,
    'a state of another rule',
  )
  t.end()
})

/** `groups` with their rewards as columns shared between them (as a cluster's GROUPS decoder gives them), `values[channel]` offset by `lead` padding values. */
function withColumns(groups: readonly Group[], channels: readonly string[], lead: number): Group[] {
  const n = groups.reduce((sum, g) => sum + g.rollouts.length, 0)
  const values: Record<string, Float64Array> = {}
  for (const channel of channels) {
    const column = new Float64Array(lead + n).fill(7)
    let i = lead
    for (const g of groups) for (const r of g.rollouts) column[i++] = r.rewards[channel] ?? NaN
    values[channel] = column
  }
  let start = lead
  return groups.map((g) => {
    const rewardColumns = { values, start, size: g.rollouts.length }
    start += g.rollouts.length
    return { ...g, rewardColumns }
  })
}

t.test('property: groups with reward columns lay out exactly as their rollouts do', (t) => {
  const reward = fc.oneof(fc.double({ noNaN: true, noDefaultInfinity: true }), fc.constant(null))
  const groupsArb = fc.array(
    fc.array(fc.record({ acc: reward, cons: reward }), { minLength: 1, maxLength: 5 }).map((rewards) => rewards),
    { maxLength: 6 },
  )
  fc.assert(
    fc.property(groupsArb, fc.nat(3), (rewardsByGroup, lead) => {
      const groups = rewardsByGroup.map((rewards, k) => group(`p${k}`, rewards))
      const plain = batchColumns(groups, ['acc', 'cons'])
      const columnar = batchColumns(withColumns(groups, ['acc', 'cons'], lead), ['acc', 'cons'])
      t.same([...columnar.offsets], [...plain.offsets])
      for (const channel of ['acc', 'cons']) t.same([...columnar.columns[channel]], [...plain.columns[channel]], channel)
    }),
    { numRuns: 200 },
  )
  t.end()
})

t.test('reward columns: an infinite value is the same error, naming the rollout; a channel they lack is read from the rollouts', (t) => {
  const groups = [group('p', [{ acc: 1 }, { acc: 0 }]), group('q', [{ acc: 1 }, { acc: 1 }])]
  const columnar = withColumns(groups, ['acc'], 0)
  columnar[1].rewardColumns!.values.acc[3] = Infinity
  t.throws(() => batchColumns(columnar, ['acc']), {
    name: 'RangeError',
    message: 'rollout "q-1" (prompt "q"): rewards.acc is Infinity, expected a finite number or null',
  })
  // columns of acc only: cons comes from the rollouts, and the sizes from them too
  const mixed = withColumns(
    [
      group('p', [
        { acc: 1, cons: 0 },
        { acc: 0, cons: 1 },
      ]),
    ],
    ['acc'],
    2,
  )
  const laid = batchColumns(mixed, ['acc', 'cons'])
  t.same([...laid.offsets], [0, 2])
  t.same([...laid.columns.acc], [1, 0])
  t.same([...laid.columns.cons], [0, 1])
  t.same([...batchColumns(mixed, []).offsets], [0, 2], 'no channels: the rollouts give the sizes')
  t.end()
})
