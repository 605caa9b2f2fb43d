/** Builders and fast-check arbitraries for batches used across the math tests. */
import fc from 'fast-check'
import type { Normalize } from '../../src/core/config.js'
import type { BatchColumns } from '../../src/math/advantages.js'
import type { Cell } from './reference.js'

export const GRPO: Normalize = { center: 'group', scale: 'group', std: 'sample', eps: 1e-6, minStd: 1e-6 }

/** Lays groups of cells out as one column (null → NaN) with its offsets. */
export function columnOf(groups: Cell[][]): { values: Float64Array; offsets: Int32Array } {
  const offsets = new Int32Array(groups.length + 1)
  groups.forEach((g, i) => (offsets[i + 1] = offsets[i] + g.length))
  const values = Float64Array.from(groups.flat().map((x) => (x === null ? NaN : x)))
  return { values, offsets }
}

/** Several channels over the same group shape, as BatchColumns. */
export function columnsOf(channels: Record<string, Cell[][]>): BatchColumns {
  const entries = Object.entries(channels)
  const columns: Record<string, Float64Array> = {}
  let offsets: Int32Array = new Int32Array(1)
  for (const [name, groups] of entries) {
    const c = columnOf(groups)
    columns[name] = c.values
    offsets = c.offsets
  }
  return { offsets, columns }
}

/** A group shape: number of groups and sizes. */
export const shapeArb = fc.array(fc.integer({ min: 1, max: 8 }), { minLength: 1, maxLength: 6 })

/** A channel filled on a given shape; `cell` decides the values. */
export const channelOn = (shape: number[], cell: fc.Arbitrary<Cell>) => fc.tuple(...shape.map((n) => fc.array(cell, { minLength: n, maxLength: n })))

/** Reward-like values: binary, small integers, reals, and sometimes missing. */
export const cellArb: fc.Arbitrary<Cell> = fc.oneof(
  { weight: 1, arbitrary: fc.constant(null) },
  { weight: 3, arbitrary: fc.constantFrom(0, 1) },
  { weight: 3, arbitrary: fc.integer({ min: -5, max: 5 }) },
  { weight: 3, arbitrary: fc.double({ min: -100, max: 100, noNaN: true, noDefaultInfinity: true }) },
)

export const normalizeArb: fc.Arbitrary<Normalize> = fc.record({
  center: fc.constantFrom('group' as const, 'batch' as const),
  scale: fc.constantFrom('group' as const, 'batch' as const, 'none' as const),
  std: fc.constantFrom('sample' as const, 'population' as const),
  eps: fc.constantFrom(0, 1e-6, 1e-3),
  minStd: fc.constantFrom(0, 1e-6, 1e-2),
})

/** |a − b| within an absolute-plus-relative tolerance. */
export const close = (a: number, b: number, tol = 1e-9): boolean => Math.abs(a - b) <= tol * (1 + Math.abs(a) + Math.abs(b))
