/**
 * Exact judges of a trace against its scene. All three are in [0, 1] and higher is better.
 *
 * - accuracy: the answer token is the true relation.
 * - grounding: fraction of the claims that are true of the scene (claim k is about the k-th queried object).
 * - consistency: 1 when both claims state the queried axis with different values and the answer
 *   follows from those values (whether or not they are true), else 0.
 */
import { CLAIMS, type SpatialGridSpec } from './config.js'
import { truthAnswer, type Scene } from './scene.js'
import { decodeAnswer, decodeClaim } from './tokens.js'

export interface Judgement {
  readonly accuracy: number
  readonly grounding: number
  readonly consistency: number
}

/** Per-claim truth, in claim order. */
export function claimTruths(scene: Scene, trace: ArrayLike<number>, spec: SpatialGridSpec): boolean[] {
  const { a, b } = scene.question
  const subjects = [a, b]
  const out: boolean[] = []
  for (let k = 0; k < CLAIMS; k++) {
    const { axis, value } = decodeClaim(trace[k], spec)
    out.push(scene.coords[subjects[k]][axis] === value)
  }
  return out
}

/** The answer offset the claims entail, or null when they do not settle the question. */
export function entailedAnswer(scene: Scene, trace: ArrayLike<number>, spec: SpatialGridSpec): 0 | 1 | null {
  const c0 = decodeClaim(trace[0], spec)
  const c1 = decodeClaim(trace[1], spec)
  const axis = scene.question.axis
  if (c0.axis !== axis || c1.axis !== axis || c0.value === c1.value) return null
  return c0.value > c1.value ? 1 : 0
}

export function judge(scene: Scene, trace: ArrayLike<number>, spec: SpatialGridSpec): Judgement {
  if (trace.length !== spec.steps) throw new Error(`judge: trace has ${trace.length} tokens, expected ${spec.steps}`)
  const answer = decodeAnswer(trace[CLAIMS], spec)
  const truths = claimTruths(scene, trace, spec)
  const entailed = entailedAnswer(scene, trace, spec)
  return {
    accuracy: answer === truthAnswer(scene) ? 1 : 0,
    grounding: truths.filter(Boolean).length / CLAIMS,
    consistency: entailed !== null && entailed === answer ? 1 : 0,
  }
}
