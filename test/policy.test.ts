import t from 'tap'
import ort from 'onnxruntime-node'
import {
  Adam,
  GraphBuilder,
  OnnxPolicy,
  argmaxRows,
  buildForwardGraph,
  bytesToFloats,
  checkParams,
  decodeModel,
  decodeParams,
  encodeParams,
  float,
  floatsToBytes,
  initMlpParams,
  mlpParamSpecs,
  paramSize,
  resolveSurrogateOptions,
  sampleCategorical,
  validateMlpConfig,
  zerosLike,
} from '../src/models/policy/index.js'
import { MASKED, Rng, featureRows, maskRows, resolveSpatialGridConfig, sampleScenes } from '../src/models/spatialgrid/index.js'

t.test('graph builder: names, attributes, initializers, errors', async (t) => {
  const g = new GraphBuilder('demo')
  const x = g.input('x', 'float32', ['n', 2])
  const w = g.initializer('w', Float32Array.from([1, 2, 3, 4]), [2, 2])
  const y = g.node('Gemm', [x, w, g.constant([0.5, -0.5], [2])], { alpha: float(2), transB: 1 })
  const s = g.node('ReduceSum', [y, g.int64s([1])], { keepdims: 0 }, 'rowSum')
  g.output(y, 'float32', ['n', 2])
  g.output(s, 'float32', ['n'])
  const bytes = g.serialize()
  const model = decodeModel(bytes)
  t.equal(Number(model.opsetImport[0].version), 17)
  t.equal(model.graph?.node?.length, 2)
  const session = await ort.InferenceSession.create(bytes)
  const out = await session.run({ x: new ort.Tensor('float32', Float32Array.from([1, 1]), [1, 2]) })
  // 2 · x·wᵀ + c = 2·[3, 7] + [0.5, −0.5]
  t.same(Array.from(out[y].data as Float32Array), [6.5, 13.5])
  t.same(Array.from(out.rowSum.data as Float32Array), [20])
  await session.release()

  t.throws(() => g.input('x', 'float32', [1]), /graph demo: value name 'x' is already defined/)
  t.throws(() => g.node('Relu', ['nope']), /Relu input 'nope' is not defined yet/)
  t.throws(() => g.output('missing', 'float32', []), /output 'missing' is not a defined value/)
  t.throws(() => g.node('Relu', [x], { alpha: 0.5 }), /attribute alpha: 0.5 is not an integer; wrap floats with float\(\)/)
  t.throws(() => g.initializer('bad', new Float32Array(3), [2, 2]), /tensor bad: dims \[2, 2\] hold 4 values but data has 3/)
  const g2 = new GraphBuilder('strings')
  g2.input('a', 'bool', [1])
  g2.node('Identity', ['a'], { note: 'text', perm: [0] }, 'identity_0')
  t.equal(g2.node('Identity', ['a']), 'identity_1', 'fresh names skip names already taken')
  t.equal(Number(decodeModel(g2.serialize(13)).opsetImport[0].version), 13)
})

t.test('mlp: config validation, specs, initialisation', async (t) => {
  t.throws(() => validateMlpConfig({ inputDim: 0, hidden: [], outputDim: 2 }), /MlpConfig\.inputDim must be a positive integer \(got 0\)/)
  t.throws(() => validateMlpConfig({ inputDim: 2, hidden: [3, 1.5], outputDim: 2 }), /hidden\[1\] must be a positive integer/)
  t.throws(() => validateMlpConfig({ inputDim: 2, hidden: 3 as unknown as number[], outputDim: 2 }), /hidden must be an array of widths/)
  const cfg = { inputDim: 61, hidden: [128], outputDim: 10 }
  t.same(mlpParamSpecs(cfg), [
    { name: 'W0', shape: [61, 128] },
    { name: 'b0', shape: [128] },
    { name: 'W1', shape: [128, 10] },
    { name: 'b1', shape: [10] },
  ])
  const p = initMlpParams(cfg, new Rng(1))
  const std = (a: Float32Array) => Math.sqrt(a.reduce((s, x) => s + x * x, 0) / a.length)
  t.ok(Math.abs(std(p.W0) - 1 / Math.sqrt(61)) < 0.01, 'hidden weights std 1/√fan_in')
  t.ok(Math.abs(std(p.W1) - 0.01) < 0.002, 'output weights std 0.01')
  t.same(Array.from(p.b0), Array(128).fill(0))
  t.same(initMlpParams(cfg, new Rng(1)), p, 'deterministic per seed')
})

t.test('params: sizes, checks, bytes', async (t) => {
  const specs = mlpParamSpecs({ inputDim: 2, hidden: [], outputDim: 3 })
  t.equal(paramSize(specs[0]), 6)
  const z = zerosLike(specs)
  t.doesNotThrow(() => checkParams(specs, z, 'here'))
  t.throws(() => checkParams(specs, { W0: z.W0 }, 'here'), /here: parameter 'b0' is missing/)
  t.throws(() => checkParams(specs, { ...z, b0: new Float32Array(2) }, 'here'), /parameter 'b0' has 2 values, shape \[3\] needs 3/)
  const a = Float32Array.from([1.5, -2, 3e-8])
  const view = new Float32Array(new Float32Array([9, ...a]).buffer, 4, 3) // non-zero byteOffset
  t.same(Array.from(bytesToFloats(floatsToBytes(view), 'x')), Array.from(a))
  const unaligned = new Uint8Array(13).subarray(1)
  unaligned.set(floatsToBytes(a))
  t.same(Array.from(bytesToFloats(unaligned, 'x')), Array.from(a), 'unaligned source bytes are copied')
  t.throws(() => bytesToFloats(new Uint8Array(5), 'ckpt.W0'), /ckpt\.W0: 5 bytes is not a whole number of float32 values/)
  t.same(decodeParams(encodeParams({ w: a }), 'x'), { w: a })
})

t.test('surrogate options: defaults and errors', async (t) => {
  t.same(resolveSurrogateOptions(), { clipLow: 0.2, clipHigh: 0.2, klCoef: 0 })
  t.same(resolveSurrogateOptions({ clipLow: 0.2, clipHigh: 0.28 }), { clipLow: 0.2, clipHigh: 0.28, klCoef: 0 })
  t.throws(() => resolveSurrogateOptions({ clipLow: 1 }), /clipLow must be in \[0, 1\) \(got 1\)/)
  t.throws(() => resolveSurrogateOptions({ clipHigh: -0.1 }), /clipHigh must be ≥ 0/)
  t.throws(() => resolveSurrogateOptions({ klCoef: Number.NaN }), /klCoef must be ≥ 0 \(got NaN\)/)
})

t.test('sampling: inverse CDF, fallback, argmax', async (t) => {
  const V = 4
  const lp = Float32Array.from([Math.log(0.1), Math.log(0.2), Math.log(0.7), MASKED])
  const rows = 20000
  const many = new Float32Array(rows * V)
  for (let r = 0; r < rows; r++) many.set(lp, r * V)
  const s = sampleCategorical(many, rows, V, new Rng(4))
  const counts = [0, 0, 0, 0]
  s.tokens.forEach((x) => counts[x]++)
  t.equal(counts[3], 0, 'masked token never sampled')
  t.ok(Math.abs(counts[0] / rows - 0.1) < 0.01 && Math.abs(counts[2] / rows - 0.7) < 0.015, `frequencies ${counts}`)
  t.equal(s.logProbs[0], lp[s.tokens[0]])
  t.same(sampleCategorical(many, rows, V, new Rng(4)).tokens, s.tokens, 'deterministic per seed')
  // probabilities summing to 0.5: u above the total falls back to the last token with mass
  const short = Float32Array.from([Math.log(0.25), MASKED, Math.log(0.25), MASKED])
  const picks = new Set(Array.from({ length: 50 }, (_, i) => sampleCategorical(short, 1, V, new Rng(i)).tokens[0]))
  t.same([...picks].sort(), [0, 2])
  t.throws(() => sampleCategorical(Float32Array.from([MASKED, MASKED]), 1, 2, new Rng(0)), /row 0 has no token with non-zero probability/)
  t.throws(() => sampleCategorical(lp, 2, V, new Rng(0)), /4 log-probs is not rows \(2\) × vocab \(4\)/)
  t.same(Array.from(argmaxRows(Float32Array.from([0, 1, -1, 5, 2, 3]), 2, 3)), [1, 0])
})

t.test('adam: matches a hand-computed step, clips, restores state', async (t) => {
  const specs = [{ name: 'w', shape: [2] }]
  const params = { w: Float32Array.from([1, -1]) }
  const adam = new Adam(specs, { lr: 0.1 })
  const info = adam.step(params, { w: Float32Array.from([0.5, -2]) })
  // first step: m̂ = g, v̂ = g², update = lr·g/(|g| + eps) ≈ lr·sign(g)
  t.ok(Math.abs(params.w[0] - 0.9) < 1e-6 && Math.abs(params.w[1] + 0.9) < 1e-6, `after one step ${Array.from(params.w)}`)
  t.ok(Math.abs(info.gradNorm - Math.sqrt(4.25)) < 1e-6)
  t.equal(info.scale, 1)
  const saved = adam.state()
  t.equal(saved.t, 1)
  const twin = new Adam(specs, { lr: 0.1 }, saved)
  const p1 = { w: params.w.slice() }
  const p2 = { w: params.w.slice() }
  adam.step(p1, { w: Float32Array.from([0.3, 0.1]) })
  twin.step(p2, { w: Float32Array.from([0.3, 0.1]) })
  t.same(p1, p2, 'restored state continues identically')
  t.equal(twin.steps, 2)
  twin.reset()
  t.equal(twin.steps, 0)

  const clip = new Adam(specs, { lr: 0.1, maxGradNorm: 1 })
  const ci = clip.step({ w: new Float32Array(2) }, { w: Float32Array.from([3, 4]) })
  t.same(ci, { gradNorm: 5, scale: 0.2 })
  t.same(
    Array.from(clip.state().m.w).map((x) => +x.toFixed(6)),
    [0.06, 0.08],
    'moments see the clipped gradient',
  )

  t.throws(() => new Adam(specs, { lr: 0 }), /Adam: lr must be > 0 \(got 0\)/)
  t.throws(() => new Adam(specs, { lr: 1, beta1: 1 }), /beta1 must be in \[0, 1\)/)
  t.throws(() => new Adam(specs, { lr: 1, beta2: -1 }), /beta2 must be in \[0, 1\)/)
  t.throws(() => new Adam(specs, { lr: 1, maxGradNorm: 0 }), /maxGradNorm must be > 0/)
  t.throws(() => new Adam(specs, { lr: 1 }, { t: -1, m: saved.m, v: saved.v }), /t must be a non-negative integer \(got -1\)/)
  t.throws(() => new Adam(specs, { lr: 1 }, { t: 1, m: {}, v: saved.v }), /Adam state m: parameter 'w' is missing/)
  t.throws(() => adam.step(params, { w: Float32Array.from([Number.NaN, 0]) }), /gradient norm is NaN; refusing to update/)
  t.throws(() => adam.step(params, {}), /Adam\.step grads: parameter 'w' is missing/)
})

t.test('policy: forward log-probs, masks, validation, export', async (t) => {
  const spec = resolveSpatialGridConfig()
  const policy = await OnnxPolicy.create({ inputDim: spec.featureDim, vocab: spec.vocab, seed: 1 })
  t.teardown(() => policy.release())
  t.same(policy.network, { inputDim: 61, hidden: [128], outputDim: 10 })
  const rows = 5
  const scenes = sampleScenes(new Rng(2), rows, spec)
  const X = featureRows(
    scenes,
    0,
    scenes.map(() => []),
    spec,
  )
  const M = maskRows(0, rows, spec)
  const lp = await policy.logProbs(X, M, rows)
  for (let r = 0; r < rows; r++) {
    const p = Array.from(lp.subarray(r * 10, r * 10 + 10)).map(Math.exp)
    t.ok(Math.abs(p.reduce((a, b) => a + b, 0) - 1) < 1e-5, 'rows sum to 1')
    t.equal(p[8] + p[9], 0, 'answer tokens masked at a claim step')
  }
  await t.rejects(policy.logProbs(X, M, 4), /features has 305 values, expected 244/)
  await t.rejects(policy.logProbs(X, M, 0), /rows must be a positive integer \(got 0\)/)
  const base = { rows, features: X, mask: M, weights: new Float32Array(rows) }
  await t.rejects(policy.nllGradients({ ...base, actions: [0, 1, 2, 3, 10] }), /actions\[4\] = 10 is not a token in 0\.\.9/)
  await t.rejects(policy.nllGradients({ ...base, actions: [0, 1] }), /actions has 2 values, expected 5/)
  await t.rejects(
    policy.surrogateGradients({ ...base, actions: [0, 0, 0, 0, 0], advantages: new Float32Array(rows), oldLogProbs: new Float32Array(3) }),
    /oldLogProbs has 3 values, expected 5/,
  )

  // the standalone export: a fresh session with only features + mask as inputs gives the same log-probs
  const exported = policy.exportOnnx()
  const file = `${t.testdir()}/policy.onnx`
  await policy.saveOnnx(file)
  const session = await ort.InferenceSession.create(file)
  t.same([...session.inputNames].sort(), ['features', 'mask'])
  const out = await session.run({
    features: new ort.Tensor('float32', X, [rows, spec.featureDim]),
    mask: new ort.Tensor('float32', M, [rows, spec.vocab]),
  })
  const lpExported = out.logProbs.data as Float32Array
  t.same(Array.from(lpExported), Array.from(lp))
  const drawn = sampleCategorical(lpExported, rows, spec.vocab, new Rng(3))
  t.ok(
    Array.from(drawn.tokens).every((tok) => tok < 8),
    'samples from the exported model are legal claims',
  )
  await session.release()
  t.same(buildForwardGraph(policy.network, policy.params), exported, 'export is a pure function of parameters')

  // parameters are inputs: editing them changes the next call without rebuilding sessions
  const before = policy.params.b1[0]
  policy.params.b1[0] += 5
  const lp2 = await policy.logProbs(X, M, rows)
  t.ok(lp2[0] > lp[0] + 1, 'raising a logit bias raises that token’s log-prob')
  policy.setParams({ ...policy.params, b1: Float32Array.from(policy.params.b1.map((v, i) => (i === 0 ? before : v))) })
  t.same(Array.from(await policy.logProbs(X, M, rows)), Array.from(lp))
  t.throws(() => policy.setParams({}), /OnnxPolicy\.setParams: parameter 'W0' is missing/)

  const copy = await OnnxPolicy.create({
    inputDim: spec.featureDim,
    vocab: spec.vocab,
    params: policy.params,
    executionProviders: ['cpu'],
    intraOpNumThreads: 1,
  })
  t.same(Array.from(await copy.logProbs(X, M, rows)), Array.from(lp), 'created from given parameters')
  await copy.release()
  await t.rejects(OnnxPolicy.create({ inputDim: 3, vocab: 2, params: {} }), /PolicyOptions\.params: parameter 'W0' is missing/)
})
