import t from 'tap'
import { retry } from 'rxjs'
import { windowBatches } from '../../operators/windowBatches.js'
import type { Batch, BatchCloseReason, Group } from '../../src/core/types.js'
import { boom, group, scheduler } from './fixtures/helpers.js'

const batch = (groups: Group[], ts: number, reason: BatchCloseReason): Batch => ({ groups, ts, reason })

t.test("batches of size groups in arrival order, reason 'full', the last one flushed at the end of input", (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const [a, b, c, d, e] = ['p1', 'p2', 'p3', 'p4', 'p5'].map((p, i) => group(p, i + 1))
    const source = cold('-abcde|', { a, b, c, d, e })
    expectObservable(source.pipe(windowBatches({ size: 2 }))).toBe('--x-y-(z|)', {
      x: batch([a, b], 2, 'full'),
      y: batch([c, d], 4, 'full'),
      z: batch([e], 5, 'flush'),
    })
    expectSubscriptions(source.subscriptions).toBe('^-----!')
  })
  t.end()
})

t.test('no flush when the last batch was full', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable }) => {
    const a = group('p1', 1)
    const b = group('p2', 2)
    expectObservable(cold('-ab-|', { a, b }).pipe(windowBatches({ size: 2 }))).toBe('--x-|', { x: batch([a, b], 2, 'full') })
  })
  t.end()
})

t.test("a batch closes with reason 'maxWait' when a group's ts passes its deadline", (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable }) => {
    const a = group('p1', 0)
    const b = group('p2', 5)
    const c = group('p3', 10) // reaches a's deadline (0 + 10): closes [a, b] and opens a new batch
    const d = group('p4', 12)
    const e = group('p5', 13)
    const f = group('p6', 40)
    const result = cold('abcdef|', { a, b, c, d, e, f }).pipe(windowBatches({ size: 3, maxWaitMs: 10 }))
    expectObservable(result).toBe('--x-y-(z|)', {
      x: batch([a, b], 10, 'maxWait'),
      y: batch([c, d, e], 13, 'full'),
      z: batch([f], 40, 'flush'),
    })
  })
  t.end()
})

t.test('a late group ts is clamped to the watermark', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable }) => {
    const a = group('p1', 100)
    const b = group('p2', 50) // late: time does not go back, the batch closes at 100
    const c = group('p3', 60) // late: opens a batch due at 100 + 5, not at 60 + 5
    const d = group('p4', 104) // so d still fits
    const result = cold('abcd|', { a, b, c, d }).pipe(windowBatches({ size: 2, maxWaitMs: 5 }))
    expectObservable(result).toBe('-x-y|', { x: batch([a, b], 100, 'full'), y: batch([c, d], 104, 'full') })
  })
  t.end()
})

t.test("watermarks close a waiting batch with reason 'maxWait' while no group arrives", (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, hot, expectObservable, expectSubscriptions }) => {
    const a = group('p1', 0)
    const b = group('p2', 20)
    const source = cold('a-------b--|', { a, b })
    const watermarks = hot('--w-v-u------', { w: 5, v: 10, u: 100 })
    const result = source.pipe(windowBatches({ size: 3, maxWaitMs: 10, watermarks }))
    // v reaches a's deadline; u finds no batch waiting; b (ts 20 < watermark 100) opens a batch due at 110
    expectObservable(result).toBe('----x------(y|)', {
      x: batch([a], 10, 'maxWait'),
      y: batch([b], 100, 'flush'),
    })
    expectSubscriptions(watermarks.subscriptions).toBe('^----------!')
  })
  t.end()
})

t.test('without maxWaitMs a batch waits for its size however much time passes', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, hot, expectObservable }) => {
    const a = group('p1', 0)
    const b = group('p2', 1e9)
    const watermarks = hot('-w-', { w: 1e12 })
    expectObservable(cold('a--b|', { a, b }).pipe(windowBatches({ size: 2, watermarks }))).toBe('---x|', { x: batch([a, b], 1e12, 'full') })
  })
  t.end()
})

t.test('an empty source completes with no batch', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const source = cold<Group>('|')
    expectObservable(source.pipe(windowBatches({ size: 2, maxWaitMs: 10 }))).toBe('|')
    expectSubscriptions(source.subscriptions).toBe('(^!)')
  })
  t.end()
})

t.test('a never source emits nothing and stays subscribed', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const source = cold<Group>('-')
    const watermarks = cold<number>('-')
    expectObservable(source.pipe(windowBatches({ size: 2, watermarks }))).toBe('-')
    expectSubscriptions(source.subscriptions).toBe('^')
    expectSubscriptions(watermarks.subscriptions).toBe('^')
  })
  t.end()
})

t.test('a source error passes through and the partial batch is discarded', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const source = cold('a-#', { a: group('p1', 0) }, boom)
    expectObservable(source.pipe(windowBatches({ size: 2 }))).toBe('--#', undefined, boom)
    expectSubscriptions(source.subscriptions).toBe('^-!')
  })
  t.end()
})

t.test("the watermarks' completion does not complete the output; their error errors it", (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const a = group('p1', 0)
    const b = group('p2', 1)
    const completing = cold('-w|', { w: 0 })
    const source1 = cold('a---b|', { a, b })
    expectObservable(source1.pipe(windowBatches({ size: 2, watermarks: completing }))).toBe('----x|', { x: batch([a, b], 1, 'full') })
    expectSubscriptions(completing.subscriptions).toBe('^-!')

    const erroring = cold<number>('--#', undefined, boom)
    const source2 = cold('a---b|', { a, b })
    expectObservable(source2.pipe(windowBatches({ size: 2, watermarks: erroring }))).toBe('--#', undefined, boom)
    expectSubscriptions(source2.subscriptions).toBe('^-!')
  })
  t.end()
})

t.test('an exception while reading a group (a throwing ts getter) errors the output and unsubscribes the source', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const bad = {
      promptId: 'p2',
      rollouts: [],
      partial: false,
      get ts(): number {
        throw boom
      },
    }
    const source = cold('a-b-a|', { a: group('p1', 0), b: bad })
    expectObservable(source.pipe(windowBatches({ size: 3 }))).toBe('--#', undefined, boom)
    expectSubscriptions(source.subscriptions).toBe('^-!')
  })
  t.end()
})

t.test('an early unsubscribe reaches the source and the watermarks, and flushes nothing', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, hot, expectObservable, expectSubscriptions }) => {
    const a = group('p1', 1)
    const b = group('p2', 2)
    const c = group('p3', 3)
    const source = cold('-abc----|', { a, b, c })
    const watermarks = hot<number>('---------')
    expectObservable(source.pipe(windowBatches({ size: 2, watermarks })), '^---!').toBe('--x--', { x: batch([a, b], 2, 'full') })
    expectSubscriptions(source.subscriptions).toBe('^---!')
    expectSubscriptions(watermarks.subscriptions).toBe('^---!')
  })
  t.end()
})

t.test('state is released: a re-subscription starts with an empty batch and a fresh clock', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const a = group('p1', 0)
    const source = cold('a-#', { a }, boom)
    // a leftover "a" from the first subscription would fill a batch of two at frame 2
    expectObservable(source.pipe(windowBatches({ size: 2 }), retry(1))).toBe('----#', undefined, boom)
    expectSubscriptions(source.subscriptions).toBe(['^-!', '--^-!'])
  })
  t.end()
})

t.test('state is per subscription: concurrent subscriptions of one operator do not share batches or clocks', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable }) => {
    const op = windowBatches({ size: 2, maxWaitMs: 10 })
    const early = group('e', 1000)
    const a = group('a', 0)
    const b = group('b', 5)
    expectObservable(cold('e|', { e: early }).pipe(op)).toBe('-(x|)', { x: batch([early], 1000, 'flush') })
    expectObservable(cold('-ab|', { a, b }).pipe(op)).toBe('--y|', { y: batch([a, b], 5, 'full') })
  })
  t.end()
})
