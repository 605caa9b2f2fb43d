import t from 'tap'
import { map, retry } from 'rxjs'
import { dualAscent } from '../../operators/dualAscent.js'
import { groupAdvantages } from '../../operators/groupAdvantages.js'
import { measureConstraints } from '../../operators/measureConstraints.js'
import { parseConfig } from '../../src/core/config.js'
import type { Batch, DualBatch, ScoredBatch } from '../../src/core/types.js'
import { fgrpoConfig } from './fixtures/config.js'
import { boom, HALF_OVER_STD as H, referenceGroups, scheduler } from './fixtures/helpers.js'

/** The reference batch after measurement and a dual step that took λ from 0 to `after`. */
function referenceDual(after: number): DualBatch {
  return {
    groups: referenceGroups(),
    ts: 0,
    reason: 'full',
    constraints: { consistency: { mean: 0.75, violation: 0.9 - 0.75, sampleViolationRate: 0.25, count: 4 } },
    columns: { offsets: Int32Array.of(0, 2, 4), columns: { acc: Float64Array.of(1, 0, 0, 1), consistency: Float64Array.of(1, 0, 1, 1) } },
    windows: { consistency: [{ sum: 3, count: 4 }] },
    step: 1,
    lambda: { consistency: { before: 0, after } },
    dualState: { step: 1, constraints: { consistency: { controller: { rule: 'sgd', lambda: after }, window: [{ sum: 3, count: 4 }] } } },
  }
}

/** Sample std of values whose mean is 0, summed in order as the two-pass formula does. */
const sampleStdAroundZero = (xs: number[]) => Math.sqrt(xs.reduce((s, x) => s + x * x, 0) / (xs.length - 1))

t.test('the group-relative advantage is ±0.7071… for a group {1, 0} (GRPO, sample std, ε 1e-6)', (t) => {
  t.ok(Math.abs(H - 0.70710678) < 1e-5, `H = ${H}`)
  t.end()
})

t.test('normalize-then-sum with the updated λ: A = Â_acc + λ_after·Â_consistency', (t) => {
  const testScheduler = scheduler(t)
  const config = fgrpoConfig()
  const λ = 0.05 * (0.9 - 0.75)
  // acc: p1 {1, 0} → ±H, p2 {0, 1} → ∓H; consistency: p1 {1, 0} → ±H, p2 {1, 1} is flat → 0
  const advantages = [H + λ * H, -H + λ * -H, -H, H]
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const input = referenceDual(λ)
    const source = cold('-b-|', { b: input })
    const expected: ScoredBatch = {
      ...input,
      advantages: Float64Array.from(advantages),
      fracZeroStd: { acc: 0, consistency: 0.5 },
      objectiveMeans: { acc: 0.5 },
      advantageMean: 0,
      advantageStd: sampleStdAroundZero(advantages),
      rolloutCount: 4,
    }
    expectObservable(source.pipe(groupAdvantages(config))).toBe('-s-|', { s: expected })
    expectSubscriptions(source.subscriptions).toBe('^--!')
  })
  t.end()
})

t.test('measureConstraints → dualAscent → groupAdvantages: measure, update λ, then score with the updated λ', (t) => {
  const testScheduler = scheduler(t)
  const config = fgrpoConfig()
  testScheduler.run(({ cold, expectObservable }) => {
    const batch: Batch = { groups: referenceGroups(), ts: 3, reason: 'full' }
    const result = cold('-a-a|', { a: batch }).pipe(
      measureConstraints(config),
      dualAscent(config),
      groupAdvantages(config),
      map((s) => ({
        step: s.step,
        mean: s.constraints.consistency.mean,
        violation: s.constraints.consistency.violation,
        sampleViolationRate: s.constraints.consistency.sampleViolationRate,
        lambda: s.lambda.consistency,
        advantages: Array.from(s.advantages),
      })),
    )
    const e = 0.9 - 0.75
    const λ1 = 0 + 0.05 * e
    const λ2 = λ1 + 0.05 * e
    expectObservable(result).toBe('-x-y|', {
      x: { step: 1, mean: 0.75, violation: e, sampleViolationRate: 0.25, lambda: { before: 0, after: λ1 }, advantages: [H + λ1 * H, -H + λ1 * -H, -H, H] },
      y: { step: 2, mean: 0.75, violation: e, sampleViolationRate: 0.25, lambda: { before: λ1, after: λ2 }, advantages: [H + λ2 * H, -H + λ2 * -H, -H, H] },
    })
  })
  t.end()
})

t.test('GRPO (no constraints) gives ±0.7071… and the settings reach the math (scaleByLambda)', (t) => {
  const testScheduler = scheduler(t)
  const grpo = parseConfig({ groupSize: 2, batchGroups: 2, objectives: [{ channel: 'acc' }] })
  const scaled = fgrpoConfig({ scaleByLambda: true })
  testScheduler.run(({ cold, expectObservable }) => {
    const advantagesOf = map((s: ScoredBatch) => Array.from(s.advantages))
    expectObservable(cold('a|', { a: { ...referenceDual(0), lambda: {} } }).pipe(groupAdvantages(grpo), advantagesOf)).toBe('x|', {
      x: [H, -H, -H, H],
    })
    const λ = 0.5
    const factor = 1 / (1 + λ)
    expectObservable(cold('a|', { a: referenceDual(λ) }).pipe(groupAdvantages(scaled), advantagesOf)).toBe('x|', {
      x: [(H + λ * H) * factor, (-H + λ * -H) * factor, -H * factor, H * factor],
    })
  })
  t.end()
})

t.test('an exception while scoring (unreadable columns) errors the output and unsubscribes the source', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const good = referenceDual(0)
    const columns = {
      get offsets(): Int32Array {
        throw boom
      },
      columns: {},
    }
    const broken: DualBatch = { ...good, columns }
    const source = cold('a-b-a|', { a: good, b: broken })
    expectObservable(
      source.pipe(
        groupAdvantages(fgrpoConfig()),
        map((s) => s.rolloutCount),
      ),
    ).toBe('a-#', { a: 4 }, boom)
    expectSubscriptions(source.subscriptions).toBe('^-!')
  })
  t.end()
})

t.test('a source error passes through', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const source = cold<DualBatch>('--#', undefined, boom)
    expectObservable(source.pipe(groupAdvantages(fgrpoConfig()))).toBe('--#', undefined, boom)
    expectSubscriptions(source.subscriptions).toBe('^-!')
  })
  t.end()
})

t.test('empty and never sources', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const empty = cold<DualBatch>('|')
    expectObservable(empty.pipe(groupAdvantages(fgrpoConfig()))).toBe('|')
    expectSubscriptions(empty.subscriptions).toBe('(^!)')
    const never = cold<DualBatch>('-')
    expectObservable(never.pipe(groupAdvantages(fgrpoConfig()))).toBe('-')
    expectSubscriptions(never.subscriptions).toBe('^')
  })
  t.end()
})

t.test('an early unsubscribe reaches the source', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const source = cold('-a--a-|', { a: referenceDual(0) })
    expectObservable(
      source.pipe(
        groupAdvantages(fgrpoConfig()),
        map((s) => s.rolloutCount),
      ),
      '^---!',
    ).toBe('-n---', { n: 4 })
    expectSubscriptions(source.subscriptions).toBe('^---!')
  })
  t.end()
})

t.test('stateless: a re-subscription scores the same batch the same way', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const source = cold('a#', { a: referenceDual(0) }, boom)
    const result = source.pipe(
      groupAdvantages(fgrpoConfig()),
      retry(1),
      map((s) => Array.from(s.advantages)),
    )
    expectObservable(result).toBe('xx#', { x: [H, -H, -H, H] }, boom)
    expectSubscriptions(source.subscriptions).toBe(['^!', '-^!'])
  })
  t.end()
})
