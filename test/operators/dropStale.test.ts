import t from 'tap'
import { defer, retry } from 'rxjs'
import { dropStale } from '../../operators/dropStale.js'
import type { Rollout } from '../../src/core/types.js'
import { boom, recordDrops, rollout, scheduler, type RecordedDrop } from './fixtures/helpers.js'

const v = (id: string, policyVersion?: number): Rollout => rollout(id, `p-${id}`, policyVersion === undefined ? {} : { policyVersion })

t.test('without policyVersions: the newest version seen in the stream counts', (t) => {
  const testScheduler = scheduler(t)
  const drops: RecordedDrop[] = []
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const a = v('a', 0)
    const b = v('b', 2) // current becomes 2
    const c = v('c', 1) // lag 1: kept
    const d = v('d', 0) // lag 2 > 1: dropped
    const e = v('e') // no version: kept
    const f = v('f', 3) // current becomes 3
    const g = v('g', 1) // lag 2: dropped
    const source = cold('-abcdefg|', { a, b, c, d, e, f, g })
    const result = source.pipe(dropStale({ maxStaleness: 1, onDrop: recordDrops(testScheduler, drops) }))
    expectObservable(result).toBe('-abc-ef-|', { a, b, c, e, f })
    expectSubscriptions(source.subscriptions).toBe('^-------!')
  })
  t.same(drops, [
    { frame: 4, reason: 'stale', count: 1, ids: ['d'], promptId: 'p-d', detail: 'rollout "d" was sampled by policy 0, 2 versions behind 2 (maxStaleness 1)' },
    { frame: 7, reason: 'stale', count: 1, ids: ['g'], promptId: 'p-g', detail: 'rollout "g" was sampled by policy 1, 2 versions behind 3 (maxStaleness 1)' },
  ])
  t.end()
})

t.test('maxStaleness 0 keeps only the current version; works without onDrop', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable }) => {
    const a = v('a', 5)
    const b = v('b', 4)
    const c = v('c', 5)
    expectObservable(cold('abc|', { a, b, c }).pipe(dropStale({ maxStaleness: 0 }))).toBe('a-c|', { a, c })
  })
  t.end()
})

t.test("with policyVersions: the trainer's published version counts, the stream's own versions do not", (t) => {
  const testScheduler = scheduler(t)
  const drops: RecordedDrop[] = []
  testScheduler.run(({ cold, hot, expectObservable, expectSubscriptions }) => {
    const a = v('a', 0) // before any version is known: kept
    const b = v('b', 0) // current 2: lag 2, dropped
    const c = v('c', 1) // lag 1: kept
    const d = v('d', 9) // ahead of the trainer: kept, and does not move the current version
    const e = v('e', 1) // still lag 1 against 2: kept
    const f = v('f', 3) // current 5: lag 2, dropped
    const g = v('g', 3) // a lower published version (1) is ignored: still dropped
    const versions = hot('--x------y-z---', { x: 2, y: 5, z: 1 })
    const source = cold('-a-bcde---f-g-|', { a, b, c, d, e, f, g })
    const result = source.pipe(dropStale({ maxStaleness: 1, policyVersions: versions, onDrop: recordDrops(testScheduler, drops) }))
    expectObservable(result).toBe('-a--cde-------|', { a, c, d, e })
    expectSubscriptions(versions.subscriptions).toBe('^-------------!')
  })
  t.same(
    drops.map((d) => [d.frame, d.ids[0], d.detail]),
    [
      [3, 'b', 'rollout "b" was sampled by policy 0, 2 versions behind 2 (maxStaleness 1)'],
      [10, 'f', 'rollout "f" was sampled by policy 3, 2 versions behind 5 (maxStaleness 1)'],
      [12, 'g', 'rollout "g" was sampled by policy 3, 2 versions behind 5 (maxStaleness 1)'],
    ],
  )
  t.end()
})

t.test('policyVersions is subscribed before the source, so a current version is known for the first rollout', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable }) => {
    const versions = cold('(x|)', { x: 7 })
    const a = v('a', 5)
    const b = v('b', 6)
    expectObservable(cold('ab|', { a, b }).pipe(dropStale({ maxStaleness: 1, policyVersions: versions }))).toBe('-b|', { b })
  })
  t.end()
})

t.test("policyVersions' completion keeps the last version and does not complete the output; its error errors it", (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const a = v('a', 1)
    const b = v('b', 3)
    const completing = cold('-x|', { x: 3 })
    expectObservable(cold('---ab|', { a, b }).pipe(dropStale({ maxStaleness: 1, policyVersions: completing }))).toBe('----b|', { b })
    expectSubscriptions(completing.subscriptions).toBe('^-!')

    const erroring = cold<number>('--#', undefined, boom)
    const source = cold('a---b|', { a, b })
    expectObservable(source.pipe(dropStale({ maxStaleness: 1, policyVersions: erroring }))).toBe('a-#', { a }, boom)
    expectSubscriptions(source.subscriptions).toBe('^-!')
  })
  t.end()
})

t.test('an exception in onDrop errors the output at that frame and unsubscribes the source and the versions', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, hot, expectObservable, expectSubscriptions }) => {
    const a = v('a', 3)
    const b = v('b', 0)
    const onDrop = () => {
      throw boom
    }
    const source = cold('a-b-a|', { a, b })
    expectObservable(source.pipe(dropStale({ maxStaleness: 1, onDrop }))).toBe('a-#', { a }, boom)
    expectSubscriptions(source.subscriptions).toBe('^-!')

    const source2 = cold('a-b-a|', { a, b })
    const versions = hot('v-----', { v: 3 })
    expectObservable(source2.pipe(dropStale({ maxStaleness: 1, policyVersions: versions, onDrop }))).toBe('a-#', { a }, boom)
    expectSubscriptions(source2.subscriptions).toBe('^-!')
    expectSubscriptions(versions.subscriptions).toBe('^-!')
  })
  t.end()
})

t.test('a source error passes through', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const a = v('a', 1)
    const source = cold('a-#', { a }, boom)
    expectObservable(source.pipe(dropStale({ maxStaleness: 1 }))).toBe('a-#', { a }, boom)
    expectSubscriptions(source.subscriptions).toBe('^-!')
  })
  t.end()
})

t.test('empty and never sources', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const empty = cold<Rollout>('|')
    expectObservable(empty.pipe(dropStale({ maxStaleness: 1 }))).toBe('|')
    expectSubscriptions(empty.subscriptions).toBe('(^!)')
    const never = cold<Rollout>('-')
    const versions = cold<number>('-')
    expectObservable(never.pipe(dropStale({ maxStaleness: 1, policyVersions: versions }))).toBe('-')
    expectSubscriptions(never.subscriptions).toBe('^')
    expectSubscriptions(versions.subscriptions).toBe('^')
  })
  t.end()
})

t.test('an early unsubscribe reaches the source and the versions', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, hot, expectObservable, expectSubscriptions }) => {
    const a = v('a', 1)
    const b = v('b', 1)
    const source = cold('-a--b-|', { a, b })
    const versions = hot<number>('-------')
    expectObservable(source.pipe(dropStale({ maxStaleness: 1, policyVersions: versions })), '^---!').toBe('-a---', { a })
    expectSubscriptions(source.subscriptions).toBe('^---!')
    expectSubscriptions(versions.subscriptions).toBe('^---!')
  })
  t.end()
})

t.test('state is released: a re-subscription starts with no known version', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const high = v('high', 10)
    const low = v('low', 0)
    // the first subscription learns version 10 and fails; the retry must not remember it
    const first = cold('h-#', { h: high }, boom)
    const second = cold('l|', { l: low })
    let n = 0
    const source = defer(() => (n++ === 0 ? first : second))
    expectObservable(source.pipe(dropStale({ maxStaleness: 1 }), retry(1))).toBe('h-l|', { h: high, l: low })
    expectSubscriptions(first.subscriptions).toBe('^-!')
    expectSubscriptions(second.subscriptions).toBe('--^!')
  })
  t.end()
})
