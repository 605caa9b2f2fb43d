import t from 'tap'
import fc from 'fast-check'
import { Subject, defer, map, retry, type OperatorFunction } from 'rxjs'
import { dropDuplicates } from '../../operators/dropDuplicates.js'
import { fgrpo } from '../../operators/fgrpo.js'
import { parseConfig } from '../../src/core/config.js'
import type { DropEvent, DualState, Rollout, ScoredBatch } from '../../src/core/types.js'
import { fgrpoConfig } from './fixtures/config.js'
import { boom, HALF_OVER_STD as H, recordDrops, rollout, scheduler, type RecordedDrop } from './fixtures/helpers.js'

/** The parts of a scored batch a reader checks first. */
const summary: OperatorFunction<ScoredBatch, unknown> = map((b) => ({
  step: b.step,
  reason: b.reason,
  ts: b.ts,
  ids: b.groups.flatMap((g) => g.rollouts.map((r) => r.id)),
  lambda: b.lambda,
  advantages: Array.from(b.advantages),
}))

const scored = (id: string, promptId: string, ts: number, acc: number, consistency: number, extra: Partial<Rollout> = {}) =>
  rollout(id, promptId, { ts, rewards: { acc, consistency }, ...extra })

t.test('end to end: groups, a batch, its constraint, λ and advantages', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const a = scored('r1', 'p1', 1, 1, 1)
    const b = scored('r3', 'p2', 2, 0, 1)
    const c = scored('r2', 'p1', 3, 0, 0)
    const d = scored('r4', 'p2', 4, 1, 1)
    const source = cold('-abcd-|', { a, b, c, d })
    const λ1 = 0 + 0.05 * (0.9 - 0.75)
    expectObservable(source.pipe(fgrpo(fgrpoConfig()), summary)).toBe('----x-|', {
      x: {
        step: 1,
        reason: 'full',
        ts: 4,
        ids: ['r1', 'r2', 'r3', 'r4'],
        lambda: { consistency: { before: 0, after: λ1 } },
        advantages: [H + λ1 * H, -H + λ1 * -H, -H, H],
      },
    })
    expectSubscriptions(source.subscriptions).toBe('^-----!')
  })
  t.end()
})

t.test('fgrpo does not deduplicate ids (the engine does at ingest): dropDuplicates goes in front for other sources', (t) => {
  const testScheduler = scheduler(t)
  const drops: RecordedDrop[] = []
  testScheduler.run(({ cold, expectObservable }) => {
    const a = scored('r1', 'p1', 1, 1, 1)
    const b = scored('r2', 'p1', 2, 0, 0)
    const ids = map((s: ScoredBatch) => s.groups.flatMap((g) => g.rollouts.map((r) => r.id)))
    const config = fgrpoConfig({ batchGroups: 1 })
    expectObservable(cold('-aab|', { a, b }).pipe(fgrpo(config), ids)).toBe('--x-|', { x: ['r1', 'r1'] })
    const onDrop = recordDrops(testScheduler, drops)
    expectObservable(cold('-aab|', { a, b }).pipe(dropDuplicates({ onDrop }), fgrpo(config, { onDrop }), ids)).toBe('---x|', { x: ['r1', 'r2'] })
  })
  t.same(
    drops.map((d) => [d.frame, d.reason, d.ids]),
    [[2, 'duplicate', ['r1']]],
  )
  t.end()
})

t.test('end to end with every kind of drop, a group timeout and a batch wait driven by one watermark stream', (t) => {
  const testScheduler = scheduler(t)
  const drops: RecordedDrop[] = []
  const config = fgrpoConfig({ groupTimeoutMs: 10, batchMaxWaitMs: 20, maxStaleness: 0 })
  testScheduler.run(({ cold, hot, expectObservable, expectSubscriptions }) => {
    const a = scored('r1', 'p1', 0, 1, 1, { policyVersion: 1 })
    const b = scored('r2', 'p2', 1, 1, 1, { policyVersion: 1 })
    const d = scored('r3', 'p1', 3, 1, 1, { policyVersion: 0 }) // stale: one version behind, maxStaleness 0
    const e = scored('r4', 'p1', 4, 0, 0, { policyVersion: 1 }) // completes p1 at ts 4
    const source = cold('abcde-----|', { a, b, c: a, d, e })
    const watermarks = hot('------w--v-', { w: 11, v: 24 }) // w expires p2 (1 rollout), v closes the batch opened at 4
    const λ1 = 0 + 0.05 * (0.9 - 0.5)
    const onDrop = recordDrops(testScheduler, drops)
    const result = source.pipe(dropDuplicates({ onDrop }), fgrpo(config, { watermarks, onDrop }), summary)
    expectObservable(result).toBe('---------x|', {
      x: { step: 1, reason: 'maxWait', ts: 24, ids: ['r1', 'r4'], lambda: { consistency: { before: 0, after: λ1 } }, advantages: [H + λ1 * H, -H + λ1 * -H] },
    })
    expectSubscriptions(watermarks.subscriptions).toBe(['^---------!', '^---------!'])
  })
  t.same(
    drops.map((d) => [d.frame, d.reason, d.count, d.ids]),
    [
      [2, 'duplicate', 1, ['r1']],
      [3, 'stale', 1, ['r3']],
      [6, 'incomplete-group', 1, ['r2']],
    ],
  )
  t.end()
})

t.test('GRPO (no constraints): A = (r − mean) / (std + 1e-6) with the sample std', (t) => {
  const testScheduler = scheduler(t)
  const config = parseConfig({ groupSize: 4, batchGroups: 1, objectives: [{ channel: 'acc' }] })
  testScheduler.run(({ cold, expectObservable }) => {
    const [a, b, c, d] = [1, 0, 0, 0].map((acc, i) => rollout(`r${i}`, 'p', { ts: i, rewards: { acc } }))
    // mean 0.25; sample std √((0.75² + 3·0.25²) / 3) = 0.5 (the population std would be 0.433…)
    const std = Math.sqrt((0.75 ** 2 + 3 * 0.25 ** 2) / 3)
    t.equal(std, 0.5)
    expectObservable(cold('abcd|', { a, b, c, d }).pipe(fgrpo(config), summary)).toBe('---x|', {
      x: {
        step: 1,
        reason: 'full',
        ts: 3,
        ids: ['r0', 'r1', 'r2', 'r3'],
        lambda: {},
        advantages: [0.75 / (std + 1e-6), -0.25 / (std + 1e-6), -0.25 / (std + 1e-6), -0.25 / (std + 1e-6)],
      },
    })
  })
  t.end()
})

t.test("Dr. GRPO (scale: 'none'): A = r − mean", (t) => {
  const testScheduler = scheduler(t)
  const config = parseConfig({ groupSize: 4, batchGroups: 1, objectives: [{ channel: 'acc' }], normalize: { scale: 'none' } })
  testScheduler.run(({ cold, expectObservable }) => {
    const [a, b, c, d] = [1, 0, 0, 0].map((acc, i) => rollout(`r${i}`, 'p', { ts: i, rewards: { acc } }))
    expectObservable(
      cold('abcd|', { a, b, c, d }).pipe(
        fgrpo(config),
        map((s) => Array.from(s.advantages)),
      ),
    ).toBe('---x|', {
      x: [0.75, -0.25, -0.25, -0.25],
    })
  })
  t.end()
})

t.test('an initialState reaches both the measurement (windows) and the dual step (step, λ)', (t) => {
  const testScheduler = scheduler(t)
  const config = fgrpoConfig({
    batchGroups: 1,
    constraints: [{ channel: 'consistency', sense: '>=', threshold: 0.9, sampleThreshold: 0.5, window: 2, dual: { rule: 'sgd', lr: 0.05 } }],
  })
  const initialState: DualState = { step: 41, constraints: { consistency: { controller: { rule: 'sgd', lambda: 0.3 }, window: [{ sum: 0, count: 2 }] } } }
  testScheduler.run(({ cold, expectObservable }) => {
    const a = scored('r1', 'p1', 0, 1, 1)
    const b = scored('r2', 'p1', 1, 0, 1)
    const result = cold('ab|', { a, b }).pipe(
      fgrpo(config, { initialState }),
      map((s) => [s.step, s.constraints.consistency.mean, s.lambda.consistency]),
    )
    // J pools the saved window: (0 + 2) / (2 + 2)
    expectObservable(result).toBe('-x|', { x: [42, 0.5, { before: 0.3, after: 0.3 + 0.05 * (0.9 - 0.5) }] })
  })
  t.throws(() => fgrpo(config, { initialState: { step: 0, constraints: {} } }), {
    message: /^scoreBatches: the initial state does not fit the config:\n {2}constraint "consistency": no saved dual state/,
  })
  t.end()
})

t.test('policyVersions are passed through to dropStale', (t) => {
  const testScheduler = scheduler(t)
  const drops: RecordedDrop[] = []
  const config = fgrpoConfig({ batchGroups: 1, maxStaleness: 1 })
  testScheduler.run(({ cold, hot, expectObservable }) => {
    const versions = hot('v----', { v: 5 })
    const a = scored('r1', 'p1', 0, 1, 1, { policyVersion: 3 })
    const b = scored('r2', 'p1', 1, 1, 1, { policyVersion: 3 })
    const c = scored('r3', 'p1', 2, 1, 1, { policyVersion: 4 })
    const d = scored('r4', 'p1', 3, 0, 1, { policyVersion: 9 })
    const result = cold('-abcd|', { a, b, c, d }).pipe(
      fgrpo(config, { policyVersions: versions, onDrop: recordDrops(testScheduler, drops) }),
      map((s) => s.groups[0].rollouts.map((r) => r.id)),
    )
    expectObservable(result).toBe('----x|', { x: ['r3', 'r4'] })
  })
  t.same(
    drops.map((d) => [d.frame, d.reason, d.ids]),
    [
      [1, 'stale', ['r1']],
      [2, 'stale', ['r2']],
    ],
  )
  t.end()
})

t.test('rollouts without ts are timed by the scheduler clock; a custom eventTime is used when given', (t) => {
  const testScheduler = scheduler(t)
  const config = fgrpoConfig({ groupSize: 3, groupTimeoutMs: 3, batchGroups: 1 })
  testScheduler.run(({ cold, expectObservable }) => {
    const a = rollout('a', 'p1', { rewards: { acc: 1, consistency: 1 } })
    const b = rollout('b', 'p1', { rewards: { acc: 0, consistency: 1 } })
    const c = rollout('c', 'p2', { rewards: { acc: 0, consistency: 1 } })
    const ids = map((s: ScoredBatch) => [s.ts, s.groups.map((g) => [g.promptId, g.partial])])
    // p1 opens at frame 0; c at frame 4 is past its deadline 3
    expectObservable(cold('ab--c|', { a, b, c }).pipe(fgrpo(config, { scheduler: testScheduler }), ids)).toBe('----x|', { x: [4, [['p1', true]]] })
    const eventTime = (r: Rollout) => (r.id === 'c' ? 100 : 0)
    expectObservable(cold('abc|', { a, b, c }).pipe(fgrpo(config, { eventTime }), ids)).toBe('--x|', { x: [100, [['p1', true]]] })
  })
  t.end()
})

t.test('a non-finite reward produced by a user step upstream errors the stream with the rollout id and channel', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const rollouts = [scored('r1', 'p1', 1, 1, 1), scored('r2', 'p1', 2, 0, 0), scored('r3', 'p2', 3, 0, 1), scored('r4', 'p2', 4, 1, 1)]
    const source = cold('abcd-a|', { a: rollouts[0], b: rollouts[1], c: rollouts[2], d: rollouts[3] })
    // a user's judge that divides by zero for r3
    const judge = map((r: Rollout): Rollout => (r.id === 'r3' ? { ...r, rewards: { ...r.rewards, consistency: 0 / 0 } } : r))
    const expected = new RangeError('rollout "r3" (prompt "p2"): rewards.consistency is NaN, expected a finite number or null')
    expectObservable(source.pipe(judge, fgrpo(fgrpoConfig()))).toBe('---#', undefined, expected)
    expectSubscriptions(source.subscriptions).toBe('^--!')
  })
  t.end()
})

t.test('an exception in onDrop or eventTime errors the output at that frame and unsubscribes the source', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const a = scored('r1', 'p1', 1, 1, 1)
    const b = scored('r2', 'p1', 2, 0, 0)
    const onDrop = (_: DropEvent) => {
      throw boom
    }
    const stale = cold('a-s-b|', { a: { ...a, policyVersion: 2 }, s: { ...b, policyVersion: 0 }, b })
    expectObservable(stale.pipe(fgrpo(fgrpoConfig({ maxStaleness: 1 }), { onDrop }))).toBe('--#', undefined, boom)
    expectSubscriptions(stale.subscriptions).toBe('^-!')

    const eventTime = (r: Rollout) => {
      if (r.id === 'r2') throw boom
      return r.ts!
    }
    const timed = cold('a-b-|', { a, b })
    expectObservable(timed.pipe(fgrpo(fgrpoConfig(), { eventTime }))).toBe('--#', undefined, boom)
    expectSubscriptions(timed.subscriptions).toBe('^-!')
  })
  t.end()
})

t.test('a source error passes through (pending groups are not flushed)', (t) => {
  const testScheduler = scheduler(t)
  const drops: RecordedDrop[] = []
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const source = cold('a-#', { a: scored('r1', 'p1', 0, 1, 1) }, boom)
    expectObservable(source.pipe(fgrpo(fgrpoConfig(), { onDrop: recordDrops(testScheduler, drops) }))).toBe('--#', undefined, boom)
    expectSubscriptions(source.subscriptions).toBe('^-!')
  })
  t.same(drops, [])
  t.end()
})

t.test('empty and never sources', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const empty = cold<Rollout>('|')
    expectObservable(empty.pipe(fgrpo(fgrpoConfig()))).toBe('|')
    expectSubscriptions(empty.subscriptions).toBe('(^!)')
    const never = cold<Rollout>('-')
    const watermarks = cold<number>('-')
    expectObservable(never.pipe(fgrpo(fgrpoConfig({ maxStaleness: 1 }), { watermarks, policyVersions: cold<number>('-') }))).toBe('-')
    expectSubscriptions(never.subscriptions).toBe('^')
    expectSubscriptions(watermarks.subscriptions).toBe(['^', '^'])
  })
  t.end()
})

t.test('an early unsubscribe reaches the source and the watermarks', (t) => {
  const testScheduler = scheduler(t)
  const drops: RecordedDrop[] = []
  testScheduler.run(({ cold, hot, expectObservable, expectSubscriptions }) => {
    const a = scored('r1', 'p1', 1, 1, 1)
    const b = scored('r2', 'p1', 2, 0, 0)
    const source = cold('-ab---|', { a, b })
    const watermarks = hot<number>('-------')
    const result = source.pipe(fgrpo(fgrpoConfig(), { watermarks, onDrop: recordDrops(testScheduler, drops) }))
    expectObservable(result, '^---!').toBe('-----')
    expectSubscriptions(source.subscriptions).toBe('^---!')
    expectSubscriptions(watermarks.subscriptions).toBe(['^---!', '^---!'])
  })
  t.same(drops, [], 'the pending group and batch are neither flushed nor reported')
  t.end()
})

t.test('state is released: a re-subscription starts with no pending groups and step 0', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const a = scored('r1', 'p1', 0, 1, 1)
    const b = scored('r2', 'p1', 1, 0, 0)
    const c = scored('r3', 'p2', 2, 1, 1)
    const d = scored('r5', 'p2', 3, 0, 1)
    const first = cold('abc#', { a, b, c }, boom)
    // had r3 stayed pending, r5 would complete p2 and make a second batch
    const second = cold('abd|', { a, b, d })
    let n = 0
    const source = defer(() => (n++ === 0 ? first : second))
    const config = fgrpoConfig({ batchGroups: 1 })
    const result = source.pipe(
      fgrpo(config),
      retry(1),
      map((s) => [s.step, s.groups.map((g) => g.rollouts.map((r) => r.id))]),
    )
    expectObservable(result).toBe('-x--x-|', { x: [1, [['r1', 'r2']]] })
    expectSubscriptions(first.subscriptions).toBe('^--!')
    expectSubscriptions(second.subscriptions).toBe('---^--!')
  })
  t.end()
})

t.test('property: behind dropDuplicates, every input rollout is either in exactly one batch or reported once through onDrop', (t) => {
  const config = parseConfig({
    groupSize: 3,
    minGroupSize: 2,
    groupTimeoutMs: 30,
    batchGroups: 2,
    batchMaxWaitMs: 50,
    maxStaleness: 1,
    objectives: [{ channel: 'acc' }],
    constraints: [{ channel: 'consistency', sense: '>=', threshold: 0.9, sampleThreshold: 0.5, window: 2, dual: { rule: 'sgd', lr: 0.05 } }],
  })
  const reward = fc.constantFrom(0, 1, 0.5, null)
  const rolloutEvent = fc.record({
    kind: fc.constant('rollout' as const),
    id: fc.integer({ min: 0, max: 60 }), // few ids: duplicates are common
    prompt: fc.integer({ min: 0, max: 3 }),
    version: fc.option(fc.integer({ min: 0, max: 4 }), { nil: undefined }), // stale versions
    groupSize: fc.option(fc.integer({ min: 1, max: 4 }), { freq: 6, nil: undefined }),
    dt: fc.integer({ min: 0, max: 20 }),
    late: fc.option(fc.integer({ min: 1, max: 40 }), { freq: 4, nil: undefined }), // out-of-order ts
    acc: reward,
    consistency: reward,
  })
  const watermarkEvent = fc.record({ kind: fc.constant('watermark' as const), dt: fc.integer({ min: 0, max: 60 }) })
  const events = fc.array(fc.oneof({ arbitrary: rolloutEvent, weight: 6 }, { arbitrary: watermarkEvent, weight: 1 }), { maxLength: 60, size: 'max' })

  fc.assert(
    fc.property(events, fc.boolean(), (events, withWatermarks) => {
      const rollouts$ = new Subject<Rollout>()
      const watermarks$ = new Subject<number>()
      const batches: ScoredBatch[] = []
      const drops: DropEvent[] = []
      let completed = false
      const onDrop = (e: DropEvent) => drops.push(e)
      rollouts$.pipe(dropDuplicates({ onDrop }), fgrpo(config, { watermarks: withWatermarks ? watermarks$ : undefined, onDrop })).subscribe({
        next: (b) => batches.push(b),
        complete: () => (completed = true),
      })
      const input: Rollout[] = []
      let clock = 0
      for (const e of events) {
        clock += e.dt
        if (e.kind === 'watermark') {
          watermarks$.next(clock)
          continue
        }
        const r: Rollout = { id: `r${e.id}`, promptId: `p${e.prompt}`, ts: clock - (e.late ?? 0), rewards: { acc: e.acc, consistency: e.consistency } }
        if (e.version !== undefined) r.policyVersion = e.version
        if (e.groupSize !== undefined) r.groupSize = e.groupSize
        input.push(r)
        rollouts$.next(r)
      }
      rollouts$.complete()

      const inBatches = batches.flatMap((b) => b.groups.flatMap((g) => g.rollouts))
      const dropped = drops.flatMap((d) => d.rollouts)
      const droppedCount = drops.reduce((n, d) => n + d.count, 0)
      const counted = new Map<Rollout, number>()
      for (const r of [...inBatches, ...dropped]) counted.set(r, (counted.get(r) ?? 0) + 1)
      return (
        completed &&
        inBatches.length + droppedCount === input.length &&
        dropped.length === droppedCount &&
        input.every((r) => counted.get(r) === 1) &&
        counted.size === input.length &&
        new Set(inBatches.map((r) => r.id)).size === inBatches.length &&
        batches.every((b, i) => b.step === i + 1 && b.rolloutCount === b.advantages.length && b.advantages.every(Number.isFinite)) &&
        drops.every((d) => ['duplicate', 'stale', 'incomplete-group'].includes(d.reason))
      )
    }),
    { numRuns: 300 },
  )
  t.pass('held for 300 random streams')
  t.end()
})
