/**
 * Lays a batch of rollout groups out as float64 columns, the form the math works on.
 */
import { describe } from '../core/describe.js'
import type { BatchColumns, Group, Rollout } from '../core/types.js'

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
  for (let g = 0; g < groups.length; g++) offsets[g + 1] = offsets[g] + sizeOf(groups[g], channels)
  const n = offsets[groups.length]
  const columns: Record<string, Float64Array> = {}
  // one buffer for all the columns: a backing store per column costs more than the copying
  const storage = new Float64Array(n * channels.length)
  for (let c = 0; c < channels.length; c++) {
    const channel = channels[c]
    const column = storage.subarray(c * n, (c + 1) * n)
    let i = 0
    for (const group of groups) {
      const given = group.rewardColumns
      const values = given?.values[channel]
      if (values !== undefined) {
        // the same values and the same check as below, from the group's columns
        for (let k = 0, at = given!.start; k < given!.size; k++, at++) {
          const value = values[at]
          if (value - value !== 0 && !Number.isNaN(value)) throw notFinite(group.rollouts[k], channel, value)
          column[i++] = value
        }
        continue
      }
      for (const rollout of group.rollouts) {
        const value = rollout.rewards[channel]
        if (typeof value === 'number' && Number.isFinite(value)) column[i] = value
        else if (value === null || value === undefined) column[i] = NaN
        else throw notFinite(rollout, channel, value)
        i++
      }
    }
    columns[channel] = column
  }
  return { offsets, columns }
}

/** A group's rollout count: its reward columns' length when it has every channel's, else its rollouts'. */
function sizeOf(group: Group, channels: readonly string[]): number {
  const given = group.rewardColumns
  if (given !== undefined && channels.length > 0 && channels.every((channel) => given.values[channel] !== undefined)) return given.size
  return group.rollouts.length
}

function notFinite(rollout: Rollout, channel: string, value: unknown): RangeError {
  return new RangeError(`rollout "${rollout.id}" (prompt "${rollout.promptId}"): rewards.${channel} is ${describe(value)}, expected a finite number or null`)
}
