/**
 * The token vocabulary, per-step legality masks and gold traces.
 *
 * Vocabulary: claim token c ∈ [0, 2·grid) means "the current subject has coordinate
 * c mod grid on axis ⌊c / grid⌋"; then answer tokens claimTokens + 0 (A less than B) and
 * claimTokens + 1 (A greater than B). A trace is `spec.claims` claim tokens followed by one answer token.
 */
import type { SpatialGridSpec } from './config.js'
import { claimSlots, truthAnswer, type Axis, type Scene } from './scene.js'

/** Additive logit mask value for illegal tokens: large enough that exp() underflows to 0 in float32. */
export const MASKED = -1e9

export interface Claim {
  readonly axis: Axis
  readonly value: number
}

export function claimToken(claim: Claim, spec: SpatialGridSpec): number {
  return claim.axis * spec.grid + claim.value
}

export function decodeClaim(token: number, spec: SpatialGridSpec): Claim {
  if (!Number.isInteger(token) || token < 0 || token >= spec.claimTokens) {
    throw new Error(`decodeClaim: token ${token} is not a claim token (0..${spec.claimTokens - 1})`)
  }
  return { axis: Math.floor(token / spec.grid) as Axis, value: token % spec.grid }
}

/** Answer offset (0 less, 1 greater) of an answer token. */
export function decodeAnswer(token: number, spec: SpatialGridSpec): 0 | 1 {
  const offset = token - spec.claimTokens
  if (offset !== 0 && offset !== 1) throw new Error(`decodeAnswer: token ${token} is not an answer token (${spec.claimTokens} or ${spec.claimTokens + 1})`)
  return offset
}

/** True for steps that emit a claim, false for the final answer step. */
export function isClaimStep(step: number, spec: SpatialGridSpec): boolean {
  if (!Number.isInteger(step) || step < 0 || step >= spec.steps) throw new Error(`step ${step} out of range 0..${spec.steps - 1}`)
  return step < spec.claims
}

/** Additive mask over the vocabulary for one step: 0 where legal, MASKED elsewhere. */
export function legalMask(step: number, spec: SpatialGridSpec): Float32Array {
  const claim = isClaimStep(step, spec)
  const mask = new Float32Array(spec.vocab)
  for (let t = 0; t < spec.vocab; t++) if (t < spec.claimTokens !== claim) mask[t] = MASKED
  return mask
}

/** The mask of one step repeated for `rows` rows ([rows, vocab], row-major), as the policy consumes it. */
export function maskRows(step: number, rows: number, spec: SpatialGridSpec): Float32Array {
  const one = legalMask(step, spec)
  const out = new Float32Array(rows * spec.vocab)
  for (let r = 0; r < rows; r++) out.set(one, r * spec.vocab)
  return out
}

export function isLegal(token: number, step: number, spec: SpatialGridSpec): boolean {
  return legalMask(step, spec)[token] === 0
}

/** The gold template trace: the true value of every claim slot (see `claimSlots`), then the true answer. */
export function goldTrace(scene: Scene, spec: SpatialGridSpec): number[] {
  const claims = claimSlots(scene).map(({ subject, axis }) => claimToken({ axis, value: scene.coords[subject][axis] }, spec))
  return [...claims, spec.claimTokens + truthAnswer(scene)]
}
