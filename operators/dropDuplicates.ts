import type { OperatorFunction } from 'rxjs'
import type { DropEvent, Rollout } from '../src/core/types.js'
import { operate, subscribeUpstream } from './internal/operate.js'

/** Where seen ids are remembered; a Set by default, an LMDB index in the durable engine. */
export interface SeenIds {
  has(id: string): boolean
  add(id: string): unknown
}

export interface DropDuplicatesOptions {
  /** The memory of ids (default: a new Set per subscription). */
  seen?: SeenIds
  /** Told of every duplicate dropped. */
  onDrop?: (event: DropEvent) => void
}

/**
 * Lets each rollout id through once, ever: a rollout whose id was already seen is dropped
 * and reported (an id is the idempotency key, DESIGN §2).
 *
 * @example
 * rollouts$.pipe(dropDuplicates({ onDrop: (e) => console.warn(e.detail) }))
 */
export function dropDuplicates<P>(options: DropDuplicatesOptions = {}): OperatorFunction<Rollout<P>, Rollout<P>> {
  return operate((source, subscriber) => {
    // ids seen so far (a default Set is released with the subscription)
    const seen = options.seen ?? new Set<string>()
    subscribeUpstream(source, subscriber, {
      next: (rollout) => {
        if (!seen.has(rollout.id)) {
          seen.add(rollout.id)
          subscriber.next(rollout)
          return
        }
        options.onDrop?.({
          reason: 'duplicate',
          rollouts: [rollout],
          count: 1,
          promptId: rollout.promptId,
          detail: `rollout "${rollout.id}" was already seen`,
        })
      },
    })
  })
}
