/**
 * Exact judges of a trace against its scene. All three are in [0, 1] and higher is better.
 *
 * - accuracy: the answer token is the true relation.
 * - grounding: fraction of the claims that are true of the scene (claim k is about the subject of
 *   the k-th slot of the template, see `claimSlots`).
 * - consistency: 1 when every claim states its slot's axis, the claimed values settle the question
 *   (A's compared value — its coordinate, or x + y at the hard level — differs from B's) and the
 *   answer follows from those values (whether or not they are true), else 0.
 */
import type { SpatialGridSpec } from './config.js'
import { claimSlots, truthAnswer, type Scene } from './scene.js'
import { decodeAnswer, decodeClaim } from './tokens.js'

export interface Judgement {
  readonly accuracy: number
  readonly grounding: number
  readonly consistency: number
}

/** Per-claim truth, in claim order. */
export function claimTruths(scene: Scene, trace: ArrayLike<number>, spec: SpatialGridSpec): boolean[] {
  return claimSlots(scene).map(({ subject }, k) => {
    const { axis, value } = decodeClaim(trace[k], spec)
    return scene.coords[subject][axis] === value
  })
}

/** The answer offset the claims entail, or null when they do not settle the question. */
export function entailedAnswer(scene: Scene, trace: ArrayLike<number>, spec: SpatialGridSpec): 0 | 1 | null {
  let valueA = 0
  let valueB = 0
  const slots = claimSlots(scene)
  for (let k = 0; k < slots.length; k++) {
    const claim = decodeClaim(trace[k], spec)
    if (claim.axis !== slots[k].axis) return null
    // the first half of the slots are A's, the second half B's
    if (k < slots.length / 2) valueA += claim.value
    else valueB += claim.value
  }
  if (valueA === valueB) return null
  return valueA > valueB ? 1 : 0
}

export function judge(scene: Scene, trace: ArrayLike<number>, spec: SpatialGridSpec): Judgement {
  if (trace.length !== spec.steps) throw new Error(`judge: trace has ${trace.length} tokens, expected ${spec.steps}`)
  if (Boolean(scene.question.sum) !== (spec.level === 'hard'))
    throw new Error(`judge: the scene is of level ${scene.question.sum ? 'hard' : 'easy'}, the spec of level ${spec.level}`)
  const answer = decodeAnswer(trace[spec.claims], spec)
  const truths = claimTruths(scene, trace, spec)
  const entailed = entailedAnswer(scene, trace, spec)
  return {
    accuracy: answer === truthAnswer(scene) ? 1 : 0,
    grounding: truths.filter(Boolean).length / spec.claims,
    consistency: entailed !== null && entailed === answer ? 1 : 0,
  }
}
