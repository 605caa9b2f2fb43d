/**
 * The two helpers RxJS builds its own operators on (`operate` and `OperatorSubscriber`,
 * internal to rxjs 7), reproduced here because they are not exported. What they give over a
 * bare `new Observable(...)`: the inner subscriber is linked to the downstream one before the
 * source is subscribed, so an error or an unsubscribe stops a synchronous source at once,
 * and an exception in a handler goes downstream instead of up into the source.
 */
import { Observable, Subscriber, type OperatorFunction, type TeardownLogic } from 'rxjs'

/** Builds an operator from a function of (source, downstream subscriber). */
export function operate<T, R>(init: (source: Observable<T>, subscriber: Subscriber<R>) => TeardownLogic): OperatorFunction<T, R> {
  return (source) => new Observable<R>((subscriber) => init(source, subscriber))
}

/** Handlers of an operator's inner subscriber; any that is left out forwards downstream. */
export interface OperatorHandlers<T> {
  next?: (value: T) => void
  error?: (error: unknown) => void
  complete?: () => void
  /** Runs once when the inner subscription ends for any reason: release state here. */
  finalize?: () => void
}

/** A subscriber whose handler exceptions go to `destination.error` and whose life ends with the destination's. */
export class OperatorSubscriber<T> extends Subscriber<T> {
  private readonly onFinalize: (() => void) | undefined

  constructor(destination: Subscriber<unknown>, handlers: OperatorHandlers<T>) {
    // Subscriber's constructor adds this to the destination, so unsubscribing downstream reaches us
    super(destination)
    this.onFinalize = handlers.finalize
    const { next, error, complete } = handlers
    if (next !== undefined) {
      this._next = (value: T) => {
        try {
          next(value)
        } catch (caught) {
          destination.error(caught)
        }
      }
    }
    if (error !== undefined) {
      this._error = (reason: unknown) => {
        try {
          error(reason)
        } catch (caught) {
          destination.error(caught)
        }
        this.unsubscribe()
      }
    }
    if (complete !== undefined) {
      this._complete = () => {
        try {
          complete()
        } catch (caught) {
          destination.error(caught)
        }
        this.unsubscribe()
      }
    }
  }

  override unsubscribe(): void {
    if (this.closed) return
    super.unsubscribe()
    this.onFinalize?.()
  }
}
