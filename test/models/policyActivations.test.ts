/**
 * The learner's gradient from the actor's kept activations: the forward pass that sampled the rows
 * (`forwardInto`, one call per token position) stands in for the gradient graph's own forward
 * pass, and the gradient, loss and diagnostics must come out the same to the bit — the built-in
 * evaluation's figures depend on it. Checked on SpatialGrid rollouts over several learner steps
 * (Adam in between), for deeper and linear networks, with and without the KL term, and against
 * the validation errors of the new calls.
 */
import t, { type Test } from 'tap'
import {
  Adam,
  OnnxPolicy,
  buildForwardGraph,
  buildSurrogateGradientGraph,
  decodeModel,
  hiddenActivationName,
  type MlpConfig,
} from '../../src/models/policy/index.js'
import type { PolicyActivations, SurrogateBatch, SurrogateResult } from '../../src/models/policy/policy.js'
import { MASKED, Rng, resolveSpatialGridConfig, sampleRollouts, sampleScenes, type TokenPolicy } from '../../src/models/spatialgrid/index.js'

/** The bytes of a float array: equal bytes are equal bits (−0 and NaN payloads included). */
const bits = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength)

function sameBits(t: Test, a: SurrogateResult, b: SurrogateResult, what: string): void {
  for (const name of Object.keys(a.grads)) t.ok(bits(a.grads[name]).equals(bits(b.grads[name])), `${what}: grad ${name} bit-identical`)
  t.ok(Object.is(a.loss, b.loss) && Object.is(a.meanRatio, b.meanRatio) && Object.is(a.clipFraction, b.clipFraction), `${what}: loss and diagnostics identical`)
  t.ok(Object.is(a.meanKL, b.meanKL), `${what}: mean KL identical (${a.meanKL})`)
}

t.test('graphs: the forward graph names its hidden activations as outputs only when asked', async (t) => {
  const cfg: MlpConfig = { inputDim: 5, hidden: [4, 3], outputDim: 2 }
  t.equal(hiddenActivationName(1), 'hidden1')
  const outputs = (bytes: Uint8Array) => decodeModel(bytes).graph!.output!.map((o) => o.name)
  t.same(outputs(buildForwardGraph(cfg)), ['logProbs'])
  t.same(outputs(buildForwardGraph(cfg, undefined, { activations: true })), ['logProbs', 'hidden0', 'hidden1'])
  const inputs = (bytes: Uint8Array) => decodeModel(bytes).graph!.input!.map((i) => i.name)
  t.same(inputs(buildSurrogateGradientGraph(cfg, {}, 'activations')), [
    'W1',
    'W2',
    'features',
    'hidden0',
    'hidden1',
    'logProbs',
    'onehot',
    'weights',
    'advantages',
    'oldLogProbs',
  ])
  t.same(inputs(buildSurrogateGradientGraph(cfg, { klCoef: 0.1 }, 'activations')).at(-1), 'refLogProbs')
})

for (const { hidden, klCoef } of [
  { hidden: [32], klCoef: 0 },
  { hidden: [16, 8], klCoef: 0.05 },
  { hidden: [], klCoef: 0 },
]) {
  t.test(`learner steps from kept activations are bit-identical to recomputing them (hidden [${hidden}], β ${klCoef})`, async (t) => {
    const spec = resolveSpatialGridConfig()
    const create = () => OnnxPolicy.create({ inputDim: spec.featureDim, vocab: spec.vocab, hidden, seed: 3, surrogate: { clipHigh: 0.28, klCoef } })
    const [kept, recomputed] = await Promise.all([create(), create()])
    t.teardown(() => Promise.all([kept.release(), recomputed.release()]))
    const adams = [new Adam(kept.specs, { lr: 3e-2 }), new Adam(recomputed.specs, { lr: 3e-2 })]
    const rows = 48
    const activations = kept.allocateActivations(spec.steps * rows)
    t.equal(activations.hidden.length, hidden.length)
    let filled = 0
    const actor: TokenPolicy = {
      logProbs: async (features, mask, n) => {
        const lp = await kept.forwardInto(features, mask, n, activations, filled)
        t.ok(bits(lp).equals(bits(await recomputed.logProbs(features, mask, n))), 'forwardInto returns what logProbs does')
        filled += n
        return lp
      },
    }
    const rng = new Rng(5)
    for (let step = 0; step < 4; step++) {
      filled = 0
      const sampled = await sampleRollouts(actor, sampleScenes(rng, rows, spec), rng, spec)
      t.equal(filled, sampled.actions.length)
      const n = sampled.actions.length
      // old log-probs off the current ones, so both clip branches and the KL term are exercised
      const batch: SurrogateBatch = {
        rows: n,
        features: sampled.features,
        mask: sampled.masks,
        actions: sampled.actions,
        advantages: Float32Array.from({ length: n }, () => rng.normal()),
        oldLogProbs: sampled.logProbs.map((lp) => lp + (rng.next() - 0.5) * 0.8),
        refLogProbs: sampled.logProbs.map((lp) => lp + (rng.next() - 0.5) * 0.3),
        weights: new Float32Array(n).fill(1 / rows),
      }
      const fromKept = await kept.surrogateGradients({ ...batch, activations })
      const fromFeatures = await recomputed.surrogateGradients(batch)
      sameBits(t, fromKept, fromFeatures, `step ${step}`)
      t.ok(fromKept.clipFraction > 0 && fromKept.clipFraction < 1, `some rows clipped (${fromKept.clipFraction})`)
      adams[0].step(kept.params, fromKept.grads)
      adams[1].step(recomputed.params, fromFeatures.grads)
    }
    for (const s of kept.specs) t.ok(bits(kept.params[s.name]).equals(bits(recomputed.params[s.name])), `${s.name} identical after 4 steps`)
  })
}

t.test('kept activations are the hidden layers’ outputs, at the rows asked for', async (t) => {
  const cfg = { inputDim: 3, hidden: [2], vocab: 2 }
  const policy = await OnnxPolicy.create({ ...cfg, seed: 1 })
  t.teardown(() => policy.release())
  const X = Float32Array.from([1, 0, 0.5, -1, 2, 0])
  const M = new Float32Array(4)
  const kept = policy.allocateActivations(3)
  const lp = await policy.forwardInto(X, M, 2, kept, 1)
  t.same(Array.from(kept.logProbs.subarray(0, 2)), [0, 0], 'row 0 untouched')
  t.same(Array.from(kept.logProbs.subarray(2)), Array.from(lp))
  const { W0, b0 } = policy.params
  for (let r = 0; r < 2; r++)
    for (let j = 0; j < 2; j++) {
      let z = b0[j]
      for (let i = 0; i < 3; i++) z += X[r * 3 + i] * W0[i * 2 + j]
      t.ok(Math.abs(kept.hidden[0][(r + 1) * 2 + j] - Math.tanh(z)) < 1e-6, `hidden[${r + 1}, ${j}] = tanh(x·W0 + b0)`)
    }
})

t.test('parameters: replaced arrays and in-place updates both reach the sessions', async (t) => {
  const policy = await OnnxPolicy.create({ inputDim: 3, vocab: 2, hidden: [4], seed: 1 })
  const other = await OnnxPolicy.create({ inputDim: 3, vocab: 2, hidden: [4], seed: 2 })
  t.teardown(() => Promise.all([policy.release(), other.release()]))
  const X = Float32Array.from([1, 0, 1])
  const M = new Float32Array(2)
  const mine = Array.from(await policy.logProbs(X, M, 1))
  policy.setParams(other.params)
  t.same(Array.from(await policy.logProbs(X, M, 1)), Array.from(await other.logProbs(X, M, 1)), 'setParams: the new arrays are fed')
  other.params.b1[0] += 3
  policy.params.b1[0] += 3
  t.same(Array.from(await policy.logProbs(X, M, 1)), Array.from(await other.logProbs(X, M, 1)), 'an in-place edit is fed')
  t.not(Array.from(await policy.logProbs(X, M, 1)), mine)
})

t.test('activations: errors say which rows or which array does not fit', async (t) => {
  const policy = await OnnxPolicy.create({ inputDim: 3, vocab: 2, hidden: [4], seed: 1 })
  t.teardown(() => policy.release())
  const X = new Float32Array(6)
  const M = new Float32Array(4)
  M[1] = MASKED
  const kept = policy.allocateActivations(3)
  t.throws(() => policy.allocateActivations(0), /rows must be a positive integer \(got 0\)/)
  await t.rejects(policy.forwardInto(X, M, 2, kept, 2), /forwardInto: rows 2\.\.3 do not fit activations of 3 rows/)
  await t.rejects(policy.forwardInto(X, M, 2, kept, -1), /rows -1\.\.0 do not fit/)
  await t.rejects(policy.forwardInto(X, M, 2, kept, 0.5), /rows 0\.5\.\.1\.5 do not fit/)
  await t.rejects(policy.forwardInto(X, M, 2, { ...kept, logProbs: new Float32Array(5) }, 0), /activations\.logProbs has 5 values, expected 6/)
  await t.rejects(policy.forwardInto(X.subarray(1), M, 2, kept, 0), /features has 5 values, expected 6/)
  const lp = await policy.forwardInto(X, M, 2, kept, 0)
  t.equal(lp[1], kept.logProbs[1])
  const batch: SurrogateBatch = {
    rows: 2,
    features: X,
    mask: M,
    actions: [0, 1],
    advantages: Float32Array.from([1, -1]),
    oldLogProbs: new Float32Array(2),
    weights: Float32Array.from([0.5, 0.5]),
  }
  const two: PolicyActivations = policy.allocateActivations(2)
  await t.rejects(policy.surrogateGradients({ ...batch, activations: kept }), /activations hold 3 rows, expected 2/)
  await t.rejects(policy.surrogateGradients({ ...batch, activations: { ...two, hidden: [] } }), /activations hold 0 hidden layers, the network has 1/)
  await t.rejects(
    policy.surrogateGradients({ ...batch, activations: { ...two, hidden: [new Float32Array(7)] } }),
    /activations\.hidden\[0\] has 7 values, expected 8/,
  )
  await t.rejects(policy.surrogateGradients({ ...batch, actions: [0, 2], activations: two }), /actions\[1\] = 2 is not a token in 0\.\.1/)
  const result = await policy.surrogateGradients({ ...batch, activations: two })
  t.ok(Number.isFinite(result.loss), 'zeroed activations of the right shape are accepted (the caller vouches for them)')
})
