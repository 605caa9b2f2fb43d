import t from 'tap'
import { runExample } from '../../examples/custom-pipeline.js'

const correlation = (xs: number[], ys: number[]): number => {
  const mx = xs.reduce((a, b) => a + b) / xs.length
  const my = ys.reduce((a, b) => a + b) / ys.length
  let sxy = 0
  let sxx = 0
  let syy = 0
  xs.forEach((x, i) => {
    sxy += (x - mx) * (ys[i] - my)
    sxx += (x - mx) ** 2
    syy += (ys[i] - my) ** 2
  })
  return sxy / Math.sqrt(sxx * syy)
}

t.test('the length constraint turns the advantage against long completions once the mean exceeds 300', async (t) => {
  const { batches, dropped } = await runExample(640)
  t.same(dropped, [], 'a clean producer loses nothing')
  t.equal(
    batches.reduce((n, b) => n + b.rolloutCount, 0),
    640 * 8,
  )
  const firstViolated = batches.findIndex((b) => b.constraints.length.mean > 300)
  t.ok(firstViolated > 0, 'lengths start under the threshold')
  t.equal(batches[firstViolated - 1].lambda.length.after, 0, 'λ stays 0 while the constraint holds')
  t.ok(batches[firstViolated].lambda.length.after > 0, 'and rises on the first violated batch')
  const late = batches.slice(-10)
  const lengths = late.flatMap((b) => b.groups.flatMap((g) => g.rollouts.map((r) => r.payload!.tokens)))
  const advantages = late.flatMap((b) => Array.from(b.advantages))
  t.ok(correlation(lengths, advantages) < -0.3, `advantage falls with length (r = ${correlation(lengths, advantages).toFixed(2)})`)
  const early = batches.slice(0, 10)
  const earlyCorrelation = correlation(
    early.flatMap((b) => b.groups.flatMap((g) => g.rollouts.map((r) => r.payload!.tokens))),
    early.flatMap((b) => Array.from(b.advantages)),
  )
  t.ok(earlyCorrelation > 0, `before that, accuracy alone favours length (r = ${earlyCorrelation.toFixed(2)})`)
})

t.test('what the producer gets wrong is dropped and reported, never silently', async (t) => {
  const { batches, dropped } = await runExample(16, 1, [
    { id: 'p0-0', promptId: 'p0', rewards: { accuracy: 1 }, payload: { tokens: 10 } },
    { id: 'x', promptId: 'p0', rewards: { accuracy: 'yes' } },
  ])
  t.same(
    dropped.map((d) => [d.reason, d.count]),
    [
      ['duplicate', 1],
      ['invalid', 1],
    ],
  )
  t.match(dropped[1].detail, 'item 129: rollout "x": rewards.accuracy: must be a finite number or null, got the string "yes"')
  t.equal(
    batches.reduce((n, b) => n + b.rolloutCount, 0),
    128,
  )
})
