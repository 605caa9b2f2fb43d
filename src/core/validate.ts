/**
 * Validation of rollouts arriving from outside (JSONL files, WebSocket frames): every
 * problem is reported with the rollout's id and the field, so a producer can be fixed from
 * the message alone.
 */
import type { Rollout } from './types.js'
import { describe } from './describe.js'

/** One problem with one incoming item. */
export interface FieldError {
  /** The rollout id when it could be read. */
  id?: string
  /** Dotted path of the offending field, e.g. `rewards.accuracy`. */
  field: string
  reason: string
}

/** Limits that keep a hostile item from costing more than a normal one. */
export interface ValidationLimits {
  /** Longest id / promptId accepted. */
  maxIdLength: number
  /** Most reward channels accepted on one rollout. */
  maxChannels: number
}

export const DEFAULT_LIMITS: ValidationLimits = { maxIdLength: 512, maxChannels: 256 }

export type Validation<P> = { ok: true; rollout: Rollout<P> } | { ok: false; errors: FieldError[] }

const isPlainObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null && !Array.isArray(value) && !ArrayBuffer.isView(value)

/**
 * Checks one incoming item and returns a clean rollout (only the known fields) or every
 * problem found. Reward values must be finite numbers or null; NaN and ±Infinity are refused.
 * With `adopt` (an item the caller owns, e.g. just decoded from the wire) an item that is
 * already clean is returned as it is instead of being copied: ingest's hot path.
 *
 * @example
 * validateRollout({ id: 'r1', promptId: 'p1', rewards: { accuracy: NaN } })
 * // { ok: false, errors: [{ id: 'r1', field: 'rewards.accuracy', reason: 'not a finite number (NaN)' }] }
 */
export function validateRollout<P = unknown>(raw: unknown, limits: ValidationLimits = DEFAULT_LIMITS, adopt = false): Validation<P> {
  if (adopt && isClean(raw, limits)) return { ok: true, rollout: raw as Rollout<P> }
  if (!isPlainObject(raw)) return { ok: false, errors: [{ field: '(rollout)', reason: `must be an object, got ${describe(raw)}` }] }
  const errors: FieldError[] = []
  const id = typeof raw.id === 'string' && raw.id.length > 0 && raw.id.length <= limits.maxIdLength ? raw.id : undefined
  const fail = (field: string, reason: string) => errors.push(id === undefined ? { field, reason } : { id, field, reason })
  checkKey(raw.id, 'id', limits, fail)
  checkKey(raw.promptId, 'promptId', limits, fail)
  const rewards: Record<string, number | null> = {}
  if (!isPlainObject(raw.rewards)) {
    fail('rewards', `must be an object of channel → number | null, got ${describe(raw.rewards)}`)
  } else {
    const given = raw.rewards
    const channels = Object.keys(given)
    if (channels.length > limits.maxChannels) {
      fail('rewards', `has ${channels.length} channels, at most ${limits.maxChannels} are accepted`)
    } else {
      // undefined (JavaScript callers) is stored as null; everything else must already be right
      for (const channel of channels) {
        const value = given[channel]
        if (value === null || value === undefined || (typeof value === 'number' && Number.isFinite(value))) continue
        fail(`rewards.${channel}`, typeof value === 'number' ? `not a finite number (${value})` : `must be a finite number or null, got ${describe(value)}`)
      }
      for (const channel of channels) rewards[channel] = (given[channel] ?? null) as number | null
    }
  }
  const rollout: Rollout<P> = { id: raw.id as string, promptId: raw.promptId as string, rewards }
  if (raw.policyVersion !== undefined && raw.policyVersion !== null) {
    if (Number.isSafeInteger(raw.policyVersion) && (raw.policyVersion as number) >= 0) rollout.policyVersion = raw.policyVersion as number
    else fail('policyVersion', `must be an integer >= 0, got ${describe(raw.policyVersion)}`)
  }
  if (raw.groupSize !== undefined && raw.groupSize !== null) {
    if (Number.isSafeInteger(raw.groupSize) && (raw.groupSize as number) >= 1) rollout.groupSize = raw.groupSize as number
    else fail('groupSize', `must be an integer >= 1, got ${describe(raw.groupSize)}`)
  }
  if (raw.ts !== undefined && raw.ts !== null) {
    if (typeof raw.ts === 'number' && Number.isFinite(raw.ts)) rollout.ts = raw.ts
    else fail('ts', `must be a finite number (ms), got ${describe(raw.ts)}`)
  }
  if (raw.payload !== undefined) rollout.payload = raw.payload as P
  return errors.length > 0 ? { ok: false, errors } : { ok: true, rollout }
}

const isKey = (value: unknown, limits: ValidationLimits): boolean => typeof value === 'string' && value.length > 0 && value.length <= limits.maxIdLength

/** Whether an item is a rollout exactly as `validateRollout` would build it: no copy needed. */
function isClean(raw: unknown, limits: ValidationLimits): boolean {
  if (!isPlainObject(raw) || !isKey(raw.id, limits) || !isKey(raw.promptId, limits) || !isPlainObject(raw.rewards)) return false
  let channels = 0
  for (const channel in raw.rewards) {
    const value = raw.rewards[channel]
    if (value !== null && !(typeof value === 'number' && Number.isFinite(value))) return false
    if (++channels > limits.maxChannels) return false
  }
  const { policyVersion, groupSize, ts } = raw
  return (
    (policyVersion === undefined || (Number.isSafeInteger(policyVersion) && (policyVersion as number) >= 0)) &&
    (groupSize === undefined || (Number.isSafeInteger(groupSize) && (groupSize as number) >= 1)) &&
    (ts === undefined || (typeof ts === 'number' && Number.isFinite(ts)))
  )
}

function checkKey(value: unknown, field: string, limits: ValidationLimits, fail: (field: string, reason: string) => void): void {
  if (typeof value !== 'string') fail(field, `must be a non-empty string, got ${describe(value)}`)
  else if (value.length === 0) fail(field, 'must be a non-empty string')
  else if (value.length > limits.maxIdLength) fail(field, `is ${value.length} characters long, at most ${limits.maxIdLength} are accepted`)
}

/** One line for a log or an error: `rollout "r9": rewards.accuracy: not a finite number (NaN)`. */
export function formatFieldError(error: FieldError): string {
  return `${error.id === undefined ? 'rollout' : `rollout "${error.id}"`}: ${error.field}: ${error.reason}`
}
