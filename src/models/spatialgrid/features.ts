/**
 * The feature row the policy reads before emitting the token at `step` (layout of the prototype):
 *
 *   scene     per type: [present, x one-hot (grid), y one-hot (grid)]        types·(1 + 2·grid)
 *   question  A one-hot (types), B one-hot (types), axis one-hot (2)        2·types + 2
 *   step      one-hot over token positions                                   steps
 *   previous  bag of the claim tokens emitted so far                         claimTokens
 *   subject   one-hot of the type the current claim describes (0 at answer)  types
 *
 * The subject input is what makes the template learnable: without it the network would have to
 * infer from the step which queried object a claim is about.
 *
 * The hard level (4 claims: A.x, A.y, B.x, B.y; the answer compares sums) has no axis in its
 * question and keeps the claims by position, so that the answer is a linear function of them:
 *
 *   scene     as above                                                       types·(1 + 2·grid)
 *   question  A one-hot (types), B one-hot (types)                          2·types
 *   step      one-hot over token positions                                   steps
 *   previous  one claim-token one-hot per claim position (0 until emitted)  claims·claimTokens
 *   subject   one-hot of the type the current claim describes (0 at answer)  types
 */
import type { SpatialGridSpec } from './config.js'
import { claimSlots, type Scene } from './scene.js'

/** Write one feature row at `out[offset .. offset + featureDim)`; `out` must be zeroed there. */
export function writeFeatures(out: Float32Array, offset: number, scene: Scene, step: number, previous: ArrayLike<number>, spec: SpatialGridSpec): void {
  if (spec.level === 'hard') return writeHardFeatures(out, offset, scene, step, previous, spec)
  const { types } = spec
  let o = writeScene(out, offset, scene, spec)
  const { a, b, axis } = scene.question
  out[o + a] = 1
  out[o + types + b] = 1
  out[o + 2 * types + axis] = 1
  o += 2 * types + 2
  out[o + step] = 1
  o += spec.steps
  // only the first `step` tokens precede this position, and only claim positions feed the bag
  for (let k = 0; k < Math.min(step, spec.claims); k++) out[o + previous[k]] = 1
  o += spec.claimTokens
  if (step < spec.claims) out[o + (step === 0 ? a : b)] = 1
}

/** The scene block shared by both levels; returns the offset after it. */
function writeScene(out: Float32Array, offset: number, scene: Scene, spec: SpatialGridSpec): number {
  const { grid, types } = spec
  let o = offset
  for (let t = 0; t < types; t++) {
    const [x, y] = scene.coords[t]
    if (x >= 0) {
      out[o] = 1
      out[o + 1 + x] = 1
      out[o + 1 + grid + y] = 1
    }
    o += 1 + 2 * grid
  }
  return o
}

function writeHardFeatures(out: Float32Array, offset: number, scene: Scene, step: number, previous: ArrayLike<number>, spec: SpatialGridSpec): void {
  const { types, claims, claimTokens } = spec
  let o = writeScene(out, offset, scene, spec)
  const { a, b } = scene.question
  out[o + a] = 1
  out[o + types + b] = 1
  o += 2 * types
  out[o + step] = 1
  o += spec.steps
  for (let k = 0; k < Math.min(step, claims); k++) out[o + k * claimTokens + previous[k]] = 1
  o += claims * claimTokens
  if (step < claims) out[o + claimSlots(scene)[step].subject] = 1
}

/**
 * Feature rows [scenes.length, featureDim] for one step; `traces[i]` holds at least the first
 * `step` tokens of row i (the tokens already emitted).
 */
export function featureRows(scenes: readonly Scene[], step: number, traces: ReadonlyArray<ArrayLike<number>>, spec: SpatialGridSpec): Float32Array {
  if (traces.length !== scenes.length) throw new Error(`featureRows: ${scenes.length} scenes but ${traces.length} traces`)
  if (!Number.isInteger(step) || step < 0 || step >= spec.steps) throw new Error(`featureRows: step ${step} out of range 0..${spec.steps - 1}`)
  const out = new Float32Array(scenes.length * spec.featureDim)
  for (let i = 0; i < scenes.length; i++) {
    if (traces[i].length < Math.min(step, spec.claims)) throw new Error(`featureRows: trace ${i} has ${traces[i].length} tokens, step ${step} needs ${step}`)
    writeFeatures(out, i * spec.featureDim, scenes[i], step, traces[i], spec)
  }
  return out
}
