import t from 'tap'
import { isDeepStrictEqual } from 'node:util'
import fc from 'fast-check'
import { defer, from, map, retry, toArray, type Observable } from 'rxjs'
import { dualAscent } from '../../operators/dualAscent.js'
import { groupAdvantages } from '../../operators/groupAdvantages.js'
import { measureConstraints } from '../../operators/measureConstraints.js'
import { scoreBatches } from '../../operators/scoreBatches.js'
import { parseConfig, type Config, type ConfigInput } from '../../src/core/config.js'
import type { Batch, DualState, Group, ScoredBatch } from '../../src/core/types.js'
import { initialDualState } from '../../src/math/dual.js'
import { stepBatch } from '../../src/math/score.js'
import { fgrpoConfig } from './fixtures/config.js'
import { boom, group, HALF_OVER_STD as H, referenceGroups, rollout, scheduler } from './fixtures/helpers.js'

const batchOf = (groups: Group[], ts = 0): Batch => ({ groups, ts, reason: 'full' })
/** A batch of one group whose consistency values are given (acc alternating 1, 0). */
const consistencyBatch = (...values: (number | null)[]): Batch =>
  batchOf([
    group(
      'p',
      0,
      values.map((consistency, i) => rollout(`c${i}`, 'p', { rewards: { acc: (i + 1) % 2, consistency } })),
    ),
  ])

/** Sample std of values whose mean is 0, summed in order as the two-pass formula does. */
const sampleStdAroundZero = (xs: number[]) => Math.sqrt(xs.reduce((s, x) => s + x * x, 0) / (xs.length - 1))

/** The same batches through the three stage operators, each given the same initial state. */
function threeStages(config: Config, initialState?: DualState) {
  return (source: Observable<Batch>) => source.pipe(measureConstraints(config, { initialState }), dualAscent(config, { initialState }), groupAdvantages(config))
}

/** Collects a synchronous stream's values. */
function collect<T>(source: Observable<T>): T[] {
  let out: T[] = []
  source.pipe(toArray()).subscribe((values) => (out = values))
  return out
}

t.test('one whole step per batch: measure, update λ, then the advantages with the updated λ', (t) => {
  const testScheduler = scheduler(t)
  const config = fgrpoConfig()
  const λ = 0.05 * (0.9 - 0.75)
  // acc: p1 {1, 0} → ±H, p2 {0, 1} → ∓H; consistency: p1 {1, 0} → ±H, p2 {1, 1} is flat → 0
  const advantages = [H + λ * H, -H + λ * -H, -H, H]
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const input = batchOf(referenceGroups(), 7)
    const source = cold('-b-|', { b: input })
    const window = [{ sum: 3, count: 4 }]
    const expected: ScoredBatch = {
      ...input,
      constraints: { consistency: { mean: 0.75, violation: 0.9 - 0.75, sampleViolationRate: 0.25, count: 4 } },
      columns: { offsets: Int32Array.of(0, 2, 4), columns: { acc: Float64Array.of(1, 0, 0, 1), consistency: Float64Array.of(1, 0, 1, 1) } },
      windows: { consistency: window },
      step: 1,
      lambda: { consistency: { before: 0, after: λ } },
      dualState: { step: 1, constraints: { consistency: { controller: { rule: 'sgd', lambda: λ }, window } } },
      advantages: Float64Array.from(advantages),
      fracZeroStd: { acc: 0, consistency: 0.5 },
      objectiveMeans: { acc: 0.5 },
      advantageMean: 0,
      advantageStd: sampleStdAroundZero(advantages),
      rolloutCount: 4,
    }
    expectObservable(source.pipe(scoreBatches(config))).toBe('-s-|', { s: expected })
    expectSubscriptions(source.subscriptions).toBe('^--!')
  })
  t.end()
})

t.test('the dual state is carried from batch to batch: steps, λ and the pooled window', (t) => {
  const testScheduler = scheduler(t)
  const config = fgrpoConfig({
    constraints: [{ channel: 'consistency', sense: '>=', threshold: 0.9, sampleThreshold: 0.5, window: 2, dual: { rule: 'sgd', lr: 0.05 } }],
  })
  testScheduler.run(({ cold, expectObservable }) => {
    const result = cold('a-b-c|', { a: consistencyBatch(1, 0, 1, 1), b: consistencyBatch(0, 0), c: consistencyBatch(1, 1) }).pipe(
      scoreBatches(config),
      map((s) => [s.step, s.constraints.consistency.mean, s.lambda.consistency, s.dualState.constraints.consistency.window.length]),
    )
    const λ1 = 0.05 * (0.9 - 0.75)
    // J pools the last two batches: (3 + 0) / (4 + 2), then (0 + 2) / (2 + 2)
    const λ2 = λ1 + 0.05 * (0.9 - 0.5)
    const λ3 = λ2 + 0.05 * (0.9 - 0.5)
    expectObservable(result).toBe('x-y-z|', {
      x: [1, 0.75, { before: 0, after: λ1 }, 1],
      y: [2, 0.5, { before: λ1, after: λ2 }, 2],
      z: [3, 0.5, { before: λ2, after: λ3 }, 2],
    })
  })
  t.end()
})

t.test('without constraints it numbers the batches and scores plain GRPO advantages', (t) => {
  const testScheduler = scheduler(t)
  const grpo = parseConfig({ groupSize: 2, batchGroups: 1, objectives: [{ channel: 'acc' }] })
  testScheduler.run(({ cold, expectObservable }) => {
    const result = cold('aa|', { a: batchOf(referenceGroups()) }).pipe(
      scoreBatches(grpo),
      map((s) => [s.step, s.lambda, s.dualState, Array.from(s.advantages)]),
    )
    const x = (step: number) => [step, {}, { step, constraints: {} }, [H, -H, -H, H]]
    expectObservable(result).toBe('xy|', { x: x(1), y: x(2) })
  })
  t.end()
})

t.test('restoring from an initialState continues the step count, λ and the windows', (t) => {
  const testScheduler = scheduler(t)
  const config = fgrpoConfig({
    constraints: [{ channel: 'consistency', sense: '>=', threshold: 0.9, sampleThreshold: 0.5, window: 2, dual: { rule: 'sgd', lr: 0.05 } }],
  })
  const initialState: DualState = { step: 41, constraints: { consistency: { controller: { rule: 'sgd', lambda: 0.3 }, window: [{ sum: 0, count: 4 }] } } }
  const saved = structuredClone(initialState)
  testScheduler.run(({ cold, expectObservable }) => {
    const result = cold('ab|', { a: consistencyBatch(1, 0, 1, 1), b: consistencyBatch(1, 1) }).pipe(
      scoreBatches(config, { initialState }),
      map((s) => [s.step, s.constraints.consistency.mean, s.lambda.consistency]),
    )
    // J pools the saved window: (0 + 3) / (4 + 4), then (3 + 2) / (4 + 2)
    const λ1 = 0.3 + 0.05 * (0.9 - 3 / 8)
    const λ2 = λ1 + 0.05 * (0.9 - 5 / 6)
    expectObservable(result).toBe('xy|', { x: [42, 3 / 8, { before: 0.3, after: λ1 }], y: [43, 5 / 6, { before: λ1, after: λ2 }] })
  })
  t.same(initialState, saved, 'the initial state is not modified')
  t.end()
})

t.test('refuses an initialState that does not fit the config, listing every problem', (t) => {
  const config = parseConfig({
    groupSize: 2,
    batchGroups: 1,
    objectives: [{ channel: 'acc' }],
    constraints: [
      { channel: 'consistency', sense: '>=', threshold: 0.9, dual: { rule: 'sgd', lr: 0.05 } },
      { channel: 'grounding', sense: '>=', threshold: 0.9, dual: { rule: 'pid', delay: 3 } },
    ],
  })
  const initialState: DualState = {
    step: 3,
    constraints: {
      consistency: { controller: { rule: 'log', logLambda: 0, lambda: 1 }, window: [] },
      retired: { controller: { rule: 'sgd', lambda: 0 }, window: [] },
    },
  }
  t.throws(() => scoreBatches(config, { initialState }), {
    message: [
      'scoreBatches: the initial state does not fit the config:',
      '  constraint "consistency": saved state is for rule "log", config says "sgd"',
      '  constraint "grounding": no saved dual state',
      '  constraint "retired": in the saved state, not in the config',
    ].join('\n'),
  })
  t.end()
})

t.test('a non-finite reward produced by a user step upstream errors the stream with the rollout id and channel', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const good = batchOf(referenceGroups())
    const [g1, g2] = referenceGroups()
    const [r3, r4] = g2.rollouts
    // a user's judge that divided by zero for r3
    const bad = batchOf([g1, { ...g2, rollouts: [{ ...r3, rewards: { ...r3.rewards, consistency: 0 / 0 } }, r4] }])
    const source = cold('a-b-a|', { a: good, b: bad })
    const expected = new RangeError('rollout "r3" (prompt "p2"): rewards.consistency is NaN, expected a finite number or null')
    expectObservable(
      source.pipe(
        scoreBatches(fgrpoConfig()),
        map((s) => s.step),
      ),
    ).toBe('a-#', { a: 1 }, expected)
    expectSubscriptions(source.subscriptions).toBe('^-!')
  })
  t.end()
})

t.test('a source error passes through', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const source = cold<Batch>('-a-#', { a: batchOf(referenceGroups()) }, boom)
    expectObservable(
      source.pipe(
        scoreBatches(fgrpoConfig()),
        map((s) => s.step),
      ),
    ).toBe('-s-#', { s: 1 }, boom)
    expectSubscriptions(source.subscriptions).toBe('^--!')
  })
  t.end()
})

t.test('empty and never sources', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const empty = cold<Batch>('|')
    expectObservable(empty.pipe(scoreBatches(fgrpoConfig()))).toBe('|')
    expectSubscriptions(empty.subscriptions).toBe('(^!)')
    const never = cold<Batch>('-')
    expectObservable(never.pipe(scoreBatches(fgrpoConfig()))).toBe('-')
    expectSubscriptions(never.subscriptions).toBe('^')
  })
  t.end()
})

t.test('an early unsubscribe reaches the source', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const source = cold('-a--a-|', { a: batchOf(referenceGroups()) })
    expectObservable(
      source.pipe(
        scoreBatches(fgrpoConfig()),
        map((s) => s.step),
      ),
      '^---!',
    ).toBe('-s---', { s: 1 })
    expectSubscriptions(source.subscriptions).toBe('^---!')
  })
  t.end()
})

t.test('state is released: a re-subscription starts again from the initial state', (t) => {
  const testScheduler = scheduler(t)
  const config = fgrpoConfig({
    constraints: [{ channel: 'consistency', sense: '>=', threshold: 0.9, window: 3, dual: { rule: 'sgd', lr: 0.05 } }],
  })
  const initialState: DualState = { step: 9, constraints: { consistency: { controller: { rule: 'sgd', lambda: 0.2 }, window: [] } } }
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const first = cold('a#', { a: consistencyBatch(0, 0) }, boom)
    const second = cold('b|', { b: consistencyBatch(1, 1) })
    let n = 0
    const source = defer(() => (n++ === 0 ? first : second))
    const result = source.pipe(
      scoreBatches(config, { initialState }),
      retry(1),
      map((s) => [s.step, s.lambda.consistency.before, s.constraints.consistency.mean]),
    )
    // carried over from the failed subscription it would be step 11, λ moved, J pooled to 0.5
    expectObservable(result).toBe('xy|', { x: [10, 0.2, 0], y: [10, 0.2, 1] })
    expectSubscriptions(first.subscriptions).toBe('^!')
    expectSubscriptions(second.subscriptions).toBe('-^!')
  })
  t.end()
})

t.test('property: folding batches through the operator = folding them through stepBatch = the three stages, resumed mid-run or not', (t) => {
  const reward = fc.constantFrom(0, 1, 0.25, 0.5, null)
  const rolloutArb = fc.record({ acc: reward, consistency: reward, cost: reward })
  const groupArb = fc.array(rolloutArb, { minLength: 1, maxLength: 4 })
  const batchesArb = fc.array(fc.array(groupArb, { minLength: 0, maxLength: 4 }), { minLength: 1, maxLength: 8 })
  const dualArb = fc.oneof(
    fc.record({ rule: fc.constant('sgd' as const), lr: fc.constantFrom(0.05, 0.5, 2) }),
    fc.record({ rule: fc.constant('log' as const), lr: fc.constantFrom(0.1, 1) }),
    fc.record({ rule: fc.constant('pid' as const), delay: fc.integer({ min: 1, max: 3 }) }),
  )
  const configArb = fc.record({
    consistency: dualArb,
    cost: dualArb,
    window: fc.integer({ min: 1, max: 3 }),
    aggregation: fc.constantFrom('normalize-then-sum' as const, 'sum-then-normalize' as const),
    scaleByLambda: fc.boolean(),
    whiten: fc.constantFrom('none' as const, 'batch' as const),
  })

  fc.assert(
    fc.property(configArb, batchesArb, fc.nat(), (c, shapes, cut) => {
      const input: ConfigInput = {
        groupSize: 4,
        batchGroups: 4,
        objectives: [{ channel: 'acc' }],
        constraints: [
          { channel: 'consistency', sense: '>=', threshold: 0.8, sampleThreshold: 0.5, window: c.window, dual: c.consistency },
          { channel: 'cost', sense: '<=', threshold: 0.3, dual: c.cost },
        ],
        aggregation: c.aggregation,
        scaleByLambda: c.scaleByLambda,
        whiten: c.whiten,
      }
      const config = parseConfig(input)
      const batches: Batch[] = shapes.map((groups, b) =>
        batchOf(
          groups.map((rollouts, g) =>
            group(
              `p${b}-${g}`,
              b,
              rollouts.map((rewards, i) => rollout(`r${b}-${g}-${i}`, `p${b}-${g}`, { rewards })),
            ),
          ),
          b,
        ),
      )

      // the pure fold
      let state = initialDualState(config.constraints)
      const folded: ScoredBatch[] = batches.map((batch) => {
        const step = stepBatch(state, batch.groups, config)
        state = step.state
        return { ...batch, ...step.figures }
      })
      const operator = collect(from(batches).pipe(scoreBatches(config)))
      const stages = collect(from(batches).pipe(threeStages(config)))

      // a restart after `k` batches from the dual state the k-th one carried
      const k = cut % (batches.length + 1)
      const saved = k === 0 ? undefined : operator[k - 1].dualState
      const resumed = [...operator.slice(0, k), ...collect(from(batches.slice(k)).pipe(scoreBatches(config, { initialState: saved })))]
      const resumedStages = [...stages.slice(0, k), ...collect(from(batches.slice(k)).pipe(threeStages(config, saved)))]

      return (
        operator.length === batches.length &&
        isDeepStrictEqual(operator, folded) &&
        isDeepStrictEqual(stages, folded) &&
        isDeepStrictEqual(resumed, folded) &&
        isDeepStrictEqual(resumedStages, folded)
      )
    }),
    { numRuns: 300 },
  )
  t.pass('held for 300 random configs and streams of batches')
  t.end()
})
