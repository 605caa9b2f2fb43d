import t from 'tap'
import {
  LEVEL_DEFAULTS,
  Rng,
  claimSlots,
  claimToken,
  comparedValue,
  describeRollout,
  entailedAnswer,
  featureRows,
  goldTrace,
  judge,
  legalMask,
  questionText,
  renderRollout,
  resolveSpatialGridConfig,
  sampleScenes,
  truthAnswer,
  type Scene,
} from '../../src/models/spatialgrid/index.js'

const hard = resolveSpatialGridConfig({ level: 'hard' })
const easy = resolveSpatialGridConfig()

/** A hard scene: red (0) at (1, 4), blue (1) at (3, 1), green (2) at (5, 5); "red.x + red.y vs blue.x + blue.y" (5 vs 4). */
function scene(): Scene {
  const coords: [number, number][] = Array.from({ length: hard.types }, () => [-1, -1])
  coords[0] = [1, 4]
  coords[1] = [3, 1]
  coords[2] = [5, 5]
  return { coords, question: { a: 0, b: 1, axis: 0, sum: true } }
}

/** Claim tokens for values on the template's axes (x, y, x, y), then the answer offset. */
const trace = (values: number[], answer: 0 | 1) => [...values.map((value, k) => claimToken({ axis: (k % 2) as 0 | 1, value }, hard)), hard.claimTokens + answer]

t.test('levels: easy keeps its sizes; hard has 4 claims, its own defaults and feature layout', async (t) => {
  t.match(easy, { level: 'easy', grid: 4, types: 4, objects: 3, claims: 2, claimTokens: 8, vocab: 10, steps: 3, featureDim: 61 })
  t.match(hard, { level: 'hard', grid: 6, types: 8, objects: 6, claims: 4, claimTokens: 12, vocab: 14, steps: 5 })
  t.equal(hard.featureDim, 8 * 13 + 16 + 5 + 4 * 12 + 8)
  t.same(LEVEL_DEFAULTS.hard, { level: 'hard', grid: 6, types: 8, objects: 6 })
  t.match(resolveSpatialGridConfig({ level: 'hard', grid: 5 }), { grid: 5, types: 8, claims: 4 })
  t.throws(() => resolveSpatialGridConfig({ level: 'medium' as never }), /level must be one of easy, hard \(got medium\)/)
  t.same(
    [...legalMask(4, hard)].map((m) => m === 0),
    [...Array(12).fill(false), true, true],
    'the fifth token is the answer',
  )
  t.same(
    [...legalMask(3, hard)].map((m) => m === 0),
    [...Array(12).fill(true), false, false],
  )
})

t.test('hard scenes: the sums of the queried objects differ; gold traces are right, grounded and consistent', async (t) => {
  const scenes = sampleScenes(new Rng(5), 500, hard)
  for (const s of scenes) {
    const { a, b } = s.question
    t.equal(s.question.sum, true)
    t.not(comparedValue(s, a), comparedValue(s, b))
    t.equal(truthAnswer(s), s.coords[a][0] + s.coords[a][1] > s.coords[b][0] + s.coords[b][1] ? 1 : 0)
    t.equal(s.coords.filter(([x]) => x >= 0).length, hard.objects)
    const gold = goldTrace(s, hard)
    t.same(judge(s, gold, hard), { accuracy: 1, grounding: 1, consistency: 1 })
  }
  t.ok(scenes.some((s) => truthAnswer(s) === 0) && scenes.some((s) => truthAnswer(s) === 1), 'both answers occur')
  t.same(
    claimSlots(scenes[0]).map((c) => c.axis),
    [0, 1, 0, 1],
  )
})

t.test('hard judges: consistency = the claimed sums entail the answer; grounding = share of true claims', async (t) => {
  const s = scene()
  t.equal(truthAnswer(s), 1)
  t.same(judge(s, trace([1, 4, 3, 1], 1), hard), { accuracy: 1, grounding: 1, consistency: 1 })
  t.same(judge(s, trace([1, 4, 3, 1], 0), hard), { accuracy: 0, grounding: 1, consistency: 0 }, 'true claims, the other answer')
  t.same(judge(s, trace([0, 0, 3, 1], 0), hard), { accuracy: 0, grounding: 0.5, consistency: 1 }, 'false claims entail a wrong answer')
  t.same(judge(s, trace([2, 3, 3, 1], 1), hard), { accuracy: 1, grounding: 0.5, consistency: 1 }, 'false claims that still entail the right answer')
  t.equal(entailedAnswer(s, trace([1, 3, 3, 1], 1), hard), null, 'equal claimed sums settle nothing')
  const wrongAxis = [
    claimToken({ axis: 1, value: 4 }, hard),
    ...trace([4, 3, 1], 1)
      .slice(0, 3)
      .map((_, k) => trace([1, 4, 3, 1], 1)[k + 1]),
    hard.claimTokens + 1,
  ]
  t.equal(entailedAnswer(s, wrongAxis, hard), null, 'a claim on another axis than its slot')
  t.same(judge(s, wrongAxis, hard), { accuracy: 1, grounding: 1, consistency: 0 }, 'red.y = 4 is true, but it is not the x the template asks for')
  t.throws(() => judge(s, trace([1, 4, 3, 1], 1), easy), /judge: trace has 5 tokens, expected 3/)
  const easyScene = sampleScenes(new Rng(1), 1, easy)[0]
  t.throws(() => judge(easyScene, goldTrace(easyScene, easy).concat([0, 0]), hard), /judge: the scene is of level easy, the spec of level hard/)
  t.throws(() => judge(s, [0, 0, 9], easy), /judge: the scene is of level hard, the spec of level easy/)
})

t.test('hard features: scene, question, step, claims by position, subject', async (t) => {
  const s = scene()
  const gold = goldTrace(s, hard)
  const rowAt = (step: number) => featureRows([s], step, [gold], hard)
  const sceneWidth = hard.types * (1 + 2 * hard.grid)
  const question = sceneWidth
  const stepAt = question + 2 * hard.types
  const previous = stepAt + hard.steps
  const subject = previous + hard.claims * hard.claimTokens
  for (let step = 0; step < hard.steps; step++) {
    const row = rowAt(step)
    t.equal(row.length, hard.featureDim)
    t.equal(row[question + 0], 1, 'A = red')
    t.equal(row[question + hard.types + 1], 1, 'B = blue')
    t.equal(row[stepAt + step], 1)
    const claimBits = [...row.subarray(previous, subject)]
    t.equal(
      claimBits.reduce((a, b) => a + b, 0),
      step,
      `step ${step} sees the ${step} claims before it`,
    )
    for (let k = 0; k < step; k++) t.equal(row[previous + k * hard.claimTokens + gold[k]], 1, `claim ${k} in its own block`)
    const subjects = [...row.subarray(subject)]
    t.same(subjects, step < 4 ? Array.from({ length: hard.types }, (_, i) => (i === (step < 2 ? 0 : 1) ? 1 : 0)) : Array(hard.types).fill(0))
  }
  const red = rowAt(0).subarray(0, 1 + 2 * hard.grid)
  t.same([...red], [1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0], 'red present at x 1, y 4')
})

t.test('hard rendering', async (t) => {
  const s = scene()
  t.equal(questionText(s), 'is red.x + red.y less or greater than blue.x + blue.y?')
  const bad = trace([1, 4, 0, 1], 1)
  t.equal(renderRollout(s, bad, hard), 'claims: red.x=1 ✓, red.y=4 ✓, blue.x=0 ✗, blue.y=1 ✓ → answer: greater ✓')
  const d = describeRollout(s, bad, hard)
  t.equal(d.claims.length, 4)
  t.same(
    d.claims.map((c) => [c.subject, c.axis, c.value, c.true]),
    [
      ['red', 'x', 1, true],
      ['red', 'y', 4, true],
      ['blue', 'x', 0, false],
      ['blue', 'y', 1, true],
    ],
  )
  t.match(d, { grid: 6, answer: 'greater', correctAnswer: 'greater', judgement: { accuracy: 1, grounding: 0.75, consistency: 1 } })
})
