import t from 'tap'
import { defer, map, retry } from 'rxjs'
import { measureConstraints } from '../../operators/measureConstraints.js'
import { parseConfig } from '../../src/core/config.js'
import type { Batch, DualState, Group, MeasuredBatch } from '../../src/core/types.js'
import { fgrpoConfig } from './fixtures/config.js'
import { boom, group, referenceGroups, rollout, scheduler } from './fixtures/helpers.js'

const batchOf = (groups: Group[], ts = 0): Batch => ({ groups, ts, reason: 'full' })
/** A batch of one group whose consistency values are given (acc 1 throughout). */
const consistencyBatch = (...values: (number | null)[]): Batch =>
  batchOf([
    group(
      'p',
      0,
      values.map((consistency, i) => rollout(`c${i}`, 'p', { rewards: { acc: 1, consistency } })),
    ),
  ])

t.test('measures J, the violation and the per-sample violation rate, and lays the batch out as columns', (t) => {
  const testScheduler = scheduler(t)
  const config = fgrpoConfig()
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const input = batchOf(referenceGroups(), 7)
    const source = cold('-b-|', { b: input })
    const expected: MeasuredBatch = {
      ...input,
      constraints: { consistency: { mean: 0.75, violation: 0.9 - 0.75, sampleViolationRate: 0.25, count: 4 } },
      columns: {
        offsets: Int32Array.of(0, 2, 4),
        columns: { acc: Float64Array.of(1, 0, 0, 1), consistency: Float64Array.of(1, 0, 1, 1) },
      },
      windows: { consistency: [{ sum: 3, count: 4 }] },
    }
    expectObservable(source.pipe(measureConstraints(config))).toBe('-m-|', { m: expected })
    expectSubscriptions(source.subscriptions).toBe('^--!')
  })
  t.end()
})

t.test("'<=' constraints, unscored values left out, and a batch with no value for a channel", (t) => {
  const testScheduler = scheduler(t)
  const config = parseConfig({
    groupSize: 2,
    batchGroups: 1,
    objectives: [{ channel: 'acc' }],
    constraints: [
      { channel: 'cost', sense: '<=', threshold: 0.2, dual: { rule: 'sgd', lr: 0.1 } },
      { channel: 'unscored', sense: '>=', threshold: 0.5, dual: { rule: 'sgd', lr: 0.1 } },
    ],
  })
  testScheduler.run(({ cold, expectObservable }) => {
    const input = batchOf([
      group('p1', 0, [rollout('a', 'p1', { rewards: { acc: 1, cost: 0.5 } }), rollout('b', 'p1', { rewards: { acc: 0, cost: null } })]),
      group('p2', 0, [rollout('c', 'p2', { rewards: { acc: 1, cost: 0 } }), rollout('d', 'p2', { rewards: { acc: 1, cost: 0.1 } })]),
    ])
    const J = (0.5 + 0 + 0.1) / 3
    expectObservable(cold('b|', { b: input }).pipe(measureConstraints(config))).toBe('m|', {
      m: {
        ...input,
        constraints: {
          // the null is not a 0: three values, one of them (0.5) above the sample threshold (τ by default)
          cost: { mean: J, violation: J - 0.2, sampleViolationRate: 1 / 3, count: 3 },
          unscored: { mean: NaN, violation: NaN, sampleViolationRate: NaN, count: 0 },
        },
        columns: {
          offsets: Int32Array.of(0, 2, 4),
          columns: { acc: Float64Array.of(1, 0, 1, 1), cost: Float64Array.of(0.5, NaN, 0, 0.1), unscored: Float64Array.of(NaN, NaN, NaN, NaN) },
        },
        windows: { cost: [{ sum: 0.6, count: 3 }], unscored: [{ sum: 0, count: 0 }] },
      },
    })
  })
  t.end()
})

t.test('an empty batch and a config without constraints', (t) => {
  const testScheduler = scheduler(t)
  const grpo = parseConfig({ groupSize: 2, batchGroups: 1, objectives: [{ channel: 'acc' }] })
  testScheduler.run(({ cold, expectObservable }) => {
    const empty = batchOf([])
    expectObservable(cold('b|', { b: empty }).pipe(measureConstraints(grpo))).toBe('m|', {
      m: { ...empty, constraints: {}, columns: { offsets: Int32Array.of(0), columns: { acc: new Float64Array(0) } }, windows: {} },
    })
  })
  t.end()
})

t.test('window > 1 pools the valid values of the last W batches (not a mean of means)', (t) => {
  const testScheduler = scheduler(t)
  const config = fgrpoConfig({
    constraints: [{ channel: 'consistency', sense: '>=', threshold: 0.9, sampleThreshold: 0.5, window: 2, dual: { rule: 'sgd', lr: 0.05 } }],
  })
  testScheduler.run(({ cold, expectObservable }) => {
    const b1 = consistencyBatch(1, 0, 1, 1)
    const b2 = consistencyBatch(0, 0)
    const b3 = consistencyBatch(1, 1)
    const result = cold('abc|', { a: b1, b: b2, c: b3 }).pipe(
      measureConstraints(config),
      map((m) => ({ measure: m.constraints.consistency, window: m.windows.consistency })),
    )
    expectObservable(result).toBe('xyz|', {
      x: { measure: { mean: 0.75, violation: 0.9 - 0.75, sampleViolationRate: 0.25, count: 4 }, window: [{ sum: 3, count: 4 }] },
      // (3 + 0) / (4 + 2), where a mean of the batch means would say 0.375; the sample rate is this batch's
      y: {
        measure: { mean: 0.5, violation: 0.9 - 0.5, sampleViolationRate: 1, count: 2 },
        window: [
          { sum: 3, count: 4 },
          { sum: 0, count: 2 },
        ],
      },
      // the first batch has left the window
      z: {
        measure: { mean: 0.5, violation: 0.9 - 0.5, sampleViolationRate: 0, count: 2 },
        window: [
          { sum: 0, count: 2 },
          { sum: 2, count: 2 },
        ],
      },
    })
  })
  t.end()
})

t.test('an initialState supplies the windows to resume from', (t) => {
  const testScheduler = scheduler(t)
  const config = fgrpoConfig({
    constraints: [{ channel: 'consistency', sense: '>=', threshold: 0.9, sampleThreshold: 0.5, window: 2, dual: { rule: 'sgd', lr: 0.05 } }],
  })
  const initialState: DualState = { step: 12, constraints: { consistency: { controller: { rule: 'sgd', lambda: 0.4 }, window: [{ sum: 0, count: 4 }] } } }
  testScheduler.run(({ cold, expectObservable }) => {
    const result = cold('ab|', { a: consistencyBatch(1, 0, 1, 1), b: consistencyBatch(1, 1) }).pipe(
      measureConstraints(config, { initialState }),
      map((m) => [m.constraints.consistency.mean, m.windows.consistency]),
    )
    expectObservable(result).toBe('xy|', {
      x: [
        3 / 8,
        [
          { sum: 0, count: 4 },
          { sum: 3, count: 4 },
        ],
      ],
      y: [
        5 / 6,
        [
          { sum: 3, count: 4 },
          { sum: 2, count: 2 },
        ],
      ],
    })
  })
  t.same(initialState.constraints.consistency.window, [{ sum: 0, count: 4 }], 'the initial state is not modified')
  t.end()
})

t.test('a saved window of a channel the config no longer measures is left as it was', (t) => {
  const testScheduler = scheduler(t)
  const config = fgrpoConfig({
    constraints: [{ channel: 'consistency', sense: '>=', threshold: 0.9, window: 2, dual: { rule: 'sgd', lr: 0.05 } }],
  })
  const initialState: DualState = {
    step: 3,
    constraints: {
      consistency: { controller: { rule: 'sgd', lambda: 0 }, window: [] },
      retired: { controller: { rule: 'sgd', lambda: 0.2 }, window: [{ sum: 1, count: 1 }] },
    },
  }
  testScheduler.run(({ cold, expectObservable }) => {
    // the second batch's J pools the first: the state kept across batches holds both channels
    const result = cold('ab|', { a: consistencyBatch(1, 1), b: consistencyBatch(0, 0) }).pipe(
      measureConstraints(config, { initialState }),
      map((m) => [m.constraints.consistency.mean, Object.keys(m.windows)]),
    )
    expectObservable(result).toBe('xy|', { x: [1, ['consistency']], y: [0.5, ['consistency']] })
  })
  t.end()
})

t.test('a non-finite reward produced by a user step upstream errors the stream with the rollout id and channel', (t) => {
  const testScheduler = scheduler(t)
  const config = fgrpoConfig()
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const source = cold('a-b-a|', { a: batchOf(referenceGroups()), b: batchOf(referenceGroups()) })
    // a user's scoring step that divides by zero on the second batch
    let n = 0
    const score = map((batch: Batch): Batch => {
      if (n++ === 0) return batch
      const [g1, g2] = batch.groups
      const [r3, r4] = g2.rollouts
      return { ...batch, groups: [g1, { ...g2, rollouts: [{ ...r3, rewards: { ...r3.rewards, consistency: 0 / 0 } }, r4] }] }
    })
    const expected = new RangeError('rollout "r3" (prompt "p2"): rewards.consistency is NaN, expected a finite number or null')
    expectObservable(
      source.pipe(
        score,
        measureConstraints(config),
        map((m) => m.constraints.consistency.count),
      ),
    ).toBe('a-#', { a: 4 }, expected)
    expectSubscriptions(source.subscriptions).toBe('^-!')
  })
  t.end()
})

t.test('a source error passes through', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const source = cold<Batch>('--#', undefined, boom)
    expectObservable(source.pipe(measureConstraints(fgrpoConfig()))).toBe('--#', undefined, boom)
    expectSubscriptions(source.subscriptions).toBe('^-!')
  })
  t.end()
})

t.test('empty and never sources', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const empty = cold<Batch>('|')
    expectObservable(empty.pipe(measureConstraints(fgrpoConfig()))).toBe('|')
    expectSubscriptions(empty.subscriptions).toBe('(^!)')
    const never = cold<Batch>('-')
    expectObservable(never.pipe(measureConstraints(fgrpoConfig()))).toBe('-')
    expectSubscriptions(never.subscriptions).toBe('^')
  })
  t.end()
})

t.test('an early unsubscribe reaches the source', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const source = cold('-a--a-|', { a: batchOf(referenceGroups()) })
    const result = source.pipe(
      measureConstraints(fgrpoConfig()),
      map((m) => m.constraints.consistency.mean),
    )
    expectObservable(result, '^---!').toBe('-m---', { m: 0.75 })
    expectSubscriptions(source.subscriptions).toBe('^---!')
  })
  t.end()
})

t.test('state is released: a re-subscription starts with empty windows', (t) => {
  const testScheduler = scheduler(t)
  const config = fgrpoConfig({
    constraints: [{ channel: 'consistency', sense: '>=', threshold: 0.9, window: 3, dual: { rule: 'sgd', lr: 0.05 } }],
  })
  testScheduler.run(({ cold, expectObservable }) => {
    const first = cold('a#', { a: consistencyBatch(0, 0) }, boom)
    const second = cold('b|', { b: consistencyBatch(1, 1) })
    let n = 0
    const source = defer(() => (n++ === 0 ? first : second))
    const result = source.pipe(
      measureConstraints(config),
      retry(1),
      map((m) => m.constraints.consistency.mean),
    )
    // pooled with the failed subscription's batch it would be 0.5
    expectObservable(result).toBe('xy|', { x: 0, y: 1 })
  })
  t.end()
})
