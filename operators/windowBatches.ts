import { type Observable, type OperatorFunction } from 'rxjs'
import type { Batch, BatchCloseReason, Group } from '../src/core/types.js'
import { operate, subscribeUpstream } from './internal/operate.js'

export interface WindowBatchesOptions {
  /** Groups per batch. */
  size: number
  /** Event-time wait from a batch's first group after which it closes with fewer groups (default: none). */
  maxWaitMs?: number
  /** Watermarks: event times that advance the clock while no group arrives. */
  watermarks?: Observable<number>
}

/**
 * Collects groups, in the order they complete, into batches of `size` groups; a batch also
 * closes when `maxWaitMs` of event time has passed since its first group. At the end of
 * input the last partial batch is flushed.
 *
 * @example
 * groups$.pipe(windowBatches({ size: 16, maxWaitMs: 60_000 }))
 */
export function windowBatches<P>(options: WindowBatchesOptions): OperatorFunction<Group<P>, Batch<P>> {
  const { size, maxWaitMs = Infinity } = options
  return operate((source, subscriber) => {
    // the batch being filled, and the event time at which it must close
    let groups: Group<P>[] = []
    let deadline = Infinity
    // the largest event time seen
    let watermark = -Infinity

    const close = (reason: BatchCloseReason) => {
      const batch: Batch<P> = { groups, ts: watermark, reason }
      groups = []
      deadline = Infinity
      subscriber.next(batch)
    }
    const advance = (time: number) => {
      if (time > watermark) watermark = time
      if (groups.length > 0 && watermark >= deadline) close('maxWait')
    }

    subscribeUpstream(source, subscriber, {
      next: (group) => {
        advance(group.ts)
        if (groups.length === 0) deadline = watermark + maxWaitMs
        groups.push(group)
        if (groups.length >= size) close('full')
      },
      complete: () => {
        if (groups.length > 0) close('flush')
        subscriber.complete()
      },
      finalize: () => {
        groups = []
      },
    })
    if (options.watermarks !== undefined) subscribeUpstream(options.watermarks, subscriber, { next: advance, complete: () => {} })
  })
}
