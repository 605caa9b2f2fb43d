/**
 * Slow, obviously-correct float64 references for the advantage math, written from DESIGN §3
 * with plain arrays and no shared code, to check the typed-array implementation against.
 */
import type { Normalize } from '../../src/core/config.js'

export type Cell = number | null

const valid = (xs: Cell[]): number[] => xs.filter((x): x is number => x !== null)
const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length
const std = (xs: number[], population: boolean): number => {
  const m = mean(xs)
  const dof = population ? xs.length : xs.length - 1
  return dof > 0 ? Math.sqrt(xs.reduce((a, x) => a + (x - m) ** 2, 0) / dof) : NaN
}

/** Normalises one channel given as groups of cells; returns the same shape. */
export function referenceNormalize(groups: Cell[][], opts: Normalize): { values: number[][]; silent: number } {
  const population = opts.std === 'population'
  const all = valid(groups.flat())
  const batchMean = mean(all)
  const batchStd = std(all, population)
  let silent = 0
  const values = groups.map((group) => {
    const xs = valid(group)
    const groupMean = mean(xs)
    const groupStd = std(xs, population)
    const flat = !(groupStd > opts.minStd)
    if (xs.length < 2 || flat) silent++
    const zero = group.map(() => 0)
    if (xs.length < 2) return zero
    if (opts.scale === 'batch' && !(batchStd > opts.minStd)) return zero
    if (flat && (opts.center === 'group' || opts.scale === 'group')) return zero
    const c = opts.center === 'group' ? groupMean : batchMean
    return group.map((x) => {
      if (x === null) return 0
      if (opts.scale === 'none') return x - c
      const s = opts.scale === 'group' ? groupStd : batchStd
      return (x - c) / (s + opts.eps)
    })
  })
  return { values, silent }
}

export interface ReferenceTerm {
  groups: Cell[][]
  coefficient: number
  normalize: Normalize
}

/** The combined advantage, both aggregations, scaleByLambda and whitening. */
export function referenceAdvantages(
  terms: ReferenceTerm[],
  settings: {
    aggregation: 'normalize-then-sum' | 'sum-then-normalize'
    lambdaSum: number
    scaleByLambda: boolean
    whiten: 'none' | 'batch'
    normalize: Normalize
  },
): number[] {
  const shape = terms[0].groups
  let out: number[][]
  if (settings.aggregation === 'normalize-then-sum') {
    out = shape.map((g) => g.map(() => 0))
    for (const term of terms) {
      const n = referenceNormalize(term.groups, term.normalize).values
      out = out.map((g, i) => g.map((a, j) => a + term.coefficient * n[i][j]))
    }
  } else {
    const combined: Cell[][] = shape.map((g, i) =>
      g.map((_, j) => {
        let sum = 0
        for (const term of terms) {
          if (term.coefficient === 0) continue
          const x = term.groups[i][j]
          if (x === null) return null
          sum += term.coefficient * x
        }
        return sum
      }),
    )
    out = referenceNormalize(combined, settings.normalize).values
  }
  let flat = out.flat()
  if (settings.scaleByLambda && settings.lambdaSum !== 0) flat = flat.map((a) => a / (1 + settings.lambdaSum))
  if (settings.whiten === 'batch') {
    const m = mean(flat)
    const s = std(flat, settings.normalize.std === 'population')
    flat = s > settings.normalize.minStd ? flat.map((a) => (a - m) / (s + settings.normalize.eps)) : flat.map(() => 0)
  }
  return flat
}
