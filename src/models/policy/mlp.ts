/**
 * The policy network as ONNX subgraphs: an MLP (tanh hidden layers) from feature rows to logits,
 * and its hand-written backward pass. Both the sampling graph and the gradient graphs are built
 * from these two functions, so the network is defined once.
 */
import type { Rng } from '../../core/rng.js'
import type { GraphBuilder } from './onnx-graph.js'
import type { ParamSpec, ParamValues } from './params.js'

export interface MlpConfig {
  readonly inputDim: number
  /** Hidden layer widths, e.g. [128]; [] is a linear (softmax-regression) policy. */
  readonly hidden: readonly number[]
  readonly outputDim: number
}

function checkDim(name: string, v: unknown): void {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) throw new Error(`MlpConfig.${name} must be a positive integer (got ${String(v)})`)
}

export function validateMlpConfig(cfg: MlpConfig): MlpConfig {
  checkDim('inputDim', cfg.inputDim)
  checkDim('outputDim', cfg.outputDim)
  if (!Array.isArray(cfg.hidden)) throw new Error(`MlpConfig.hidden must be an array of widths (got ${String(cfg.hidden)})`)
  cfg.hidden.forEach((h, i) => checkDim(`hidden[${i}]`, h))
  return { inputDim: cfg.inputDim, hidden: [...cfg.hidden], outputDim: cfg.outputDim }
}

/** Layer l maps widths[l] → widths[l + 1]; parameters W{l} [in, out] and b{l} [out]. */
function widths(cfg: MlpConfig): number[] {
  return [cfg.inputDim, ...cfg.hidden, cfg.outputDim]
}

export function mlpParamSpecs(cfg: MlpConfig): ParamSpec[] {
  const w = widths(cfg)
  const specs: ParamSpec[] = []
  for (let l = 0; l + 1 < w.length; l++) {
    specs.push({ name: `W${l}`, shape: [w[l], w[l + 1]] }, { name: `b${l}`, shape: [w[l + 1]] })
  }
  return specs
}

/**
 * Initialisation of the prototype: hidden weights normal with std 1/√fan_in, output weights std 0.01
 * so the initial policy is close to uniform over legal tokens, biases 0.
 */
export function initMlpParams(cfg: MlpConfig, rng: Rng): ParamValues {
  const w = widths(cfg)
  const out: ParamValues = {}
  const layers = w.length - 1
  for (let l = 0; l < layers; l++) {
    const std = l === layers - 1 ? 0.01 : 1 / Math.sqrt(w[l])
    const W = new Float32Array(w[l] * w[l + 1])
    for (let i = 0; i < W.length; i++) W[i] = rng.normal() * std
    out[`W${l}`] = W
    out[`b${l}`] = new Float32Array(w[l + 1])
  }
  return out
}

/** Declare every parameter as a float32 graph input named after it. */
export function declareParamInputs(g: GraphBuilder, cfg: MlpConfig): void {
  for (const s of mlpParamSpecs(cfg)) g.input(s.name, 'float32', s.shape)
}

/** Embed parameter values as initializers (standalone export). */
export function declareParamInitializers(g: GraphBuilder, cfg: MlpConfig, values: ParamValues): void {
  for (const s of mlpParamSpecs(cfg)) g.initializer(s.name, values[s.name], s.shape)
}

/** Values the backward pass needs: the input of each layer (x, then each tanh output). */
export interface MlpTrace {
  readonly logits: string
  readonly layerInputs: readonly string[]
}

/** The value name of hidden layer l's activation (its tanh output) where a graph exposes it: `hidden0`, `hidden1`, … */
export const hiddenActivationName = (l: number): string => `hidden${l}`

/**
 * The forward pass from feature rows `x` to logits. With `nameHidden`, each tanh output is named
 * {@link hiddenActivationName}(l) so the graph can return it (see `buildForwardGraph`).
 */
export function buildMlpForward(g: GraphBuilder, cfg: MlpConfig, x: string, nameHidden = false): MlpTrace {
  const layers = cfg.hidden.length + 1
  const layerInputs: string[] = []
  let h = x
  for (let l = 0; l < layers; l++) {
    layerInputs.push(h)
    const z = g.node('Gemm', [h, `W${l}`, `b${l}`]) // h·W + b (b broadcast over rows)
    h = l === layers - 1 ? z : g.node('Tanh', [z], {}, nameHidden ? hiddenActivationName(l) : undefined)
  }
  return { logits: h, layerInputs }
}

/**
 * Backward pass from dL/dlogits [rows, out] to dL/dparam for every parameter; returns the value
 * name holding each parameter's gradient. It reads only the layer inputs (features, then each
 * tanh output) and W1…WL, so they may come from a forward pass run earlier.
 */
export function buildMlpBackward(g: GraphBuilder, cfg: MlpConfig, trace: Pick<MlpTrace, 'layerInputs'>, dLogits: string): Record<string, string> {
  const grads: Record<string, string> = {}
  const axis0 = g.int64s([0])
  let dz = dLogits
  for (let l = cfg.hidden.length; l >= 0; l--) {
    const input = trace.layerInputs[l]
    grads[`W${l}`] = g.node('Gemm', [input, dz], { transA: 1 }) // inputᵀ·dz
    grads[`b${l}`] = g.node('ReduceSum', [dz, axis0], { keepdims: 0 })
    if (l === 0) break
    const dh = g.node('Gemm', [dz, `W${l}`], { transB: 1 }) // dz·Wᵀ
    // input is tanh(z_{l-1}) here, and tanh' = 1 − tanh²
    const one = g.constant(1)
    const dtanh = g.node('Sub', [one, g.node('Mul', [input, input])])
    dz = g.node('Mul', [dh, dtanh])
  }
  return grads
}
