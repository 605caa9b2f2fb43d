import t from 'tap'
import { Observable, range, take, tap, type OperatorFunction, type Subscriber } from 'rxjs'
import { operate, subscribeUpstream, type OperatorHandlers } from '../../operators/internal/operate.js'
import { boom, scheduler } from './fixtures/helpers.js'

/** An operator whose inner subscriber has the given handlers; `finalized` counts finalize calls. */
function withHandlers<T>(handlers: (subscriber: Subscriber<T>) => OperatorHandlers<T>, counter?: { finalized: number }): OperatorFunction<T, T> {
  return operate<T, T>((source, subscriber) => {
    const own = handlers(subscriber)
    subscribeUpstream(source, subscriber, {
      ...own,
      finalize: () => {
        if (counter !== undefined) counter.finalized++
        own.finalize?.()
      },
    })
  })
}

t.test('an inner subscriber without handlers mirrors the source', (t) => {
  const testScheduler = scheduler(t)
  const counter = { finalized: 0 }
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const source = cold('-a-b-|')
    expectObservable(source.pipe(withHandlers(() => ({}), counter))).toBe('-a-b-|')
    expectSubscriptions(source.subscriptions).toBe('^----!')
  })
  t.equal(counter.finalized, 1, 'finalize runs once on completion')
  t.end()
})

t.test('a source error passes through and finalizes', (t) => {
  const testScheduler = scheduler(t)
  const counter = { finalized: 0 }
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const source = cold('-a-#', undefined, boom)
    expectObservable(source.pipe(withHandlers(() => ({}), counter))).toBe('-a-#', undefined, boom)
    expectSubscriptions(source.subscriptions).toBe('^--!')
  })
  t.equal(counter.finalized, 1)
  t.end()
})

t.test('an exception in the next handler goes downstream and unsubscribes the source at that frame', (t) => {
  const testScheduler = scheduler(t)
  const counter = { finalized: 0 }
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const source = cold('-a-b-c-|')
    const op = withHandlers<string>(
      (subscriber) => ({
        next: (value) => {
          if (value === 'b') throw boom
          subscriber.next(value.toUpperCase())
        },
      }),
      counter,
    )
    expectObservable(source.pipe(op)).toBe('-A-#', { A: 'A' }, boom)
    expectSubscriptions(source.subscriptions).toBe('^--!')
  })
  t.equal(counter.finalized, 1, 'finalize runs once')
  t.end()
})

t.test('an error handler replaces the forwarding, and its exception goes downstream', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const recovering = cold('-a-#', undefined, boom)
    const recover = withHandlers<string>((subscriber) => ({
      error: () => {
        subscriber.next('r')
        subscriber.complete()
      },
    }))
    expectObservable(recovering.pipe(recover)).toBe('-a-(r|)')
    expectSubscriptions(recovering.subscriptions).toBe('^--!')

    const failing = cold('-a-#', undefined, new Error('original'))
    const rethrow = withHandlers<string>(() => ({
      error: () => {
        throw boom
      },
    }))
    expectObservable(failing.pipe(rethrow)).toBe('-a-#', undefined, boom)
    expectSubscriptions(failing.subscriptions).toBe('^--!')
  })
  t.end()
})

t.test('a complete handler can emit before completing, and its exception goes downstream', (t) => {
  const testScheduler = scheduler(t)
  const counter = { finalized: 0 }
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const source = cold('-a-|')
    const last = withHandlers<string>(
      (subscriber) => ({
        complete: () => {
          subscriber.next('z')
          subscriber.complete()
        },
      }),
      counter,
    )
    expectObservable(source.pipe(last)).toBe('-a-(z|)')
    expectSubscriptions(source.subscriptions).toBe('^--!')

    const other = cold('-a-|')
    const throwing = withHandlers<string>(() => ({
      complete: () => {
        throw boom
      },
    }))
    expectObservable(other.pipe(throwing)).toBe('-a-#', undefined, boom)
    expectSubscriptions(other.subscriptions).toBe('^--!')
  })
  t.equal(counter.finalized, 1)
  t.end()
})

t.test('an exception in init errors the subscriber without subscribing the source', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const source = cold('-a-|')
    const broken = operate<string, string>(() => {
      throw boom
    })
    expectObservable(source.pipe(broken)).toBe('#', undefined, boom)
    expectSubscriptions(source.subscriptions).toBe([])
  })
  t.end()
})

t.test('empty and never sources', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const empty = cold('|')
    expectObservable(empty.pipe(withHandlers(() => ({})))).toBe('|')
    expectSubscriptions(empty.subscriptions).toBe('(^!)')
    const never = cold('-')
    expectObservable(never.pipe(withHandlers(() => ({})))).toBe('-')
    expectSubscriptions(never.subscriptions).toBe('^')
  })
  t.end()
})

t.test('an early unsubscribe reaches the source and finalizes once', (t) => {
  const testScheduler = scheduler(t)
  const counter = { finalized: 0 }
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const source = cold('-a-b-c-|')
    expectObservable(source.pipe(withHandlers(() => ({}), counter)), '^--!').toBe('-a-')
    expectSubscriptions(source.subscriptions).toBe('^--!')
  })
  t.equal(counter.finalized, 1)
  t.end()
})

t.test('a synchronous source stops as soon as downstream unsubscribes', (t) => {
  let produced = 0
  const seen: number[] = []
  const counter = { finalized: 0 }
  range(0, 1_000_000)
    .pipe(
      tap(() => produced++),
      withHandlers<number>(() => ({}), counter),
      take(3),
    )
    .subscribe((x) => seen.push(x))
  t.same(seen, [0, 1, 2])
  t.equal(produced, 3, 'the source emitted nothing after take(3) was satisfied')
  t.equal(counter.finalized, 1)
  t.end()
})

t.test('a downstream that has already ended never subscribes the source, and the inner subscription finalizes once', (t) => {
  let subscribed = 0
  let finalized = 0
  const source = new Observable<number>(() => {
    subscribed++
  })
  const seen: string[] = []
  new Observable<number>((downstream) => {
    downstream.complete()
    subscribeUpstream(source, downstream, { next: () => seen.push('next'), complete: () => seen.push('complete'), finalize: () => finalized++ })
  }).subscribe()
  t.equal(subscribed, 0)
  t.same(seen, [], 'the stop is not taken for a completion of the source')
  t.equal(finalized, 1)
  t.end()
})

t.test('an error downstream stops a synchronous source at once and finalizes once', (t) => {
  let produced = 0
  let finalized = 0
  let failure: unknown
  range(0, 1_000_000)
    .pipe(
      tap(() => produced++),
      operate<number, number>((source, subscriber) =>
        subscribeUpstream(source, subscriber, {
          next: (x) => (x === 2 ? subscriber.error(boom) : subscriber.next(x)),
          finalize: () => finalized++,
        }),
      ),
    )
    .subscribe({ error: (error: unknown) => (failure = error) })
  t.equal(failure, boom)
  t.equal(produced, 3)
  t.equal(finalized, 1)
  t.end()
})

t.test('an inner subscription that ends before downstream (a side input completing) finalizes then, and lets go of downstream', (t) => {
  const testScheduler = scheduler(t)
  let finalized = 0
  testScheduler.run(({ cold, hot, expectObservable, expectSubscriptions }) => {
    const side = hot('-x|')
    const source = cold('----a|')
    const op = operate<string, string>((main, subscriber) => {
      subscribeUpstream(main, subscriber, {})
      subscribeUpstream(side, subscriber, { next: () => {}, complete: () => {}, finalize: () => finalized++ })
    })
    expectObservable(source.pipe(op)).toBe('----a|')
    expectSubscriptions(side.subscriptions).toBe('^-!')
  })
  t.equal(finalized, 1)
  t.end()
})

t.test('the operator is reusable: each subscription runs init afresh', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable }) => {
    // counts values per subscription: shared state would keep counting across subscriptions
    const counting = operate<string, number>((source, subscriber) => {
      let n = 0
      subscribeUpstream(source, subscriber, { next: () => subscriber.next(++n) })
    })
    const result: Observable<number> = cold('-a-b|').pipe(counting)
    expectObservable(result).toBe('-1-2|', { 1: 1, 2: 2 })
    expectObservable(result).toBe('-1-2|', { 1: 1, 2: 2 })
  })
  t.end()
})
