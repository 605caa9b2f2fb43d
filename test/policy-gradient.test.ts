/**
 * The hand-derived ONNX gradients against central finite differences of a float64 reference
 * forward pass (written here independently of the graph code). The reference's log-probs are
 * first checked against the ONNX forward graph, so the finite differences are of the same function.
 *
 * Tolerance: the ONNX side computes in float32, so each gradient entry may differ from the float64
 * finite difference by float32 rounding of the sums (~1e-7 relative per op, a few dozen ops). We
 * require |g_onnx − g_fd| ≤ 1e-4·max(|g_fd|, 1e-2) + 1e-6; observed worst case is ~4e-5 relative.
 */
import t from 'tap'
import { MASKED, Rng } from '../src/models/spatialgrid/index.js'
import { OnnxPolicy, mlpParamSpecs, type MlpConfig, type ParamValues } from '../src/models/policy/index.js'

type P64 = Record<string, Float64Array>

function refLogProbs(cfg: MlpConfig, p: P64, X: ArrayLike<number>, M: ArrayLike<number>, rows: number): Float64Array {
  const widths = [cfg.inputDim, ...cfg.hidden, cfg.outputDim]
  let h: Float64Array = Float64Array.from(X)
  for (let l = 0; l + 1 < widths.length; l++) {
    const [n, m] = [widths[l], widths[l + 1]]
    const z = new Float64Array(rows * m)
    const last = l + 2 === widths.length
    for (let r = 0; r < rows; r++) {
      for (let j = 0; j < m; j++) {
        let s = p[`b${l}`][j]
        for (let i = 0; i < n; i++) s += h[r * n + i] * p[`W${l}`][i * m + j]
        z[r * m + j] = last ? s + M[r * m + j] : Math.tanh(s)
      }
    }
    h = z
  }
  const V = cfg.outputDim
  for (let r = 0; r < rows; r++) {
    const row = h.subarray(r * V, (r + 1) * V)
    const mx = Math.max(...row)
    const lse = mx + Math.log(row.reduce((s, x) => s + Math.exp(x - mx), 0))
    for (let j = 0; j < V; j++) row[j] -= lse
  }
  return h
}

interface Case {
  rows: number
  X: Float32Array
  M: Float32Array
  actions: number[]
  adv: Float32Array
  old: Float32Array
  ref: Float32Array
  w: Float32Array
}

function surrogateLoss(cfg: MlpConfig, p: P64, c: Case, o: { lo: number; hi: number; beta: number }) {
  const lp = refLogProbs(cfg, p, c.X, c.M, c.rows)
  let loss = 0
  let wsum = 0
  let ratioSum = 0
  let clipped = 0
  for (let i = 0; i < c.rows; i++) {
    const l = lp[i * cfg.outputDim + c.actions[i]]
    const rho = Math.exp(l - c.old[i])
    const s1 = rho * c.adv[i]
    const s2 = Math.min(Math.max(rho, 1 - o.lo), 1 + o.hi) * c.adv[i]
    const d = c.ref[i] - l
    loss += c.w[i] * (-Math.min(s1, s2) + o.beta * (Math.exp(d) - d - 1))
    wsum += c.w[i]
    ratioSum += c.w[i] * rho
    if (s1 > s2) clipped += c.w[i]
  }
  return { loss, meanRatio: ratioSum / wsum, clipFraction: clipped / wsum }
}

function nllLoss(cfg: MlpConfig, p: P64, c: Case): number {
  const lp = refLogProbs(cfg, p, c.X, c.M, c.rows)
  return c.actions.reduce((s, a, i) => s - c.w[i] * lp[i * cfg.outputDim + a], 0)
}

const to64 = (p: ParamValues): P64 => Object.fromEntries(Object.entries(p).map(([k, v]) => [k, Float64Array.from(v)]))

/** Max over all parameters of the tolerance-normalised error (≤ 1 passes) and the worst relative error. */
function compareToFiniteDifferences(cfg: MlpConfig, p: P64, grads: ParamValues, loss: () => number) {
  let worst = 0
  let worstRel = 0
  const h = 1e-6
  for (const { name } of mlpParamSpecs(cfg)) {
    const v = p[name]
    for (let i = 0; i < v.length; i++) {
      const x = v[i]
      v[i] = x + h
      const up = loss()
      v[i] = x - h
      const down = loss()
      v[i] = x
      const fd = (up - down) / (2 * h)
      const err = Math.abs(grads[name][i] - fd)
      worst = Math.max(worst, err / (1e-4 * Math.max(Math.abs(fd), 1e-2) + 1e-6))
      if (Math.abs(fd) > 1e-3) worstRel = Math.max(worstRel, err / Math.abs(fd))
    }
  }
  return { worst, worstRel }
}

async function makeCase(cfg: MlpConfig, policy: OnnxPolicy, seed: number): Promise<Case> {
  const rng = new Rng(seed)
  for (const k of Object.keys(policy.params)) policy.params[k] = policy.params[k].map(() => rng.normal() * 0.7)
  const rows = 8
  const V = cfg.outputDim
  const X = new Float32Array(rows * cfg.inputDim).map(() => rng.normal())
  const M = new Float32Array(rows * V)
  M[0 * V + 3] = MASKED // a masked token in some rows, as in the task
  M[1 * V + 0] = MASKED
  const actions = [0, 1, 2, 3, 1, 2, 0, 1]
  const lp = await policy.logProbs(X, M, rows)
  // log-ratio offsets chosen away from the clip kinks (±0.2/0.3): some rows clipped on each side
  const offsets = [0.5, -0.5, 0.05, -0.1, 0.4, -0.45, 0, 0.15]
  const adv = Float32Array.from([1.2, -0.7, 0.4, -1.1, -0.9, 0.8, 0.3, -0.2])
  return {
    rows,
    X,
    M,
    actions,
    adv,
    old: Float32Array.from(actions, (a, i) => lp[i * V + a] + offsets[i]),
    ref: Float32Array.from(actions, (a, i) => lp[i * V + a] + rng.normal() * 0.3),
    w: new Float32Array(rows).map(() => 0.1 + rng.next()),
  }
}

for (const hidden of [[], [6], [5, 3]]) {
  t.test(`surrogate gradient (clip 0.2/0.3, β 0.1) matches finite differences, hidden [${hidden}]`, async (t) => {
    const cfg: MlpConfig = { inputDim: 5, hidden, outputDim: 4 }
    const policy = await OnnxPolicy.create({ inputDim: 5, vocab: 4, hidden, surrogate: { clipLow: 0.2, clipHigh: 0.3, klCoef: 0.1 } })
    t.teardown(() => policy.release())
    const c = await makeCase(cfg, policy, 11)
    const p = to64(policy.params)
    const onnxLp = await policy.logProbs(c.X, c.M, c.rows)
    const lp64 = refLogProbs(cfg, p, c.X, c.M, c.rows)
    let maxDiff = 0
    for (let i = 0; i < onnxLp.length; i++) if (c.M[i] === 0) maxDiff = Math.max(maxDiff, Math.abs(onnxLp[i] - lp64[i]))
    t.ok(maxDiff < 1e-5, `reference forward equals the ONNX forward (max |Δ| ${maxDiff.toExponential(2)})`)

    const res = await policy.surrogateGradients({
      rows: c.rows,
      features: c.X,
      mask: c.M,
      actions: c.actions,
      advantages: c.adv,
      oldLogProbs: c.old,
      refLogProbs: c.ref,
      weights: c.w,
    })
    const o = { lo: 0.2, hi: 0.3, beta: 0.1 }
    const expected = surrogateLoss(cfg, p, c, o)
    t.ok(expected.clipFraction > 0.1 && expected.clipFraction < 0.9, 'the case exercises both branches of the min')
    t.ok(Math.abs(res.loss - expected.loss) < 1e-5, `loss ${res.loss} vs ${expected.loss}`)
    t.ok(Math.abs(res.meanRatio - expected.meanRatio) < 1e-5, 'mean ratio')
    t.ok(Math.abs(res.clipFraction - expected.clipFraction) < 1e-6, 'clip fraction')
    t.ok(res.meanKL !== undefined && res.meanKL > 0, 'k3 KL is reported and non-negative')
    const { worst, worstRel } = compareToFiniteDifferences(cfg, p, res.grads, () => surrogateLoss(cfg, p, c, o).loss)
    t.ok(worst <= 1, `gradient within tolerance (normalised error ${worst.toFixed(3)}, worst relative ${worstRel.toExponential(2)})`)
  })
}

t.test('nll gradient matches finite differences; β = 0 graph needs no reference', async (t) => {
  const hidden = [6]
  const cfg: MlpConfig = { inputDim: 5, hidden, outputDim: 4 }
  const policy = await OnnxPolicy.create({ inputDim: 5, vocab: 4, hidden })
  t.teardown(() => policy.release())
  const c = await makeCase(cfg, policy, 12)
  const p = to64(policy.params)
  const res = await policy.nllGradients({ rows: c.rows, features: c.X, mask: c.M, actions: c.actions, weights: c.w })
  t.ok(Math.abs(res.loss - nllLoss(cfg, p, c)) < 1e-5, 'nll loss')
  const { worst } = compareToFiniteDifferences(cfg, p, res.grads, () => nllLoss(cfg, p, c))
  t.ok(worst <= 1, `nll gradient within tolerance (normalised error ${worst.toFixed(3)})`)

  // default surrogate: clip 0.2 both sides, no KL: refLogProbs is not needed and meanKL is absent
  const sur = await policy.surrogateGradients({
    rows: c.rows,
    features: c.X,
    mask: c.M,
    actions: c.actions,
    advantages: c.adv,
    oldLogProbs: c.old,
    weights: c.w,
  })
  t.equal(sur.meanKL, undefined)
  const expected = surrogateLoss(cfg, p, c, { lo: 0.2, hi: 0.2, beta: 0 })
  t.ok(Math.abs(sur.loss - expected.loss) < 1e-5)
  t.ok(compareToFiniteDifferences(cfg, p, sur.grads, () => surrogateLoss(cfg, p, c, { lo: 0.2, hi: 0.2, beta: 0 }).loss).worst <= 1)

  // on-policy (old = current) the surrogate gradient is the policy gradient −Σ w·A·∇log π
  const lp = await policy.logProbs(c.X, c.M, c.rows)
  const onPolicyOld = Float32Array.from(c.actions, (a, i) => lp[i * 4 + a])
  const pg = await policy.surrogateGradients({
    ...{ rows: c.rows, features: c.X, mask: c.M, actions: c.actions, weights: c.w },
    advantages: c.adv,
    oldLogProbs: onPolicyOld,
  })
  t.ok(Math.abs(pg.meanRatio - 1) < 1e-6 && pg.clipFraction === 0, 'ratio 1, nothing clipped')
  const weighted = await policy.nllGradients({ rows: c.rows, features: c.X, mask: c.M, actions: c.actions, weights: c.w.map((w, i) => w * c.adv[i]) })
  let maxDiff = 0
  for (const k of Object.keys(pg.grads))
    for (let i = 0; i < pg.grads[k].length; i++) maxDiff = Math.max(maxDiff, Math.abs(pg.grads[k][i] - weighted.grads[k][i]))
  t.ok(maxDiff < 1e-5, `equals the A-weighted NLL gradient (max |Δ| ${maxDiff.toExponential(2)})`)
})

t.test('klCoef > 0 requires refLogProbs', async (t) => {
  const policy = await OnnxPolicy.create({ inputDim: 2, vocab: 2, hidden: [], surrogate: { klCoef: 0.05 } })
  t.teardown(() => policy.release())
  const one = Float32Array.of(0)
  await t.rejects(
    policy.surrogateGradients({
      rows: 1,
      features: Float32Array.of(1, 0),
      mask: Float32Array.of(0, 0),
      actions: [1],
      advantages: one,
      oldLogProbs: one,
      weights: Float32Array.of(1),
    }),
    /refLogProbs \(required when klCoef > 0\) has no values, expected 1/,
  )
})
