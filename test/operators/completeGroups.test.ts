import t from 'tap'
import { retry } from 'rxjs'
import { completeGroups } from '../../operators/completeGroups.js'
import type { Rollout } from '../../src/core/types.js'
import { boom, group, recordDrops, rollout, scheduler, type RecordedDrop } from './fixtures/helpers.js'

t.test('emits a group when it reaches groupSize', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const a = rollout('a', 'p1', { ts: 1 })
    const b = rollout('b', 'p2', { ts: 3 })
    const c = rollout('c', 'p1', { ts: 5 })
    const d = rollout('d', 'p2', { ts: 7 })
    const source = cold('-a-b-c-d-|', { a, b, c, d })
    expectObservable(source.pipe(completeGroups({ groupSize: 2 }))).toBe('-----x-y-|', {
      x: group('p1', 5, [a, c]),
      y: group('p2', 7, [b, d]),
    })
    expectSubscriptions(source.subscriptions).toBe('^--------!')
  })
  t.end()
})

t.test('a prompt seen again after its group was emitted starts a new group', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable }) => {
    const [a, b, c, d] = [1, 2, 3, 4].map((ts) => rollout(`r${ts}`, 'p', { ts }))
    expectObservable(cold('-abcd|', { a, b, c, d }).pipe(completeGroups({ groupSize: 2 }))).toBe('--x-y|', {
      x: group('p', 2, [a, b]),
      y: group('p', 4, [c, d]),
    })
  })
  t.end()
})

t.test("a rollout's own groupSize, from the first of its group, overrides the option", (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable }) => {
    const a = rollout('a', 'p1', { ts: 1, groupSize: 3 })
    const b = rollout('b', 'p1', { ts: 2, groupSize: 2 }) // not the first of its group: ignored
    const c = rollout('c', 'p2', { ts: 3, groupSize: 1 }) // a group of one is complete at once
    const d = rollout('d', 'p1', { ts: 4 })
    const e = rollout('e', 'p3', { ts: 5 })
    expectObservable(cold('-abcde|', { a, b, c, d, e }).pipe(completeGroups({ groupSize: 2, minGroupSize: 1 }))).toBe('---xy-(z|)', {
      x: group('p2', 3, [c]),
      y: group('p1', 4, [a, b, d]),
      z: group('p3', 5, [e], true),
    })
  })
  t.end()
})

t.test('a dropped group is reported against its own expected size', (t) => {
  const testScheduler = scheduler(t)
  const drops: RecordedDrop[] = []
  testScheduler.run(({ cold, expectObservable }) => {
    const a = rollout('a', 'p1', { ts: 0, groupSize: 3 })
    const b = rollout('b', 'p2', { ts: 20, groupSize: 5 })
    const result = cold('ab|', { a, b }).pipe(completeGroups({ groupSize: 8, timeoutMs: 10, onDrop: recordDrops(testScheduler, drops) }))
    expectObservable(result).toBe('--|')
  })
  t.same(
    drops.map((d) => [d.frame, d.detail]),
    [
      [1, 'group "p1" had 1 of 3 rollouts when cut short (minGroupSize 2)'],
      [2, 'group "p2" had 1 of 5 rollouts when cut short (minGroupSize 2)'],
    ],
  )
  t.end()
})

t.test('groupSize 1 makes every rollout a complete group', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable }) => {
    const a = rollout('a', 'p1', { ts: 0 })
    const b = rollout('b', 'p1', { ts: 1 })
    expectObservable(cold('ab|', { a, b }).pipe(completeGroups({ groupSize: 1 }))).toBe('xy|', {
      x: group('p1', 0, [a]),
      y: group('p1', 1, [b]),
    })
  })
  t.end()
})

t.test('groups are emitted in completion order, not in order of first arrival', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable }) => {
    const a = rollout('a', 'p1', { ts: 1 })
    const b = rollout('b', 'p2', { ts: 2 })
    const c = rollout('c', 'p2', { ts: 3 })
    const d = rollout('d', 'p1', { ts: 4 })
    expectObservable(cold('-abcd-|', { a, b, c, d }).pipe(completeGroups({ groupSize: 2 }))).toBe('---xy-|', {
      x: group('p2', 3, [b, c]),
      y: group('p1', 4, [a, d]),
    })
  })
  t.end()
})

t.test('event-time timeout on ts: a partial group of at least minGroupSize is emitted, a smaller one dropped and reported', (t) => {
  const testScheduler = scheduler(t)
  const drops: RecordedDrop[] = []
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const a = rollout('a', 'p1', { ts: 0 })
    const b = rollout('b', 'p1', { ts: 2 })
    const c = rollout('c', 'p2', { ts: 5 })
    const d = rollout('d', 'p3', { ts: 12 }) // p1's deadline (10) has passed
    const e = rollout('e', 'p4', { ts: 15 }) // p2's deadline (15) is reached
    const source = cold('abcde|', { a, b, c, d, e })
    const result = source.pipe(completeGroups({ groupSize: 4, minGroupSize: 2, timeoutMs: 10, onDrop: recordDrops(testScheduler, drops) }))
    expectObservable(result).toBe('---x-|', { x: group('p1', 12, [a, b], true) })
    expectSubscriptions(source.subscriptions).toBe('^----!')
  })
  t.same(drops, [
    { frame: 4, reason: 'incomplete-group', count: 1, ids: ['c'], promptId: 'p2', detail: 'group "p2" had 1 of 4 rollouts when cut short (minGroupSize 2)' },
    // end of input: what is still pending is flushed, and these are too small
    { frame: 5, reason: 'incomplete-group', count: 1, ids: ['d'], promptId: 'p3', detail: 'group "p3" had 1 of 4 rollouts when cut short (minGroupSize 2)' },
    { frame: 5, reason: 'incomplete-group', count: 1, ids: ['e'], promptId: 'p4', detail: 'group "p4" had 1 of 4 rollouts when cut short (minGroupSize 2)' },
  ])
  t.end()
})

t.test('the default minGroupSize is 2, or groupSize when smaller', (t) => {
  const testScheduler = scheduler(t)
  const drops: RecordedDrop[] = []
  testScheduler.run(({ cold, expectObservable }) => {
    const a = rollout('a', 'p1', { ts: 0 })
    const b = rollout('b', 'p1', { ts: 1 })
    const c = rollout('c', 'p2', { ts: 2 })
    expectObservable(cold('abc|', { a, b, c }).pipe(completeGroups({ groupSize: 8, onDrop: recordDrops(testScheduler, drops) }))).toBe('---(x|)', {
      x: group('p1', 2, [a, b], true),
    })
  })
  t.same(
    drops.map((d) => [d.frame, d.promptId, d.count]),
    [[3, 'p2', 1]],
  )
  t.end()
})

t.test('a late (out-of-order) ts is clamped to the watermark', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable }) => {
    const a = rollout('a', 'p1', { ts: 100 })
    const b = rollout('b', 'p2', { ts: 50 }) // late: counted as arriving at 100, so its deadline is 110, not 60
    const c = rollout('c', 'p3', { ts: 105 }) // would have expired p2 had its ts not been clamped
    const d = rollout('d', 'p4', { ts: 110 })
    const source = cold('abcd----|', { a, b, c, d })
    expectObservable(source.pipe(completeGroups({ groupSize: 3, minGroupSize: 1, timeoutMs: 10 }))).toBe('---(xy)-(zw|)', {
      x: group('p1', 110, [a], true),
      y: group('p2', 110, [b], true),
      z: group('p3', 110, [c], true),
      w: group('p4', 110, [d], true),
    })
  })
  t.end()
})

t.test('watermarks advance event time while no rollout arrives', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, hot, expectObservable, expectSubscriptions }) => {
    const a = rollout('a', 'p1', { ts: 0 })
    const b = rollout('b', 'p1', { ts: 1 })
    const source = cold('ab------|', { a, b })
    const watermarks = hot('----w-v-u', { w: 5, v: 10, u: 3 })
    const result = source.pipe(completeGroups({ groupSize: 3, timeoutMs: 10, watermarks }))
    expectObservable(result).toBe('------x-|', { x: group('p1', 10, [a, b], true) })
    expectSubscriptions(watermarks.subscriptions).toBe('^-------!')
  })
  t.end()
})

t.test('a rollout without ts is stamped with the scheduler clock (virtual time)', (t) => {
  const testScheduler = scheduler(t)
  const drops: RecordedDrop[] = []
  testScheduler.run(({ cold, expectObservable }) => {
    const a = rollout('a', 'p1')
    const b = rollout('b', 'p1')
    const c = rollout('c', 'p2')
    const source = cold('ab---c-|', { a, b, c })
    const result = source.pipe(completeGroups({ groupSize: 3, timeoutMs: 4, scheduler: testScheduler, onDrop: recordDrops(testScheduler, drops) }))
    // p1 opened at frame 0, its deadline 4 is passed by c at frame 5
    expectObservable(result).toBe('-----x-|', { x: group('p1', 5, [a, b], true) })
  })
  t.same(
    drops.map((d) => [d.frame, d.promptId, d.ids]),
    [[7, 'p2', ['c']]],
  )
  t.end()
})

t.test('a custom eventTime replaces ts', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable }) => {
    const a = rollout('a', 'p1', { ts: 0, seq: 0 })
    const b = rollout('b', 'p2', { ts: 0, seq: 1 })
    const c = rollout('c', 'p3', { ts: 0, seq: 20 })
    const eventTime = (r: Rollout) => r.seq! * 1000
    expectObservable(cold('abc----|', { a, b, c }).pipe(completeGroups({ groupSize: 2, minGroupSize: 1, timeoutMs: 10_000, eventTime }))).toBe('--(xy)-(z|)', {
      x: group('p1', 20_000, [a], true),
      y: group('p2', 20_000, [b], true),
      z: group('p3', 20_000, [c], true),
    })
  })
  t.end()
})

t.test('end of input flushes the pending groups: partials emitted, small ones dropped', (t) => {
  const testScheduler = scheduler(t)
  const drops: RecordedDrop[] = []
  testScheduler.run(({ cold, expectObservable }) => {
    const a = rollout('a', 'p1', { ts: 1 })
    const b = rollout('b', 'p2', { ts: 2 })
    const c = rollout('c', 'p1', { ts: 3 })
    const d = rollout('d', 'p3', { ts: 4 })
    const e = rollout('e', 'p3', { ts: 5 })
    const result = cold('-abcde|', { a, b, c, d, e }).pipe(completeGroups({ groupSize: 3, onDrop: recordDrops(testScheduler, drops) }))
    expectObservable(result).toBe('------(xy|)', {
      x: group('p1', 5, [a, c], true),
      y: group('p3', 5, [d, e], true),
    })
  })
  t.same(
    drops.map((d) => [d.frame, d.reason, d.promptId, d.count, d.ids]),
    [[6, 'incomplete-group', 'p2', 1, ['b']]],
  )
  t.end()
})

t.test("the watermarks' completion does not complete the output", (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const a = rollout('a', 'p1', { ts: 0 })
    const b = rollout('b', 'p2', { ts: 20 })
    const c = rollout('c', 'p2', { ts: 21 })
    const source = cold('a----bc-|', { a, b, c })
    const watermarks = cold('--w|', { w: 3 })
    const result = source.pipe(completeGroups({ groupSize: 2, minGroupSize: 1, timeoutMs: 10, watermarks }))
    expectObservable(result).toBe('-----xy-|', {
      x: group('p1', 20, [a], true),
      y: group('p2', 21, [b, c]),
    })
    expectSubscriptions(watermarks.subscriptions).toBe('^--!')
    expectSubscriptions(source.subscriptions).toBe('^-------!')
  })
  t.end()
})

t.test("the watermarks' error errors the output and unsubscribes the source", (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const source = cold('a------|', { a: rollout('a', 'p1', { ts: 0 }) })
    const watermarks = cold<number>('---#', undefined, boom)
    expectObservable(source.pipe(completeGroups({ groupSize: 2, watermarks }))).toBe('---#', undefined, boom)
    expectSubscriptions(source.subscriptions).toBe('^--!')
    expectSubscriptions(watermarks.subscriptions).toBe('^--!')
  })
  t.end()
})

t.test('an exception in onDrop errors the output at that frame and unsubscribes the source', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const a = rollout('a', 'p1', { ts: 0 })
    const b = rollout('b', 'p2', { ts: 6 }) // expires p1, too small
    const source = cold('a-b-b-|', { a, b })
    const onDrop = () => {
      throw boom
    }
    expectObservable(source.pipe(completeGroups({ groupSize: 3, timeoutMs: 5, onDrop }))).toBe('--#', undefined, boom)
    expectSubscriptions(source.subscriptions).toBe('^-!')
  })
  t.end()
})

t.test('an exception in onDrop while expiring on a watermark errors the output', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, hot, expectObservable, expectSubscriptions }) => {
    const source = cold('a-------|', { a: rollout('a', 'p1', { ts: 0 }) })
    const watermarks = hot('---w', { w: 100 })
    const onDrop = () => {
      throw boom
    }
    expectObservable(source.pipe(completeGroups({ groupSize: 3, timeoutMs: 5, watermarks, onDrop }))).toBe('---#', undefined, boom)
    expectSubscriptions(source.subscriptions).toBe('^--!')
    expectSubscriptions(watermarks.subscriptions).toBe('^--!')
  })
  t.end()
})

t.test('an exception in onDrop during the end-of-input flush errors the output', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable }) => {
    const onDrop = () => {
      throw boom
    }
    const source = cold('a-|', { a: rollout('a', 'p1', { ts: 0 }) })
    expectObservable(source.pipe(completeGroups({ groupSize: 3, onDrop }))).toBe('--#', undefined, boom)
  })
  t.end()
})

t.test('an exception in eventTime errors the output at that frame and unsubscribes the source', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const a = rollout('a', 'p1', { ts: 0 })
    const b = rollout('b', 'p1', { ts: 1 })
    const source = cold('-a-b-a-|', { a, b })
    const eventTime = (r: Rollout) => {
      if (r.id === 'b') throw boom
      return r.ts!
    }
    expectObservable(source.pipe(completeGroups({ groupSize: 2, eventTime }))).toBe('---#', undefined, boom)
    expectSubscriptions(source.subscriptions).toBe('^--!')
  })
  t.end()
})

t.test('a source error passes through and the pending groups are neither emitted nor reported', (t) => {
  const testScheduler = scheduler(t)
  const drops: RecordedDrop[] = []
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const source = cold('a-#', { a: rollout('a', 'p1', { ts: 0 }) }, boom)
    expectObservable(source.pipe(completeGroups({ groupSize: 2, onDrop: recordDrops(testScheduler, drops) }))).toBe('--#', undefined, boom)
    expectSubscriptions(source.subscriptions).toBe('^-!')
  })
  t.same(drops, [])
  t.end()
})

t.test('an empty source completes with nothing emitted', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const source = cold<Rollout>('|')
    expectObservable(source.pipe(completeGroups({ groupSize: 2 }))).toBe('|')
    expectSubscriptions(source.subscriptions).toBe('(^!)')
  })
  t.end()
})

t.test('a never source emits nothing and stays subscribed', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const source = cold<Rollout>('-')
    const watermarks = cold<number>('-')
    expectObservable(source.pipe(completeGroups({ groupSize: 2, watermarks }))).toBe('-')
    expectSubscriptions(source.subscriptions).toBe('^')
    expectSubscriptions(watermarks.subscriptions).toBe('^')
  })
  t.end()
})

t.test('an early unsubscribe reaches the source and the watermarks, and flushes nothing', (t) => {
  const testScheduler = scheduler(t)
  const drops: RecordedDrop[] = []
  testScheduler.run(({ cold, hot, expectObservable, expectSubscriptions }) => {
    const a = rollout('a', 'p1', { ts: 1 })
    const b = rollout('b', 'p1', { ts: 2 })
    const c = rollout('c', 'p2', { ts: 3 })
    const source = cold('-ab-c---|', { a, b, c })
    const watermarks = hot<number>('--------')
    const result = source.pipe(completeGroups({ groupSize: 2, watermarks, onDrop: recordDrops(testScheduler, drops) }))
    expectObservable(result, '^-----!').toBe('--x---', { x: group('p1', 2, [a, b]) })
    expectSubscriptions(source.subscriptions).toBe('^-----!')
    expectSubscriptions(watermarks.subscriptions).toBe('^-----!')
  })
  t.same(drops, [], 'unsubscribing is not the end of input: the pending p2 is not reported')
  t.end()
})

t.test('state is released: a re-subscription starts with no pending groups', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const a = rollout('a', 'p1', { ts: 0 })
    const source = cold('a-#', { a }, boom)
    // had the first subscription's pending "a" survived, the retried "a" would complete the group at frame 2
    expectObservable(source.pipe(completeGroups({ groupSize: 2 }), retry(1))).toBe('----#', undefined, boom)
    expectSubscriptions(source.subscriptions).toBe(['^-!', '--^-!'])
  })
  t.end()
})

t.test('state is per subscription: two subscriptions of one operator share neither groups nor watermark', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable }) => {
    const late = rollout('late', 'p1', { ts: 1000 })
    const a = rollout('a', 'p2', { ts: 0 })
    const b = rollout('b', 'p2', { ts: 5 })
    // the first subscription's watermark is 1000; the second must time p2 from 0, not from 1000
    const first = cold('l|', { l: late })
    const second = cold('ab|', { a, b })
    const op = completeGroups({ groupSize: 3, minGroupSize: 1, timeoutMs: 4 })
    expectObservable(first.pipe(op)).toBe('-(x|)', { x: group('p1', 1000, [late], true) })
    expectObservable(second.pipe(op)).toBe('-y(z|)', { y: group('p2', 5, [a], true), z: group('p2', 5, [b], true) })
  })
  t.end()
})
