/**
 * The three policy graphs, all built from the MLP in mlp.ts:
 *
 * - forward:   params, features [rows, D], mask [rows, V] → logProbs [rows, V] (log-softmax of logits + mask)
 * - surrogate: gradient of the clipped GRPO/PPO surrogate (+ optional k3 KL to a reference policy)
 * - nll:       gradient of the weighted negative log-likelihood of given actions (supervised warm start)
 *
 * onnxruntime-node has no training API, so the gradients are derived by hand. For a row with
 * action a, lp = log π(a) and dlp/dlogits = onehot(a) − π; each objective only supplies the
 * per-row scalar dL/dlp and the MLP backward pass does the rest.
 *
 * The surrogate gradient also comes in a second form that takes the forward pass's activations
 * (log π and each hidden layer's tanh output) as inputs instead of recomputing them: an online
 * learner's batch is exactly the rows its actor just ran forward with the same parameters. The
 * nodes after the forward pass are the same in both forms, so given the same activations they
 * compute the same gradient to the bit.
 */
import { GraphBuilder } from './onnx-graph.js'
import { buildMlpBackward, buildMlpForward, declareParamInitializers, declareParamInputs, hiddenActivationName, mlpParamSpecs, type MlpConfig } from './mlp.js'
import type { ParamValues } from './params.js'

export interface SurrogateOptions {
  /** Lower clip range: ρ is clipped below at 1 − clipLow. Default 0.2. */
  readonly clipLow?: number
  /** Upper clip range: ρ is clipped above at 1 + clipHigh (DAPO's clip-higher uses e.g. 0.28). Default clipLow. */
  readonly clipHigh?: number
  /** β of the k3 KL penalty to the reference policy. Default 0: then the graph has no refLogProbs input. */
  readonly klCoef?: number
}

export interface ResolvedSurrogateOptions {
  readonly clipLow: number
  readonly clipHigh: number
  readonly klCoef: number
}

export function resolveSurrogateOptions(o: SurrogateOptions = {}): ResolvedSurrogateOptions {
  const clipLow = o.clipLow ?? 0.2
  const clipHigh = o.clipHigh ?? clipLow
  const klCoef = o.klCoef ?? 0
  if (!(clipLow >= 0 && clipLow < 1)) throw new Error(`surrogate.clipLow must be in [0, 1) (got ${clipLow})`)
  if (!(clipHigh >= 0)) throw new Error(`surrogate.clipHigh must be ≥ 0 (got ${clipHigh})`)
  if (!(klCoef >= 0)) throw new Error(`surrogate.klCoef must be ≥ 0 (got ${klCoef})`)
  return { clipLow, clipHigh, klCoef }
}

const ROWS = 'rows'

/** Shared head: masked log-softmax over the MLP logits (`nameHidden`: see buildMlpForward). */
function logSoftmaxHead(g: GraphBuilder, cfg: MlpConfig, nameHidden = false) {
  const features = g.input('features', 'float32', [ROWS, cfg.inputDim])
  const mask = g.input('mask', 'float32', [ROWS, cfg.outputDim])
  const trace = buildMlpForward(g, cfg, features, nameHidden)
  const logProbs = g.node('LogSoftmax', [g.node('Add', [trace.logits, mask])], { axis: -1 }, 'logProbs')
  return { trace, logProbs }
}

export interface ForwardGraphOptions {
  /**
   * Also output each hidden layer's activation (tanh output) as `hidden0`, `hidden1`, … [rows, width]:
   * what the surrogate gradient's `activations` form takes. Default false.
   */
  readonly activations?: boolean
}

/**
 * Forward graph. With `params` the values are baked in as initializers (standalone export: inputs are
 * only features and mask); without, every parameter is a graph input.
 *
 * @example
 * const training = buildForwardGraph(cfg, undefined, { activations: true }) // outputs logProbs, hidden0
 * const standalone = buildForwardGraph(cfg, params) // inputs features, mask; output logProbs
 */
export function buildForwardGraph(cfg: MlpConfig, params?: ParamValues, options: ForwardGraphOptions = {}): Uint8Array {
  const g = new GraphBuilder('policy_forward')
  if (params) declareParamInitializers(g, cfg, params)
  else declareParamInputs(g, cfg)
  const { logProbs } = logSoftmaxHead(g, cfg, options.activations === true)
  g.output(logProbs, 'float32', [ROWS, cfg.outputDim])
  if (options.activations === true) cfg.hidden.forEach((width, l) => g.output(hiddenActivationName(l), 'float32', [ROWS, width]))
  return g.serialize()
}

/** Where a gradient graph gets the forward pass from: it runs it (`features`) or takes its outputs (`activations`). */
export type GradientSource = 'features' | 'activations'

/** The forward pass of a gradient graph, run in the graph: every parameter, features, mask, actions. */
function forwardInGraph(g: GraphBuilder, cfg: MlpConfig) {
  declareParamInputs(g, cfg)
  const { trace, logProbs } = logSoftmaxHead(g, cfg)
  const actions = g.input('actions', 'int64', [ROWS])
  const weights = g.input('weights', 'float32', [ROWS])
  const onehot = g.node('OneHot', [actions, g.int64s([cfg.outputDim]), g.constant([0, 1], [2])], { axis: -1 })
  return { trace, logProbs, weights, onehot }
}

/**
 * The forward pass of a gradient graph, taken as inputs: log π [rows, V] and `hidden<l>` from a forward
 * pass over the same rows with the same parameters, the action's one-hot as floats, and only the
 * parameters the backward pass reads (W1…WL; W0 and the biases enter the forward pass alone).
 */
function forwardFromActivations(g: GraphBuilder, cfg: MlpConfig) {
  for (const spec of mlpParamSpecs(cfg)) if (spec.name.startsWith('W') && spec.name !== 'W0') g.input(spec.name, 'float32', spec.shape)
  const features = g.input('features', 'float32', [ROWS, cfg.inputDim])
  const hidden = cfg.hidden.map((width, l) => g.input(hiddenActivationName(l), 'float32', [ROWS, width]))
  const logProbs = g.input('logProbs', 'float32', [ROWS, cfg.outputDim])
  const onehot = g.input('onehot', 'float32', [ROWS, cfg.outputDim])
  const weights = g.input('weights', 'float32', [ROWS])
  return { trace: { layerInputs: [features, ...hidden] }, logProbs, weights, onehot }
}

/** Common part of the gradient graphs: per-row log π(action), π, the one-hot of the action. */
function gradientTrunk(g: GraphBuilder, cfg: MlpConfig, source: GradientSource = 'features') {
  const { trace, logProbs, weights, onehot } = source === 'activations' ? forwardFromActivations(g, cfg) : forwardInGraph(g, cfg)
  const axis1 = g.int64s([1])
  // masked entries are ≈ −1e9 but the one-hot zero makes their product exactly 0
  const lp = g.node('ReduceSum', [g.node('Mul', [logProbs, onehot]), axis1], { keepdims: 0 })
  const probs = g.node('Exp', [logProbs])
  const sum = (v: string, as?: string) => g.node('ReduceSum', [v], { keepdims: 0 }, as) // over all rows → scalar
  return { trace, onehot, lp, probs, weights, axis1, sum }
}

/** Close a gradient graph: dL/dlogits = dL/dlp · (onehot − π), then backprop and name the outputs. */
function finishGradient(g: GraphBuilder, cfg: MlpConfig, t: ReturnType<typeof gradientTrunk>, dLp: string): void {
  const dLogits = g.node('Mul', [g.node('Unsqueeze', [dLp, t.axis1]), g.node('Sub', [t.onehot, t.probs])])
  const grads = buildMlpBackward(g, cfg, t.trace, dLogits)
  for (const spec of mlpParamSpecs(cfg)) g.output(g.alias(grads[spec.name], `grad_${spec.name}`), 'float32', spec.shape)
}

/**
 * Gradient of the clipped surrogate, summed over rows with per-row weights w (the caller picks the
 * normalisation, e.g. w = 1/sequences for a sequence-level advantage on every token):
 *
 *   ρ = exp(lp − oldLogProb),  L = −Σ w·min(ρA, clip(ρ, 1−εlow, 1+εhigh)·A) + β·Σ w·k3,
 *   k3 = exp(ref − lp) − (ref − lp) − 1   (the unbiased, non-negative KL estimator of GRPO/TRL).
 *
 * dL/dlp = −w·ρA·[ρA ≤ clip(ρ)A] + β·w·(1 − exp(ref − lp)); the clipped branch has zero gradient.
 * Outputs grad_<param>, loss, meanRatio (w-weighted), clipFraction (w-weighted share of rows whose
 * clipped branch is active: ρ > 1+εhigh with A > 0, or ρ < 1−εlow with A < 0), and meanKL when β > 0.
 *
 * With `source` 'activations' the graph takes the forward pass's outputs instead of running it
 * (see forwardFromActivations): inputs W1…WL, features, hidden<l>, logProbs, onehot, weights,
 * advantages, oldLogProbs (and refLogProbs); the outputs are the same.
 *
 * @example
 * const bytes = buildSurrogateGradientGraph({ inputDim: 61, hidden: [128], outputDim: 10 }, { clipHigh: 0.28 }, 'activations')
 */
export function buildSurrogateGradientGraph(cfg: MlpConfig, options: SurrogateOptions = {}, source: GradientSource = 'features'): Uint8Array {
  const o = resolveSurrogateOptions(options)
  const g = new GraphBuilder('policy_surrogate_gradient')
  const t = gradientTrunk(g, cfg, source)
  const adv = g.input('advantages', 'float32', [ROWS])
  const old = g.input('oldLogProbs', 'float32', [ROWS])
  const ratio = g.node('Exp', [g.node('Sub', [t.lp, old])])
  const clipped = g.node('Clip', [ratio, g.constant(1 - o.clipLow), g.constant(1 + o.clipHigh)])
  const s1 = g.node('Mul', [ratio, adv])
  const s2 = g.node('Mul', [clipped, adv])
  const surr = g.node('Min', [s1, s2])
  const active = g.node('Cast', [g.node('LessOrEqual', [s1, s2])], { to: 1 }) // 1 = float
  let dLp = g.node('Neg', [g.node('Mul', [t.weights, g.node('Mul', [s1, active])])])
  let perRowLoss = g.node('Neg', [surr])
  const wsum = g.node('Max', [t.sum(t.weights), g.constant(1e-12)])
  const wmean = (v: string, as: string) => g.node('Div', [t.sum(g.node('Mul', [t.weights, v])), wsum], {}, as)
  if (o.klCoef > 0) {
    const ref = g.input('refLogProbs', 'float32', [ROWS])
    const diff = g.node('Sub', [ref, t.lp])
    const eDiff = g.node('Exp', [diff])
    const k3 = g.node('Sub', [g.node('Sub', [eDiff, diff]), g.constant(1)])
    const beta = g.constant(o.klCoef)
    perRowLoss = g.node('Add', [perRowLoss, g.node('Mul', [beta, k3])])
    const dKl = g.node('Mul', [beta, g.node('Sub', [g.constant(1), eDiff])])
    dLp = g.node('Add', [dLp, g.node('Mul', [t.weights, dKl])])
    g.output(wmean(k3, 'meanKL'), 'float32', [])
  }
  g.output(t.sum(g.node('Mul', [t.weights, perRowLoss]), 'loss'), 'float32', [])
  g.output(wmean(ratio, 'meanRatio'), 'float32', [])
  g.output(wmean(g.node('Sub', [g.constant(1), active]), 'clipFraction'), 'float32', [])
  finishGradient(g, cfg, t, dLp)
  return g.serialize()
}

/** Gradient of L = −Σ w·log π(action) (cross-entropy on gold actions); outputs grad_<param> and loss. */
export function buildNllGradientGraph(cfg: MlpConfig): Uint8Array {
  const g = new GraphBuilder('policy_nll_gradient')
  const t = gradientTrunk(g, cfg)
  const negW = g.node('Neg', [t.weights])
  g.output(t.sum(g.node('Mul', [negW, t.lp]), 'loss'), 'float32', [])
  finishGradient(g, cfg, t, negW)
  return g.serialize()
}
