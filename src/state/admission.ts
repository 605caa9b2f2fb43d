/**
 * Admission of a producer frame's items, the same on one node (durableEngine.ts) and on a
 * cluster node (cluster/clusterEngine.ts): each item validated on its own, a rollout sampled
 * by a policy older than the trainer's version − `maxAsync` refused as stale (staleness by
 * admission, before anything is logged), and every refusal counted by its reason.
 */
import type { Config } from '../core/config.js'
import type { Rollout } from '../core/types.js'
import { validateRollout, type ValidationLimits } from '../core/validate.js'
import type { IngestCounters } from './engineStore.js'

/** One refused item of an ingest frame. */
export interface RejectedItem {
  index: number
  id?: string
  field: string
  reason: string
}

/** The valid rollouts of a frame (with their indices in it) and the refused items. */
export interface Admission {
  valid: Rollout[]
  validIndex: number[]
  rejected: RejectedItem[]
}

/** The metric label of a rejection: the top-level field at fault (`rewards`, `id`…) or `shape`. */
export function rejectionReason(field: string): string {
  return field === '(rollout)' ? 'shape' : field.split('.')[0]
}

/**
 * Validates `items` and refuses stale ones; counts each refusal in `counters.rejected`.
 * `raw`: the payloads are the producer's bytes (`RawPayload`), kept as they are.
 * `policyVersion`: the trainer's newest version (undefined while none was reported).
 *
 * @example
 * const { valid, rejected } = admitItems(items, config, limits, true, engine.policyVersion, counters)
 */
export function admitItems(
  items: readonly unknown[],
  config: Pick<Config, 'maxAsync'>,
  limits: ValidationLimits,
  raw: boolean,
  policyVersion: number | undefined,
  counters: IngestCounters,
): Admission {
  const rejected: RejectedItem[] = []
  const valid: Rollout[] = []
  const validIndex: number[] = []
  const oldest = config.maxAsync === undefined || policyVersion === undefined ? undefined : policyVersion - config.maxAsync
  for (let index = 0; index < items.length; index++) {
    const result = validateRollout(items[index], limits, raw)
    if (result.ok) {
      const version = result.rollout.policyVersion
      if (version !== undefined && oldest !== undefined && version < oldest) {
        const reason = `stale: sampled by policy version ${version}, the trainer is at ${policyVersion} and maxAsync is ${config.maxAsync} (needs >= ${oldest}): sync the weights`
        rejected.push({ index, id: result.rollout.id, field: 'policyVersion', reason })
        counters.rejected.stale = (counters.rejected.stale ?? 0) + 1
        continue
      }
      valid.push(result.rollout)
      validIndex.push(index)
      continue
    }
    for (const error of result.errors) rejected.push({ index, ...error })
    const reason = rejectionReason(result.errors[0].field)
    counters.rejected[reason] = (counters.rejected[reason] ?? 0) + 1
  }
  return { valid, validIndex, rejected }
}
