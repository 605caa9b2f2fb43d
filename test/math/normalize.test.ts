import fc from 'fast-check'
import t from 'tap'
import { normalizeChannel } from '../../src/math/normalize.js'
import { rangeStats } from '../../src/math/stats.js'
import { cellArb, channelOn, close, columnOf, GRPO, normalizeArb, shapeArb } from '../support/batches.js'
import { referenceNormalize, type Cell } from '../support/reference.js'

const run = (groups: Cell[][], opts = GRPO) => {
  const { values, offsets } = columnOf(groups)
  const out = new Float64Array(values.length).fill(99)
  const silent = normalizeChannel(values, offsets, opts, out)
  return { out: Array.from(out), silent }
}

t.test('GRPO: (r − mean) / (sample std + eps), the formula TRL and verl use', (t) => {
  const rewards = [1, 0, 0, 1, 1, 0.5]
  const m = rewards.reduce((a, b) => a + b) / rewards.length
  const s = Math.sqrt(rewards.reduce((a, r) => a + (r - m) ** 2, 0) / (rewards.length - 1))
  const { out, silent } = run([rewards])
  t.equal(silent, 0)
  out.forEach((a, i) => t.ok(close(a, (rewards[i] - m) / (s + 1e-6), 1e-12), `rollout ${i}`))
  t.end()
})

t.test("Dr. GRPO (scale: 'none'): exactly r − mean", (t) => {
  const rewards = [0.25, 1, 0, 0.75]
  const m = rewards.reduce((a, b) => a + b) / rewards.length
  const { out } = run([rewards], { ...GRPO, scale: 'none' })
  t.same(
    out,
    rewards.map((r) => r - m),
  )
  t.end()
})

t.test('agrees with the slow float64 reference for every setting', (t) => {
  fc.assert(
    fc.property(
      shapeArb.chain((shape) => fc.tuple(channelOn(shape, cellArb), normalizeArb)),
      ([groups, opts]) => {
        const ours = run(groups, opts)
        const ref = referenceNormalize(groups, opts)
        t.equal(ours.silent, ref.silent)
        const flat = ref.values.flat()
        return ours.out.every((a, i) => close(a, flat[i], 1e-9))
      },
    ),
    { numRuns: 500 },
  )
  t.end()
})

t.test('invariant to shifting and positively scaling the rewards (GRPO, eps = 0)', (t) => {
  const opts = { ...GRPO, eps: 0 }
  fc.assert(
    fc.property(
      shapeArb.chain((shape) => channelOn(shape, fc.oneof(fc.constant(null), fc.integer({ min: -5, max: 5 })))),
      fc.double({ min: 0.1, max: 10, noNaN: true }),
      fc.double({ min: -100, max: 100, noNaN: true }),
      (groups, a, b) => {
        const base = run(groups, opts).out
        const moved = run(
          groups.map((g) => g.map((x) => (x === null ? null : a * x + b))),
          opts,
        ).out
        return base.every((x, i) => close(x, moved[i], 1e-7))
      },
    ),
  )
  t.end()
})

t.test('negating the rewards negates the advantages; Dr. GRPO is shift-invariant and scale-equivariant', (t) => {
  fc.assert(
    fc.property(
      shapeArb.chain((shape) => channelOn(shape, fc.integer({ min: -5, max: 5 }))),
      fc.double({ min: 0.1, max: 10, noNaN: true }),
      fc.double({ min: -100, max: 100, noNaN: true }),
      (groups, a, b) => {
        const base = run(groups).out
        const negated = run(groups.map((g) => g.map((x) => -(x as number)))).out
        const dr = { ...GRPO, scale: 'none' as const }
        const drBase = run(groups, dr).out
        const drMoved = run(
          groups.map((g) => g.map((x) => a * (x as number) + b)),
          dr,
        ).out
        return base.every((x, i) => close(x, -negated[i] || 0, 1e-9)) && drBase.every((x, i) => close(a * x, drMoved[i], 1e-7))
      },
    ),
  )
  t.end()
})

t.test('zero-variance and single-valued groups contribute 0 and are counted as silent', (t) => {
  const { out, silent } = run([[1, 1, 1], [0.3], [null, 0.7, null], [1, 0]])
  t.same(out.slice(0, 7), [0, 0, 0, 0, 0, 0, 0])
  t.ok(close(out[7], 0.7071, 1e-4))
  t.equal(silent, 3)
  fc.assert(
    fc.property(fc.double({ min: -1e6, max: 1e6, noNaN: true }), fc.integer({ min: 1, max: 64 }), (x, n) => {
      const r = run([new Array<Cell>(n).fill(x)])
      return r.silent === 1 && r.out.every((a) => a === 0)
    }),
  )
  t.end()
})

t.test('missing values are left out of the statistics, never treated as 0', (t) => {
  fc.assert(
    fc.property(
      fc.array(fc.integer({ min: -5, max: 5 }), { minLength: 2, maxLength: 8 }),
      fc.array(fc.boolean(), { minLength: 8, maxLength: 8 }),
      (xs, holes) => {
        // the same values with nulls interleaved normalise exactly like the values alone
        const withHoles: Cell[] = []
        xs.forEach((x, i) => {
          if (holes[i]) withHoles.push(null)
          withHoles.push(x)
        })
        const dense = run([xs]).out
        const sparse = run([withHoles]).out
        const sparseValues = sparse.filter((_, i) => withHoles[i] !== null)
        const holesAreZero = sparse.every((a, i) => withHoles[i] !== null || a === 0)
        return holesAreZero && dense.every((a, i) => a === sparseValues[i])
      },
    ),
  )
  t.end()
})

t.test('batch centring and scaling; a flat batch contributes nothing', (t) => {
  const batch = run(
    [
      [1, 1],
      [0, 0],
    ],
    { ...GRPO, center: 'batch', scale: 'batch' },
  )
  // batch mean 0.5, sample std 0.577…: zero-variance groups still carry the batch-relative signal
  t.ok(close(batch.out[0], 0.5 / (Math.sqrt(1 / 3) + 1e-6), 1e-12))
  t.equal(batch.silent, 2)
  const flat = run(
    [
      [2, 2],
      [2, 2],
    ],
    { ...GRPO, center: 'batch', scale: 'batch' },
  )
  t.same(flat.out, [0, 0, 0, 0])
  const lite = run(
    [
      [1, 0],
      [1, 1],
    ],
    { ...GRPO, center: 'group', scale: 'batch' },
  )
  t.same(lite.out.slice(2), [0, 0], 'a flat group with a group centre is silent')
  t.end()
})

t.test('the two-pass variance stays exact where Σx² − n·mean² cancels', (t) => {
  const big = Float64Array.of(1e9 + 1, 1e9 + 2, 1e9 + 3)
  const stats = rangeStats(big, 0, 3, false)
  t.equal(stats.std, 1)
  const naive = Math.sqrt((Array.from(big).reduce((a, x) => a + x * x, 0) - 3 * stats.mean ** 2) / 2)
  t.not(naive, 1, 'the one-pass form is visibly wrong here')
  t.same(rangeStats(Float64Array.of(NaN, NaN), 0, 2, false), { count: 0, mean: NaN, std: NaN })
  t.equal(rangeStats(Float64Array.of(4), 0, 1, true).std, 0)
  t.end()
})
