import t from 'tap'
import fc from 'fast-check'
import {
  CLAIMS,
  MASKED,
  Rng,
  claimToken,
  claimTruths,
  decodeAnswer,
  decodeClaim,
  deriveSeed,
  describeRollout,
  entailedAnswer,
  featureRows,
  goldRollouts,
  goldTrace,
  isClaimStep,
  isLegal,
  judge,
  judgeRollouts,
  legalMask,
  maskRows,
  questionText,
  renderGrid,
  renderRollout,
  resolveSpatialGridConfig,
  sampleRollouts,
  sampleScene,
  sampleScenes,
  sceneObjects,
  splitmix32,
  teacherForced,
  truthAnswer,
  typeName,
  type Scene,
  type TokenPolicy,
} from '../src/models/spatialgrid/index.js'

const spec = resolveSpatialGridConfig()
const arbSeed = fc.integer({ min: 0, max: 0xffffffff })
const sceneOf = (seed: number, s = spec) => sampleScene(new Rng(seed), s)

t.test('rng: xoshiro128** seeded by splitmix32 matches an independent implementation', async (t) => {
  // reference values from a separate Python implementation of the documented algorithm
  const r = new Rng(42)
  t.same(
    [0, 1, 2, 3, 4].map(() => r.nextU32()),
    [2014437610, 2536506388, 439704051, 682445763, 3594191604],
  )
  t.equal(splitmix32(0), splitmix32(0))
  t.not(splitmix32(0), splitmix32(1))
})

t.test('rng: deterministic per seed, resumable from state', async (t) => {
  fc.assert(
    fc.property(arbSeed, (seed) => {
      const a = new Rng(seed)
      const b = new Rng(seed)
      for (let i = 0; i < 20; i++) if (a.nextU32() !== b.nextU32()) return false
      const c = Rng.fromState(a.state())
      for (let i = 0; i < 20; i++) if (a.next() !== c.next()) return false
      return true
    }),
  )
  t.not(new Rng(1).nextU32(), new Rng(2).nextU32())
  t.throws(() => Rng.fromState([1, 2, 3]), /expected 4 state words, got 3/)
  t.throws(() => Rng.fromState([0, 0, 0, 0]), /all-zero state/)
})

t.test('rng: deriveSeed separates streams', async (t) => {
  t.equal(deriveSeed(7, 'eval', 1), deriveSeed(7, 'eval', 1))
  t.not(deriveSeed(7, 'eval'), deriveSeed(7, 'train'))
  t.not(deriveSeed(7, 1), deriveSeed(7, 2))
  t.not(deriveSeed(7), deriveSeed(8))
})

t.test('rng: int, next, normal, sample', async (t) => {
  const r = new Rng(3)
  const counts = [0, 0, 0]
  for (let i = 0; i < 30000; i++) {
    const x = r.int(3)
    counts[x]++
    const u = r.next()
    if (u < 0 || u >= 1) t.fail(`next() out of [0,1): ${u}`)
  }
  for (const c of counts) t.ok(Math.abs(c - 10000) < 400, `uniform int counts ${counts}`)
  t.equal(r.int(1), 0)
  // n = 2^31 + 1 rejects about half the raw draws (the bias-removal loop)
  for (let i = 0; i < 8; i++) t.ok(r.int(2 ** 31 + 1) <= 2 ** 31)
  t.throws(() => r.int(0), /integer in \[1, 2\^32\] \(got 0\)/)
  t.throws(() => r.int(1.5), /got 1.5/)
  let s = 0
  let s2 = 0
  const n = 20000
  for (let i = 0; i < n; i++) {
    const z = r.normal()
    s += z
    s2 += z * z
  }
  t.ok(Math.abs(s / n) < 0.05, 'normal mean ≈ 0')
  t.ok(Math.abs(s2 / n - 1) < 0.05, 'normal variance ≈ 1')
  fc.assert(
    fc.property(arbSeed, fc.integer({ min: 1, max: 20 }), (seed, n) => {
      const k = new Rng(seed).int(n + 1)
      const picked = new Rng(seed).sample(n, Math.min(k, n))
      return new Set(picked).size === picked.length && picked.every((x) => x >= 0 && x < n)
    }),
  )
  t.throws(() => r.sample(3, 4), /0 ≤ k ≤ n \(got k=4, n=3\)/)
})

t.test('config: defaults, derived sizes and errors naming the field', async (t) => {
  t.match(spec, { grid: 4, types: 4, objects: 3, claimTokens: 8, vocab: 10, steps: 3, featureDim: 61 })
  t.equal(CLAIMS, 2)
  t.equal(resolveSpatialGridConfig({ grid: 5 }).featureDim, 4 * 11 + 10 + 3 + 10 + 4)
  t.throws(() => resolveSpatialGridConfig({ grid: 1 }), /SpatialGridConfig\.grid must be an integer ≥ 2 \(got 1\)/)
  t.throws(() => resolveSpatialGridConfig({ types: 2.5 }), /types must be an integer/)
  t.throws(() => resolveSpatialGridConfig({ objects: 'x' as unknown as number }), /objects must be an integer ≥ 2 \(got x\)/)
  t.throws(() => resolveSpatialGridConfig({ objects: 5 }), /objects \(5\) must not exceed types \(4\)/)
  t.throws(() => resolveSpatialGridConfig({ grid: 2, types: 6, objects: 5 }), /must not exceed grid² \(4\)/)
})

t.test('scenes: distinct cells and types, question defined, deterministic per seed', async (t) => {
  const specs = [spec, resolveSpatialGridConfig({ grid: 2, types: 3, objects: 2 }), resolveSpatialGridConfig({ grid: 6, types: 8, objects: 5 })]
  fc.assert(
    fc.property(arbSeed, fc.constantFrom(...specs), (seed, s) => {
      const scene = sceneOf(seed, s)
      const objs = sceneObjects(scene)
      const cells = new Set(objs.map((o) => o.y * s.grid + o.x))
      const { a, b, axis } = scene.question
      return (
        objs.length === s.objects &&
        cells.size === s.objects &&
        objs.every((o) => o.x < s.grid && o.y < s.grid) &&
        a !== b &&
        scene.coords[a][0] >= 0 &&
        scene.coords[b][0] >= 0 &&
        scene.coords[a][axis] !== scene.coords[b][axis] &&
        JSON.stringify(sceneOf(seed, s)) === JSON.stringify(scene)
      )
    }),
  )
  t.equal(sampleScenes(new Rng(1), 5, spec).length, 5)
})

t.test('tokens: encoding, masks, gold traces', async (t) => {
  for (let c = 0; c < spec.claimTokens; c++) t.equal(claimToken(decodeClaim(c, spec), spec), c)
  t.throws(() => decodeClaim(8, spec), /token 8 is not a claim token \(0\.\.7\)/)
  t.throws(() => decodeClaim(-1, spec), /token -1/)
  t.equal(decodeAnswer(8, spec), 0)
  t.equal(decodeAnswer(9, spec), 1)
  t.throws(() => decodeAnswer(3, spec), /token 3 is not an answer token \(8 or 9\)/)
  t.same(Array.from(legalMask(0, spec)), [0, 0, 0, 0, 0, 0, 0, 0, MASKED, MASKED])
  t.same(Array.from(legalMask(2, spec)), [...Array(8).fill(MASKED), 0, 0])
  t.ok(isLegal(3, 1, spec))
  t.notOk(isLegal(9, 1, spec))
  t.ok(isLegal(9, 2, spec))
  t.ok(isClaimStep(1, spec))
  t.notOk(isClaimStep(2, spec))
  t.throws(() => isClaimStep(3, spec), /step 3 out of range 0\.\.2/)
  const rows = maskRows(2, 3, spec)
  t.equal(rows.length, 30)
  t.same(Array.from(rows.subarray(20, 30)), Array.from(legalMask(2, spec)))
  fc.assert(
    fc.property(arbSeed, (seed) => {
      const scene = sceneOf(seed)
      const gold = goldTrace(scene, spec)
      return gold.every((tok, step) => isLegal(tok, step, spec)) && decodeAnswer(gold[2], spec) === truthAnswer(scene)
    }),
  )
})

t.test('features: layout of the prototype', async (t) => {
  const scene: Scene = {
    coords: [
      [1, 2],
      [-1, -1],
      [3, 0],
      [0, 3],
    ],
    question: { a: 2, b: 0, axis: 0 },
  }
  const trace = [claimToken({ axis: 0, value: 3 }, spec), claimToken({ axis: 1, value: 2 }, spec), 9]
  const rows = [0, 1, 2].map((step) => featureRows([scene], step, [trace], spec))
  const on = (row: Float32Array) => Array.from(row.keys()).filter((i) => row[i] === 1)
  // scene block: type 0 at (1,2): 0, 1+1, 1+4+2; type 2 at (3,0): 18, 18+1+3, 18+5+0; type 3 at (0,3): 27, 28, 27+5+3
  const sceneBits = [0, 2, 7, 18, 22, 23, 27, 28, 35]
  const q = 36
  const st = q + 10
  const prev = st + 3
  const subj = prev + 8
  t.same(on(rows[0]), [...sceneBits, q + 2, q + 4 + 0, q + 8 + 0, st + 0, subj + 2])
  t.same(on(rows[1]), [...sceneBits, q + 2, q + 4, q + 8, st + 1, prev + 3, subj + 0])
  t.same(on(rows[2]), [...sceneBits, q + 2, q + 4, q + 8, st + 2, prev + 3, prev + 6])
  t.throws(() => featureRows([scene], 0, [], spec), /1 scenes but 0 traces/)
  t.throws(() => featureRows([scene], 3, [trace], spec), /step 3 out of range 0\.\.2/)
  t.throws(() => featureRows([scene], 2, [[1]], spec), /trace 0 has 1 tokens, step 2 needs 2/)
})

t.test('judges: exact on hand-made traces', async (t) => {
  const scene: Scene = {
    coords: [
      [1, 2],
      [-1, -1],
      [3, 0],
      [0, 3],
    ],
    question: { a: 2, b: 0, axis: 0 },
  }
  const x = (v: number) => claimToken({ axis: 0, value: v }, spec)
  const y = (v: number) => claimToken({ axis: 1, value: v }, spec)
  t.same(judge(scene, [x(3), x(1), 9], spec), { accuracy: 1, grounding: 1, consistency: 1 })
  t.same(judge(scene, [x(3), x(1), 8], spec), { accuracy: 0, grounding: 1, consistency: 0 })
  t.same(judge(scene, [x(0), x(2), 8], spec), { accuracy: 0, grounding: 0, consistency: 1 }, 'consistent but wrong')
  t.same(judge(scene, [x(3), y(2), 9], spec), { accuracy: 1, grounding: 1, consistency: 0 }, 'true claim on the other axis')
  t.same(judge(scene, [x(2), x(2), 9], spec), { accuracy: 1, grounding: 0, consistency: 0 }, 'equal values entail nothing')
  t.same(judge(scene, [x(3), x(0), 9], spec), { accuracy: 1, grounding: 0.5, consistency: 1 })
  t.same(claimTruths(scene, [x(3), y(1), 9], spec), [true, false])
  t.equal(entailedAnswer(scene, [x(1), x(3), 9], spec), 0)
  t.equal(entailedAnswer(scene, [y(1), x(3), 9], spec), null)
  t.throws(() => judge(scene, [x(3), 9], spec), /trace has 2 tokens, expected 3/)
})

t.test('judges: properties over random scenes', async () => {
  const arbTrace = fc.tuple(fc.nat(spec.claimTokens - 1), fc.nat(spec.claimTokens - 1), fc.constantFrom(8, 9))
  fc.assert(
    fc.property(arbSeed, (seed) => {
      const scene = sceneOf(seed)
      const gold = goldTrace(scene, spec)
      const j = judge(scene, gold, spec)
      // flipping the answer of the gold trace: claims now contradict it
      const flipped = judge(scene, [gold[0], gold[1], 17 - gold[2]], spec)
      // swapping the claim values and flipping the answer: consistent, wrong, ungrounded
      const swapped = judge(scene, [gold[1], gold[0], 17 - gold[2]], spec)
      return (
        j.accuracy === 1 &&
        j.consistency === 1 &&
        j.grounding === 1 &&
        flipped.accuracy === 0 &&
        flipped.consistency === 0 &&
        flipped.grounding === 1 &&
        swapped.accuracy === 0 &&
        swapped.consistency === 1 &&
        swapped.grounding === 0
      )
    }),
  )
  fc.assert(
    fc.property(arbSeed, arbTrace, (seed, trace) => {
      const scene = sceneOf(seed)
      const j = judge(scene, trace, spec)
      const entailed = entailedAnswer(scene, trace, spec)
      // consistent ∧ grounded ⇒ accurate: true claims can only entail the true answer
      const groundedConsistent = j.consistency === 1 && j.grounding === 1
      return (
        [0, 0.5, 1].includes(j.grounding) && (j.consistency === 1) === (entailed === decodeAnswer(trace[2], spec)) && (!groundedConsistent || j.accuracy === 1)
      )
    }),
  )
})

t.test('render: text and JSON description', async (t) => {
  const scene: Scene = {
    coords: [
      [1, 2],
      [-1, -1],
      [3, 0],
      [0, 3],
    ],
    question: { a: 2, b: 0, axis: 0 },
  }
  const trace = [claimToken({ axis: 0, value: 3 }, spec), claimToken({ axis: 0, value: 2 }, spec), 8]
  t.equal(renderRollout(scene, trace, spec), 'claims: green.x=3 ✓, red.x=2 ✗ → answer: less ✗')
  t.equal(renderRollout(scene, goldTrace(scene, spec), spec), 'claims: green.x=3 ✓, red.x=1 ✓ → answer: greater ✓')
  t.equal(questionText(scene), 'is green.x less or greater than red.x?')
  t.equal(renderGrid(scene, spec), '. . . g\n. . . .\n. r . .\ny . . .')
  t.equal(typeName(9), 'type9')
  const d = describeRollout(scene, trace, spec)
  t.same(JSON.parse(JSON.stringify(d)), d, 'plain JSON')
  t.match(d, {
    grid: 4,
    objects: [
      { type: 0, name: 'red', x: 1, y: 2 },
      { type: 2, name: 'green', x: 3, y: 0 },
      { type: 3, name: 'yellow', x: 0, y: 3 },
    ],
    question: { a: 'green', b: 'red', axis: 'x' },
    claims: [
      { subject: 'green', axis: 'x', value: 3, true: true },
      { subject: 'red', axis: 'x', value: 2, true: false },
    ],
    answer: 'less',
    correctAnswer: 'greater',
    judgement: { accuracy: 0, grounding: 0.5, consistency: 0 },
  })
})

/** A policy double: uniform over legal tokens (reads the mask). */
const uniformPolicy: TokenPolicy = {
  async logProbs(_features, mask, rows) {
    const V = mask.length / rows
    const out = new Float32Array(mask.length)
    for (let r = 0; r < rows; r++) {
      const legal = Array.from(mask.subarray(r * V, (r + 1) * V)).filter((m) => m === 0).length
      for (let v = 0; v < V; v++) out[r * V + v] = mask[r * V + v] === 0 ? -Math.log(legal) : MASKED
    }
    return out
  },
}

t.test('rollouts: step-major layout, legality, determinism, gold traces', async (t) => {
  const scenes = sampleScenes(new Rng(5), 6, spec)
  const r = await sampleRollouts(uniformPolicy, scenes, new Rng(9), spec)
  const again = await sampleRollouts(uniformPolicy, scenes, new Rng(9), spec)
  t.same(again.traces, r.traces, 'same seed, same traces')
  t.equal(r.features.length, 3 * 6 * spec.featureDim)
  for (let i = 0; i < 6; i++) {
    t.equal(r.traces[i].length, 3)
    r.traces[i].forEach((tok, step) => {
      t.ok(isLegal(tok, step, spec))
      t.equal(r.actions[step * 6 + i], tok)
    })
    t.ok(Math.abs(r.logProbs[i] - Math.log(1 / 8)) < 1e-6)
    t.ok(Math.abs(r.logProbs[12 + i] - Math.log(1 / 2)) < 1e-6)
  }
  const tf = teacherForced(scenes, r.traces, spec)
  t.same(Array.from(tf.features), Array.from(r.features), 'teacher forcing rebuilds the same features')
  t.same(Array.from(tf.masks), Array.from(r.masks))
  t.throws(() => teacherForced(scenes, [], spec), /6 scenes but 0 traces/)
  const j = judgeRollouts(goldRollouts(scenes, spec), spec)
  t.same([...j.accuracy, ...j.consistency, ...j.grounding], Array(18).fill(1))
})
