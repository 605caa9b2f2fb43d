/**
 * Adam's update loop is written for speed (one plain function per parameter array, moments kept in
 * locals); the trained parameters must not move by a bit for it. Checked against the textbook loop
 * written out here, over many steps with and without gradient clipping, parameter arrays of
 * several sizes, and gradients spanning many magnitudes (where float32 rounding of the stored
 * moments matters).
 */
import t from 'tap'
import { Adam, type ParamValues } from '../../src/models/policy/index.js'
import { Rng } from '../../src/core/rng.js'

const specs = [
  { name: 'W0', shape: [61, 128] },
  { name: 'b0', shape: [128] },
  { name: 'W1', shape: [128, 10] },
  { name: 'b1', shape: [10] },
]

/** The update as first written: read back each moment from its Float32Array after storing it. */
function referenceStep(
  state: { t: number; m: ParamValues; v: ParamValues },
  params: ParamValues,
  grads: ParamValues,
  o: { lr: number; maxGradNorm?: number },
): void {
  const [b1, b2, eps] = [0.9, 0.999, 1e-8]
  let sq = 0
  for (const s of specs) for (const g of grads[s.name]) sq += g * g
  const gradNorm = Math.sqrt(sq)
  const scale = o.maxGradNorm !== undefined && gradNorm > o.maxGradNorm ? o.maxGradNorm / gradNorm : 1
  state.t += 1
  const stepSize = o.lr / (1 - Math.pow(b1, state.t))
  const sqrtC2 = Math.sqrt(1 - Math.pow(b2, state.t))
  for (const s of specs) {
    const [p, g, m, v] = [params[s.name], grads[s.name], state.m[s.name], state.v[s.name]]
    for (let i = 0; i < p.length; i++) {
      const gi = g[i] * scale
      m[i] = b1 * m[i] + (1 - b1) * gi
      v[i] = b2 * v[i] + (1 - b2) * gi * gi
      p[i] -= (stepSize * m[i]) / (Math.sqrt(v[i]) / sqrtC2 + eps)
    }
  }
}

const zeros = (): ParamValues => Object.fromEntries(specs.map((s) => [s.name, new Float32Array(s.shape.reduce((a, b) => a * b, 1))]))
const bits = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength)

for (const maxGradNorm of [undefined, 0.5]) {
  t.test(`Adam.step is bit-identical to the textbook loop (maxGradNorm ${maxGradNorm})`, async (t) => {
    const rng = new Rng(11)
    const start = zeros()
    for (const s of specs) start[s.name] = start[s.name].map(() => rng.normal() * 0.1)
    const mine = Object.fromEntries(Object.entries(start).map(([k, v]) => [k, v.slice()]))
    const theirs = Object.fromEntries(Object.entries(start).map(([k, v]) => [k, v.slice()]))
    const adam = new Adam(specs, { lr: 3e-3, maxGradNorm })
    const reference = { t: 0, m: zeros(), v: zeros() }
    let clipped = 0
    for (let step = 0; step < 40; step++) {
      // magnitudes over six decades, some exact zeros, so rounding of every term is exercised; large
      // on odd steps (clipped when there is a limit), small on even ones (not clipped)
      const top = step % 2 === 1 ? 2 : -3
      const grads = zeros()
      for (const s of specs) grads[s.name] = grads[s.name].map(() => (rng.next() < 0.1 ? 0 : rng.normal() * 10 ** (top - rng.next() * 6)))
      const info = adam.step(mine, grads)
      if (info.scale < 1) clipped++
      referenceStep(reference, theirs, grads, { lr: 3e-3, maxGradNorm })
    }
    t.equal(clipped, maxGradNorm === undefined ? 0 : 20, 'the large steps are clipped when there is a limit, the small ones never')
    const state = adam.state()
    for (const s of specs) {
      t.ok(bits(mine[s.name]).equals(bits(theirs[s.name])), `${s.name} identical`)
      t.ok(bits(state.m[s.name]).equals(bits(reference.m[s.name])) && bits(state.v[s.name]).equals(bits(reference.v[s.name])), `${s.name} moments identical`)
    }
  })
}
