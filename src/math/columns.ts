/**
 * Lays a batch of rollout groups out as float64 columns, the form the math works on.
 */
import { describe } from '../core/describe.js'
import type { BatchColumns, Group } from '../core/types.js'

/**
 * Builds one column per channel (NaN where a rollout did not score it) and the group offsets.
 * A value that is neither null/absent nor a finite number is an error naming the rollout,
 * the channel and the value: a user step upstream produced it, and silently treating it as
 * "not scored" would hide a bug.
 *
 * @example
 * batchColumns([{ promptId: 'p', partial: false, ts: 0, rollouts: [{ id: 'a', promptId: 'p', rewards: { acc: 1 } }] }], ['acc'])
 * // { offsets: Int32Array [0, 1], columns: { acc: Float64Array [1] } }
 */
export function batchColumns(groups: readonly Group[], channels: readonly string[]): BatchColumns {
  const offsets = new Int32Array(groups.length + 1)
  for (let g = 0; g < groups.length; g++) offsets[g + 1] = offsets[g] + groups[g].rollouts.length
  const n = offsets[groups.length]
  const columns: Record<string, Float64Array> = {}
  // one buffer for all the columns: a backing store per column costs more than the copying
  const storage = new Float64Array(n * channels.length)
  for (let c = 0; c < channels.length; c++) {
    const channel = channels[c]
    const column = storage.subarray(c * n, (c + 1) * n)
    let i = 0
    for (const group of groups) {
      for (const rollout of group.rollouts) {
        const value = rollout.rewards[channel]
        if (typeof value === 'number' && Number.isFinite(value)) column[i] = value
        else if (value === null || value === undefined) column[i] = NaN
        else
          throw new RangeError(
            `rollout "${rollout.id}" (prompt "${rollout.promptId}"): rewards.${channel} is ${describe(value)}, expected a finite number or null`,
          )
        i++
      }
    }
    columns[channel] = column
  }
  return { offsets, columns }
}
