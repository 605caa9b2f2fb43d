/**
 * Adam (Kingma & Ba) on named Float32Arrays, updating parameters in place, with bias correction
 * and optional global gradient-norm clipping. The state (t, m, v) is plain data for checkpoints.
 */
import { checkParams, cloneParams, type ParamSpec, type ParamValues } from './params.js'

export interface AdamOptions {
  readonly lr: number
  readonly beta1?: number
  readonly beta2?: number
  readonly eps?: number
  /** Rescale the gradient when its global L2 norm exceeds this (no clipping when undefined). */
  readonly maxGradNorm?: number
}

export interface AdamState {
  /** Number of steps taken. */
  readonly t: number
  readonly m: ParamValues
  readonly v: ParamValues
}

export interface AdamStepInfo {
  /** Global L2 norm of the gradient before clipping. */
  readonly gradNorm: number
  /** Factor the gradient was multiplied by (1 when not clipped). */
  readonly scale: number
}

export class Adam {
  lr: number
  readonly beta1: number
  readonly beta2: number
  readonly eps: number
  readonly maxGradNorm: number | undefined
  private t = 0
  private m: ParamValues
  private v: ParamValues

  constructor(
    private readonly specs: readonly ParamSpec[],
    options: AdamOptions,
    state?: AdamState,
  ) {
    this.lr = options.lr
    this.beta1 = options.beta1 ?? 0.9
    this.beta2 = options.beta2 ?? 0.999
    this.eps = options.eps ?? 1e-8
    this.maxGradNorm = options.maxGradNorm
    if (!(this.lr > 0)) throw new Error(`Adam: lr must be > 0 (got ${this.lr})`)
    if (!(this.beta1 >= 0 && this.beta1 < 1)) throw new Error(`Adam: beta1 must be in [0, 1) (got ${this.beta1})`)
    if (!(this.beta2 >= 0 && this.beta2 < 1)) throw new Error(`Adam: beta2 must be in [0, 1) (got ${this.beta2})`)
    if (this.maxGradNorm !== undefined && !(this.maxGradNorm > 0)) throw new Error(`Adam: maxGradNorm must be > 0 (got ${this.maxGradNorm})`)
    if (state) {
      checkParams(specs, state.m, 'Adam state m')
      checkParams(specs, state.v, 'Adam state v')
      if (!Number.isInteger(state.t) || state.t < 0) throw new Error(`Adam state: t must be a non-negative integer (got ${state.t})`)
      this.t = state.t
      this.m = cloneParams(state.m)
      this.v = cloneParams(state.v)
    } else {
      this.m = {}
      this.v = {}
      this.reset()
    }
  }

  /** Forget the moments (e.g. between the warm start and RL, as the prototype does). */
  reset(): void {
    this.t = 0
    for (const s of this.specs) {
      const n = s.shape.reduce((a, b) => a * b, 1)
      this.m[s.name] = new Float32Array(n)
      this.v[s.name] = new Float32Array(n)
    }
  }

  get steps(): number {
    return this.t
  }

  /** A deep copy of the optimizer state. */
  state(): AdamState {
    return { t: this.t, m: cloneParams(this.m), v: cloneParams(this.v) }
  }

  /** One update of `params` in place from `grads` (gradients of the loss to minimise). */
  step(params: ParamValues, grads: Record<string, Float32Array>): AdamStepInfo {
    checkParams(this.specs, params, 'Adam.step params')
    checkParams(this.specs, grads, 'Adam.step grads')
    let sq = 0
    for (const s of this.specs) sq = addSquares(grads[s.name], sq)
    const gradNorm = Math.sqrt(sq)
    if (!Number.isFinite(gradNorm)) throw new Error(`Adam.step: gradient norm is ${gradNorm}; refusing to update`)
    const scale = this.maxGradNorm !== undefined && gradNorm > this.maxGradNorm ? this.maxGradNorm / gradNorm : 1
    this.t += 1
    const { beta1: b1, beta2: b2, eps } = this
    const c1 = 1 - Math.pow(b1, this.t)
    const c2 = 1 - Math.pow(b2, this.t)
    const stepSize = this.lr / c1
    const sqrtC2 = Math.sqrt(c2)
    for (const s of this.specs) update(params[s.name], grads[s.name], this.m[s.name], this.v[s.name], scale, b1, b2, eps, stepSize, sqrtC2)
    return { gradNorm, scale }
  }
}

/** `sq` plus the sum of squares of `g`, accumulated in order (the gradient norm is one running sum over every parameter). */
function addSquares(g: Float32Array, sq: number): number {
  for (let i = 0; i < g.length; i++) sq += g[i] * g[i]
  return sq
}

/**
 * One Adam update of one parameter array, in place. A plain function over typed arrays so the
 * JIT compiles one tight loop; the arithmetic is the textbook update in float64, each moment
 * rounded to float32 where it is stored (Math.fround: the value stored, then read back).
 */
function update(
  p: Float32Array,
  g: Float32Array,
  m: Float32Array,
  v: Float32Array,
  scale: number,
  b1: number,
  b2: number,
  eps: number,
  stepSize: number,
  sqrtC2: number,
): void {
  const a1 = 1 - b1
  const a2 = 1 - b2
  for (let i = 0; i < p.length; i++) {
    const gi = g[i] * scale
    const mi = Math.fround(b1 * m[i] + a1 * gi)
    const vi = Math.fround(b2 * v[i] + a2 * gi * gi)
    m[i] = mi
    v[i] = vi
    // p −= lr · m̂ / (√v̂ + eps), with m̂ = m/c1 and v̂ = v/c2
    p[i] -= (stepSize * mi) / (Math.sqrt(vi) / sqrtC2 + eps)
  }
}
