import type { Observable, OperatorFunction } from 'rxjs'
import type { DropEvent, Rollout } from '../src/core/types.js'
import { operate, subscribeUpstream } from './internal/operate.js'

export interface DropStaleOptions {
  /** Largest accepted lag, in policy versions, behind the trainer's current version. */
  maxStaleness: number
  /**
   * The trainer's policy versions as they are published; the highest one counts. Default: the
   * newest `policyVersion` seen in the stream itself (what a replay of a log can know).
   */
  policyVersions?: Observable<number>
  /** Told of every stale rollout dropped. */
  onDrop?: (event: DropEvent) => void
}

/**
 * Drops rollouts sampled by a policy more than `maxStaleness` versions behind the latest
 * published version (off-policy data the clipped surrogate cannot correct for). Rollouts
 * without `policyVersion`, and all rollouts before the first version is known, pass.
 *
 * @example
 * rollouts$.pipe(dropStale({ maxStaleness: 2, policyVersions: trainerVersion$ }))
 */
export function dropStale<P>(options: DropStaleOptions): OperatorFunction<Rollout<P>, Rollout<P>> {
  const { maxStaleness } = options
  return operate((source, subscriber) => {
    // the latest policy version published by the trainer
    let current = -Infinity
    const published = options.policyVersions
    if (published !== undefined) {
      subscribeUpstream(published, subscriber, {
        next: (version) => {
          if (version > current) current = version
        },
        complete: () => {},
      })
    }
    subscribeUpstream(source, subscriber, {
      next: (rollout) => {
        const version = rollout.policyVersion
        if (published === undefined && version !== undefined && version > current) current = version
        if (version === undefined || current - version <= maxStaleness) {
          subscriber.next(rollout)
          return
        }
        options.onDrop?.({
          reason: 'stale',
          rollouts: [rollout],
          count: 1,
          promptId: rollout.promptId,
          detail: `rollout "${rollout.id}" was sampled by policy ${version}, ${current - version} versions behind ${current} (maxStaleness ${maxStaleness})`,
        })
      },
    })
  })
}
