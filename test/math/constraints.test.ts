import fc from 'fast-check'
import t from 'tap'
import { measureConstraint } from '../../src/math/constraints.js'
import type { WindowEntry } from '../../src/core/types.js'
import { close } from '../support/batches.js'

const spec = (sense: '>=' | '<=', window = 1) => ({ sense, threshold: 0.9, sampleThreshold: 0.5, window })

t.test('J, violation and per-sample violation rate for both senses; unscored values left out', (t) => {
  const values = Float64Array.of(1, 0, NaN, 1, 0.4)
  const ge = measureConstraint(values, spec('>='), [])
  t.ok(close(ge.measure.mean, 0.6))
  t.ok(close(ge.measure.violation, 0.3), 'τ − J for ">="')
  t.equal(ge.measure.sampleViolationRate, 0.5, '0 and 0.4 are below 0.5')
  t.equal(ge.measure.count, 4)
  const le = measureConstraint(values, spec('<='), [])
  t.ok(close(le.measure.violation, -0.3), 'J − τ for "<="')
  t.equal(le.measure.sampleViolationRate, 0.5, '1 and 1 are above 0.5')
  t.same(le.window, [{ sum: 2.4, count: 4 }])
  t.end()
})

t.test('no data: NaN measure (the controller then holds λ), count 0', (t) => {
  const { measure } = measureConstraint(Float64Array.of(NaN, NaN), spec('>='), [])
  t.same(measure, { mean: NaN, violation: NaN, sampleViolationRate: NaN, count: 0 })
  t.end()
})

t.test('a window of W batches pools the values, it does not average the means', (t) => {
  const first = measureConstraint(Float64Array.of(1, 1, 1, 1), spec('>=', 2), [])
  const second = measureConstraint(Float64Array.of(0), spec('>=', 2), first.window)
  t.ok(close(second.measure.mean, 0.8), 'pooled (4 + 0) / 5, not (1 + 0) / 2')
  t.equal(second.measure.sampleViolationRate, 1, "the per-sample rate is this batch's")
  const third = measureConstraint(Float64Array.of(0, 0), spec('>=', 2), second.window)
  t.equal(third.measure.mean, 0, 'the oldest batch left the window')
  t.equal(third.window.length, 2)
  t.end()
})

t.test('pooled J equals the mean of the concatenated last W batches', (t) => {
  fc.assert(
    fc.property(
      fc.array(fc.array(fc.oneof(fc.double({ min: -10, max: 10, noNaN: true }), fc.constant(NaN)), { maxLength: 10 }), { minLength: 1, maxLength: 8 }),
      fc.integer({ min: 1, max: 5 }),
      (batches, w) => {
        let window: WindowEntry[] = []
        let last = NaN
        for (const b of batches) {
          const r = measureConstraint(Float64Array.from(b), spec('>=', w), window)
          window = r.window
          last = r.measure.mean
        }
        const pooled = batches
          .slice(-w)
          .flat()
          .filter((x) => !Number.isNaN(x))
        const expected = pooled.length === 0 ? NaN : pooled.reduce((a, b) => a + b, 0) / pooled.length
        return window.length <= w && (Number.isNaN(expected) ? Number.isNaN(last) : close(last, expected, 1e-9))
      },
    ),
  )
  t.end()
})
