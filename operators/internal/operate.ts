/**
 * The two helpers every operator here is built on, written on RxJS's public API only (no
 * `Subscriber` constructor, no internal imports). What they give over a bare
 * `new Observable(...)` with `source.subscribe({ next, error, complete })`:
 *
 * - an error or an unsubscribe downstream stops the source at once, even a synchronous one
 *   that is still inside its `subscribe` call (a bare subscription would be reachable only
 *   after that call returns, so `range(0, 1e6).pipe(op, take(3))` would run to the end);
 * - an exception in a handler goes downstream as an error instead of up into the source;
 * - `finalize` runs once, whichever way the inner subscription ends.
 */
import { Observable, takeUntil, type OperatorFunction, type Subscriber, type TeardownLogic } from 'rxjs'

/**
 * Builds an operator from a function of (source, downstream subscriber), run afresh for every
 * subscription: state declared inside it lives as long as that subscription.
 *
 * @example
 * const countValues = <T>() =>
 *   operate<T, number>((source, subscriber) => {
 *     let n = 0
 *     subscribeUpstream(source, subscriber, { next: () => subscriber.next(++n) })
 *   })
 */
export function operate<T, R>(init: (source: Observable<T>, subscriber: Subscriber<R>) => TeardownLogic): OperatorFunction<T, R> {
  return (source) => new Observable<R>((subscriber) => init(source, subscriber))
}

/** Handlers of an operator's inner subscription; any that is left out forwards downstream. */
export interface OperatorHandlers<T> {
  next?: (value: T) => void
  error?: (error: unknown) => void
  complete?: () => void
  /** Runs once when the inner subscription ends for any reason: release state here. */
  finalize?: () => void
}

/**
 * Subscribes `handlers` to `source` for the life of `downstream`: an exception in a handler
 * errors `downstream`, and `downstream` ending (error, completion, unsubscribe) unsubscribes
 * `source` at once. A `downstream` that has already ended never subscribes `source`.
 *
 * @example
 * operate<number, number>((source, subscriber) =>
 *   subscribeUpstream(source, subscriber, { next: (x) => subscriber.next(2 * x), finalize: () => cache.clear() }),
 * )
 */
export function subscribeUpstream<T>(source: Observable<T>, downstream: Subscriber<unknown>, handlers: OperatorHandlers<T>): void {
  const {
    next = (value: T) => downstream.next(value),
    error = (reason: unknown) => downstream.error(reason),
    complete = () => downstream.complete(),
  } = handlers
  // false once the inner subscription has ended: a completion after that is takeUntil's, not the source's
  let live = true
  const end = () => {
    if (!live) return
    live = false
    handlers.finalize?.()
  }
  // Emits once when downstream ends. `takeUntil` subscribes it before the source and
  // unsubscribes the source as soon as it emits, from inside a synchronous source's loop too:
  // the public way to reach a source that has not returned its subscription yet.
  const downstreamEnded = new Observable<void>((notify) => {
    const stop = () => {
      end()
      notify.next()
    }
    downstream.add(stop)
    return () => downstream.remove(stop)
  })
  source.pipe(takeUntil(downstreamEnded)).subscribe({
    next: (value) => {
      try {
        next(value)
      } catch (caught) {
        downstream.error(caught)
      }
    },
    error: (reason) => {
      try {
        error(reason)
      } catch (caught) {
        downstream.error(caught)
      }
      end()
    },
    // also reached when `takeUntil` stops the source for a downstream that ended: `live` is false then
    complete: () => {
      if (!live) return
      try {
        complete()
      } catch (caught) {
        downstream.error(caught)
      }
      end()
    },
  })
}
