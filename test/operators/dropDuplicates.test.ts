import t from 'tap'
import { retry } from 'rxjs'
import { dropDuplicates, type SeenIds } from '../../operators/dropDuplicates.js'
import type { Rollout } from '../../src/core/types.js'
import { boom, recordDrops, rollout, scheduler, type RecordedDrop } from './fixtures/helpers.js'

t.test("lets each id through once and reports every repeat with reason 'duplicate' and count 1", (t) => {
  const testScheduler = scheduler(t)
  const drops: RecordedDrop[] = []
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const a = rollout('a', 'p1')
    const a2 = rollout('a', 'p9', { rewards: { acc: 0 } }) // same id, other content: still a duplicate
    const b = rollout('b', 'p1')
    const source = cold('-a-b-c-a-|', { a, b, c: a2 })
    expectObservable(source.pipe(dropDuplicates({ onDrop: recordDrops(testScheduler, drops) }))).toBe('-a-b-----|', { a, b })
    expectSubscriptions(source.subscriptions).toBe('^--------!')
  })
  t.same(drops, [
    { frame: 5, reason: 'duplicate', count: 1, ids: ['a'], promptId: 'p9', detail: 'rollout "a" was already seen' },
    { frame: 7, reason: 'duplicate', count: 1, ids: ['a'], promptId: 'p1', detail: 'rollout "a" was already seen' },
  ])
  t.end()
})

t.test('works without onDrop', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable }) => {
    const a = rollout('a', 'p1')
    expectObservable(cold('aa|', { a }).pipe(dropDuplicates())).toBe('a-|', { a })
  })
  t.end()
})

t.test('a supplied memory of ids is used and outlives the subscription (the durable index)', (t) => {
  const testScheduler = scheduler(t)
  const seen = new Set<string>(['old'])
  testScheduler.run(({ cold, expectObservable }) => {
    const old = rollout('old', 'p0')
    const a = rollout('a', 'p1')
    const op = dropDuplicates({ seen })
    expectObservable(cold('oa|', { o: old, a }).pipe(op)).toBe('-a|', { a })
    // a later subscription, e.g. after a restart, shares the same memory
    expectObservable(cold('---a|', { a }).pipe(op)).toBe('----|')
  })
  t.same([...seen], ['old', 'a'])
  t.end()
})

t.test('an exception in onDrop errors the output at that frame and unsubscribes the source', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const a = rollout('a', 'p1')
    const source = cold('a-a-a|', { a })
    const onDrop = () => {
      throw boom
    }
    expectObservable(source.pipe(dropDuplicates({ onDrop }))).toBe('a-#', { a }, boom)
    expectSubscriptions(source.subscriptions).toBe('^-!')
  })
  t.end()
})

t.test('an exception in the supplied memory errors the output and unsubscribes the source', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const seen: SeenIds = {
      has: () => false,
      add: () => {
        throw boom
      },
    }
    const source = cold('-a-|', { a: rollout('a', 'p1') })
    expectObservable(source.pipe(dropDuplicates({ seen }))).toBe('-#', undefined, boom)
    expectSubscriptions(source.subscriptions).toBe('^!')
  })
  t.end()
})

t.test('a source error passes through', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const a = rollout('a', 'p1')
    const source = cold('a-#', { a }, boom)
    expectObservable(source.pipe(dropDuplicates())).toBe('a-#', { a }, boom)
    expectSubscriptions(source.subscriptions).toBe('^-!')
  })
  t.end()
})

t.test('empty and never sources', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const empty = cold<Rollout>('|')
    expectObservable(empty.pipe(dropDuplicates())).toBe('|')
    expectSubscriptions(empty.subscriptions).toBe('(^!)')
    const never = cold<Rollout>('-')
    expectObservable(never.pipe(dropDuplicates())).toBe('-')
    expectSubscriptions(never.subscriptions).toBe('^')
  })
  t.end()
})

t.test('an early unsubscribe reaches the source', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const a = rollout('a', 'p1')
    const b = rollout('b', 'p1')
    const source = cold('-a--b-|', { a, b })
    expectObservable(source.pipe(dropDuplicates()), '^---!').toBe('-a---', { a })
    expectSubscriptions(source.subscriptions).toBe('^---!')
  })
  t.end()
})

t.test('state is released: a re-subscription starts with a fresh memory of ids', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const a = rollout('a', 'p1')
    const source = cold('a-#', { a }, boom)
    expectObservable(source.pipe(dropDuplicates(), retry(1))).toBe('a-a-#', { a }, boom)
    expectSubscriptions(source.subscriptions).toBe(['^-!', '--^-!'])
  })
  t.end()
})
