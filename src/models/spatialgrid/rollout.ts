/**
 * The actor: batched autoregressive sampling of SpatialGrid traces from any policy that maps
 * feature rows to log-probabilities (the ONNX policy, or a test double). One policy call per
 * token position covers every row (prompts × G) at once.
 *
 * Row-stacked arrays are step-major — all rows of step 0, then step 1, … — which is exactly the
 * layout the gradient graph consumes (every token position of every rollout stacked).
 */
import { sampleCategorical } from '../../math/sample.js'
import type { SpatialGridSpec } from './config.js'
import { featureRows } from './features.js'
import { judge, type Judgement } from './judges.js'
import type { Rng } from '../../core/rng.js'
import type { Scene } from './scene.js'
import { goldTrace, maskRows } from './tokens.js'

export interface TokenPolicy {
  /** log π over the vocabulary, [rows, vocab] row-major. */
  logProbs(features: Float32Array, mask: Float32Array, rows: number): Promise<Float32Array>
}

export interface Rollouts {
  readonly rows: number
  readonly scenes: readonly Scene[]
  /** traces[i] = the tokens of row i (CLAIMS claims then the answer). */
  readonly traces: readonly number[][]
  /** [steps·rows, featureDim], step-major. */
  readonly features: Float32Array
  /** [steps·rows, vocab], step-major. */
  readonly masks: Float32Array
  /** [steps·rows] token at each position, step-major. */
  readonly actions: Int32Array
  /** [steps·rows] log π(action) at sampling time (zeros for teacher-forced rollouts). */
  readonly logProbs: Float32Array
}

/** Sample one trace per scene (repeat scenes G times for groups). */
export async function sampleRollouts(policy: TokenPolicy, scenes: readonly Scene[], rng: Rng, spec: SpatialGridSpec): Promise<Rollouts> {
  const rows = scenes.length
  const traces: number[][] = scenes.map(() => [])
  const features = new Float32Array(spec.steps * rows * spec.featureDim)
  const masks = new Float32Array(spec.steps * rows * spec.vocab)
  const actions = new Int32Array(spec.steps * rows)
  const logProbs = new Float32Array(spec.steps * rows)
  for (let step = 0; step < spec.steps; step++) {
    const X = featureRows(scenes, step, traces, spec)
    const M = maskRows(step, rows, spec)
    const lp = await policy.logProbs(X, M, rows)
    const drawn = sampleCategorical(lp, rows, spec.vocab, rng)
    features.set(X, step * rows * spec.featureDim)
    masks.set(M, step * rows * spec.vocab)
    actions.set(drawn.tokens, step * rows)
    logProbs.set(drawn.logProbs, step * rows)
    for (let i = 0; i < rows; i++) traces[i].push(drawn.tokens[i])
  }
  return { rows, scenes, traces, features, masks, actions, logProbs }
}

/** The same row layout for given traces (teacher forcing), e.g. gold traces for the warm start. */
export function teacherForced(scenes: readonly Scene[], traces: readonly number[][], spec: SpatialGridSpec): Rollouts {
  const rows = scenes.length
  if (traces.length !== rows) throw new Error(`teacherForced: ${rows} scenes but ${traces.length} traces`)
  const features = new Float32Array(spec.steps * rows * spec.featureDim)
  const masks = new Float32Array(spec.steps * rows * spec.vocab)
  const actions = new Int32Array(spec.steps * rows)
  for (let step = 0; step < spec.steps; step++) {
    features.set(featureRows(scenes, step, traces, spec), step * rows * spec.featureDim)
    masks.set(maskRows(step, rows, spec), step * rows * spec.vocab)
    for (let i = 0; i < rows; i++) actions[step * rows + i] = traces[i][step]
  }
  return { rows, scenes, traces: traces.map((t) => [...t]), features, masks, actions, logProbs: new Float32Array(spec.steps * rows) }
}

export function goldRollouts(scenes: readonly Scene[], spec: SpatialGridSpec): Rollouts {
  return teacherForced(
    scenes,
    scenes.map((s) => goldTrace(s, spec)),
    spec,
  )
}

export interface JudgedRollouts {
  readonly accuracy: Float64Array
  readonly consistency: Float64Array
  readonly grounding: Float64Array
}

export function judgeRollouts(r: Rollouts, spec: SpatialGridSpec): JudgedRollouts {
  const accuracy = new Float64Array(r.rows)
  const consistency = new Float64Array(r.rows)
  const grounding = new Float64Array(r.rows)
  for (let i = 0; i < r.rows; i++) {
    const j: Judgement = judge(r.scenes[i], r.traces[i], spec)
    accuracy[i] = j.accuracy
    consistency[i] = j.consistency
    grounding[i] = j.grounding
  }
  return { accuracy, consistency, grounding }
}
