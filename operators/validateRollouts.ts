import type { OperatorFunction } from 'rxjs'
import type { DropEvent, Rollout } from '../src/core/types.js'
import { DEFAULT_LIMITS, formatFieldError, validateRollout, type FieldError, type ValidationLimits } from '../src/core/validate.js'
import { operate, subscribeUpstream } from './internal/operate.js'

/** Raised downstream for an invalid item when `onInvalid` is `'error'`. */
export class InvalidRolloutError extends Error {
  constructor(
    readonly errors: FieldError[],
    readonly index: number,
  ) {
    super(`invalid rollout at index ${index}: ${errors.map(formatFieldError).join('; ')}`)
    this.name = 'InvalidRolloutError'
  }
}

export interface ValidateRolloutsOptions {
  /** `'error'` (default) errors the stream at the first invalid item; `'drop'` drops and reports it. */
  onInvalid?: 'error' | 'drop'
  limits?: ValidationLimits
  /** Told of every invalid item dropped. */
  onDrop?: (event: DropEvent) => void
}

/**
 * Checks items from an untrusted producer and emits clean rollouts: ids are non-empty
 * strings, rewards are finite numbers or null, `policyVersion`/`groupSize`/`ts` well formed.
 * Every problem names the item's index, id and field.
 *
 * @example
 * untrusted$.pipe(validateRollouts({ onInvalid: 'drop', onDrop: (e) => console.warn(e.detail) }))
 */
export function validateRollouts<P>(options: ValidateRolloutsOptions = {}): OperatorFunction<unknown, Rollout<P>> {
  const { onInvalid = 'error', limits = DEFAULT_LIMITS } = options
  return operate((source, subscriber) => {
    // position of the item in the stream, for error messages
    let index = 0
    subscribeUpstream(source, subscriber, {
      next: (item) => {
        const at = index++
        const result = validateRollout<P>(item, limits)
        if (result.ok) {
          subscriber.next(result.rollout)
          return
        }
        if (onInvalid === 'error') throw new InvalidRolloutError(result.errors, at)
        options.onDrop?.({ reason: 'invalid', rollouts: [], count: 1, detail: `item ${at}: ${result.errors.map(formatFieldError).join('; ')}` })
      },
    })
  })
}
