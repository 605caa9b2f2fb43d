/**
 * The whole-run history (streams/telemetry/runHistory.ts) against a plain reference: for any
 * sequence of values, the points are exactly the min and max of each bucket of `width`
 * consecutive points (width the least power of two that fits), real steps with their wall time,
 * at most `maxPoints`, exact while the series is no longer than that; a spike survives any
 * length; a snapshot restores to the same state and goes on identically.
 */
import fc from 'fast-check'
import t from 'tap'
import { DEFAULT_HISTORY_POINTS, MinMaxSeries, RunHistory, downsample, seriesOfFrame, type SeriesPoints } from '../../streams/telemetry/runHistory.js'

/** The reference: buckets of `width` points, each giving its first least and first greatest point, in step order. */
function reference(values: readonly number[], maxPoints: number, stepOf = (i: number) => i + 1): SeriesPoints {
  const capacity = Math.floor((maxPoints - 2) / 2)
  let width = 1
  while (Math.ceil(values.length / width) > capacity) width *= 2
  const kept = new Set<number>()
  if (values.length > 0) kept.add(0).add(values.length - 1)
  for (let from = 0; from < values.length; from += width) {
    let min = from
    let max = from
    for (let i = from; i < Math.min(from + width, values.length); i++) {
      if (values[i] < values[min]) min = i
      if (values[i] > values[max]) max = i
    }
    kept.add(min).add(max)
  }
  const out: SeriesPoints = { steps: [], ts: [], values: [] }
  for (const i of [...kept].sort((a, b) => a - b)) {
    out.steps.push(stepOf(i))
    out.ts.push(1000 * stepOf(i))
    out.values.push(values[i])
  }
  return out
}

const filled = (values: readonly number[], maxPoints: number) => {
  const series = new MinMaxSeries(maxPoints)
  values.forEach((v, i) => series.add(i + 1, 1000 * (i + 1), v))
  return series
}

t.test('the points are the first, the last and each bucket’s min and max, as the reference gives them', async (t) => {
  fc.assert(
    fc.property(fc.array(fc.integer({ min: -50, max: 50 }), { maxLength: 400 }), fc.integer({ min: 4, max: 41 }), (values, maxPoints) => {
      const got = filled(values, maxPoints).points()
      t.strictSame(got, reference(values, maxPoints))
      return got.steps.length <= maxPoints
    }),
    { numRuns: 300 },
  )
})

t.test('exact while the series holds no more points than maxPoints − 2; bounded after', async (t) => {
  const values = Array.from({ length: 20 }, (_, i) => Math.sin(i))
  const exact = filled(values, 22).points()
  t.same(exact.values, values, 'every point, once')
  t.same(
    exact.steps,
    values.map((_, i) => i + 1),
  )
  const long = filled(
    Array.from({ length: 100_000 }, (_, i) => Math.sin(i / 100)),
    2000,
  )
  t.equal(long.length, 100_000)
  t.ok(long.points().steps.length <= 2000, `${long.points().steps.length} points for 100,000`)
})

t.test('a one-step spike survives a million steps, at its own step and wall time', async (t) => {
  const series = new MinMaxSeries(DEFAULT_HISTORY_POINTS)
  for (let step = 1; step <= 1_000_000; step++) series.add(step, 5000 + step, step === 777_777 ? 9 : step === 3 ? -4 : 0.5)
  const points = series.points()
  const spike = points.values.indexOf(9)
  t.equal(points.steps[spike], 777_777)
  t.equal(points.ts[spike], 5000 + 777_777)
  t.equal(points.steps[points.values.indexOf(-4)], 3, 'and a dip near the start')
  t.ok(
    points.steps.every((s, i) => i === 0 || s > points.steps[i - 1]),
    'steps increasing',
  )
})

t.test('points in a range; unknown wall time is null', async (t) => {
  const series = new MinMaxSeries(10)
  for (let step = 1; step <= 5; step++) series.add(step, step === 2 ? null : step, step)
  t.same(series.points(2, 4), { steps: [2, 3, 4], ts: [null, 3, 4], values: [2, 3, 4] })
  t.throws(() => new MinMaxSeries(3), /maxPoints must be an integer >= 4, got 3/)
  t.same(new MinMaxSeries(4).points(), { steps: [], ts: [], values: [] }, 'empty')
})

t.test('RunHistory: series by name, nulls skipped, steps already held ignored, queries by name, range and points', async (t) => {
  const history = new RunHistory({ maxPoints: 8 })
  t.same(history.overview(), { maxPoints: 8, steps: 0, first: null, last: null, series: {} })
  for (let step = 1; step <= 6; step++) history.add(step, step * 10, { 'lambda.c': step / 10, loss: step % 2 === 0 ? null : step, rate: NaN })
  history.add(6, 60, { 'lambda.c': 99 })
  history.add(3, 30, { 'lambda.c': 99 })
  t.equal(history.length, 6, 'a step at or before the last is not counted again')
  const all = history.overview()
  t.same(Object.keys(all.series), ['lambda.c', 'loss'], 'no series for values never finite')
  t.same(all.series.loss, { steps: [1, 3, 5], ts: [10, 30, 50], values: [1, 3, 5] })
  t.match(all, { maxPoints: 8, steps: 6, first: 1, last: 6 })
  const part = history.query({ series: ['lambda.c', 'unknown'], from: 2, to: 6, points: 4 })
  t.same(Object.keys(part.series), ['lambda.c'])
  t.same(part.series['lambda.c'], { steps: [2, 6], ts: [20, 60], values: [0.2, 0.6] }, 'thinned again by min/max (here also the first and the last)')
  t.equal(history.query({ points: 100 }).maxPoints, 8, 'never more than it holds')
  t.throws(() => new RunHistory({ maxPoints: 0 }), /maxPoints must be an integer >= 4, got 0/)
})

t.test('a snapshot restores the same history, which goes on as if never saved', async (t) => {
  fc.assert(
    fc.property(
      fc.array(fc.double({ min: -1e6, max: 1e6, noNaN: true }), { maxLength: 300 }),
      fc.nat(300),
      fc.integer({ min: 4, max: 33 }),
      (values, cut, maxPoints) => {
        const whole = new RunHistory({ maxPoints })
        const first = new RunHistory({ maxPoints })
        const at = Math.min(cut, values.length)
        const ts = (i: number) => (i % 3 === 0 ? null : i) // null survives JSON as null, NaN would not
        values.forEach((v, i) => whole.add(i + 1, ts(i), { x: v, y: -v }))
        values.slice(0, at).forEach((v, i) => first.add(i + 1, ts(i), { x: v, y: -v }))
        const restored = RunHistory.restore(JSON.parse(JSON.stringify(first.snapshot())))
        values.slice(at).forEach((v, i) => restored.add(at + i + 1, ts(at + i), { x: v, y: -v }))
        t.strictSame(restored.overview(), whole.overview())
      },
    ),
    { numRuns: 200 },
  )
  t.equal(new RunHistory().maxPoints, DEFAULT_HISTORY_POINTS)
  const saved = new RunHistory({ maxPoints: 4 }).snapshot()
  saved.series.x = { width: 1, count: 5, buckets: [], ends: [] }
  t.throws(() => RunHistory.restore(saved), /a saved history series does not fit 4 points \(width 1, count 5\)/)
})

t.test('downsample thins any points by min/max', async (t) => {
  const input = { steps: [1, 2, 3, 4, 5, 6], ts: [null, null, null, null, null, null], values: [0, 5, 1, 1, -3, 2] }
  t.same(downsample(input, 12).values, [0, 5, 1, -3, 2], 'a value repeated within its bucket of two is drawn once')
  t.same(downsample(input, 14), input, 'exact below the bound')
  t.same(downsample(input, 6).values, [0, 5, -3, 2])
  t.same(downsample(input, 4).values, [0, 5, -3, 2], 'the first, the bucket’s max and min, the last')
})

t.test('seriesOfFrame: every figure of a frame under its documented name', async (t) => {
  const figures = {
    rollouts: 16,
    groups: 4,
    partialGroups: 1,
    objectives: { accuracy: 0.5 },
    constraints: {
      c: {
        sense: '>=' as const,
        threshold: 0.9,
        mean: 0.8,
        violation: 0.1,
        sampleViolationRate: 0.25,
        sampleThreshold: 0.5,
        count: 16,
        lambda: 0.3,
        lambdaBefore: 0.2,
      },
    },
    fracZeroStd: { accuracy: 0.25 },
    advantage: { mean: 0, std: 1 },
  }
  const restored = seriesOfFrame(figures)
  t.same(restored, {
    rollouts: 16,
    groups: 4,
    partialGroups: 1,
    advantageMean: 0,
    advantageStd: 1,
    'lambda.c': 0.3,
    'mean.c': 0.8,
    'violation.c': 0.1,
    'sampleViolationRate.c': 0.25,
    'objective.accuracy': 0.5,
    'fracZeroStd.accuracy': 0.25,
  })
  const live = seriesOfFrame({
    ...figures,
    throughput: { rolloutsPerSec: 100, ingestPerSec: 90, batchesPerSec: 6 },
    latencyMs: 12,
    policyVersion: 3,
    learner: { loss: 0.1, clipFraction: 0.2, meanRatio: 1, gradNorm: 4 },
    metrics: { accuracy: 0.7, inconsistencyRate: 0.01, grounding: 0.9 },
  })
  t.match(live, {
    rolloutsPerSec: 100,
    latencyMs: 12,
    policyVersion: 3,
    loss: 0.1,
    clipFraction: 0.2,
    meanRatio: 1,
    gradNorm: 4,
    accuracy: 0.7,
    inconsistencyRate: 0.01,
    grounding: 0.9,
  })
})
