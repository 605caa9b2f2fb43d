/**
 * The policy on onnxruntime-node: four sessions (forward, surrogate gradient in its two forms, NLL
 * gradient) over one MLP whose parameters are graph inputs owned here as Float32Arrays. Adam
 * updates `policy.params` in place and the next call simply feeds the new values. onnxruntime-node
 * (an optional peer dependency) is loaded by `OnnxPolicy.create`, not on import.
 *
 * An online learner's gradient batch is the rows its actor just ran forward with the same
 * parameters: `forwardInto` keeps those forward passes' activations, and `surrogateGradients`
 * given them skips the forward pass (the larger part of the gradient's work) and gets the same
 * gradient to the bit.
 */
import { writeFile } from 'node:fs/promises'
import type ort from 'onnxruntime-node'
import { Rng } from '../../core/rng.js'
import type { ExecutionProvider } from '../onnxScorer.js'
import { loadOnnxRuntime, type OnnxRuntime } from '../onnxRuntime.js'
import {
  buildForwardGraph,
  buildNllGradientGraph,
  buildSurrogateGradientGraph,
  resolveSurrogateOptions,
  type ResolvedSurrogateOptions,
  type SurrogateOptions,
} from './graphs.js'
import { hiddenActivationName, initMlpParams, mlpParamSpecs, validateMlpConfig, type MlpConfig } from './mlp.js'
import { checkParams, cloneParams, type ParamSpec, type ParamValues } from './params.js'

export interface PolicyOptions {
  readonly inputDim: number
  readonly vocab: number
  /** Hidden widths (tanh). Default [128]. */
  readonly hidden?: readonly number[]
  /** Seed of the initialisation (ignored when `params` is given). Default 0. */
  readonly seed?: number
  /** Start from these parameters (copied) instead of a fresh initialisation. */
  readonly params?: ParamValues
  readonly surrogate?: SurrogateOptions
  /** Passed through to onnxruntime; default ['cpu']. */
  readonly executionProviders?: readonly ExecutionProvider[]
  /** Threads per operator; default 1 so two trainings can share a 2-core machine. */
  readonly intraOpNumThreads?: number
}

/**
 * What a forward pass computed for stacked rows, kept for a gradient over the same rows: log π
 * [rows, vocab] and each hidden layer's tanh output [rows, hidden[l]], row-major. Make one with
 * {@link OnnxPolicy.allocateActivations}, fill it with {@link OnnxPolicy.forwardInto}.
 */
export interface PolicyActivations {
  readonly rows: number
  readonly logProbs: Float32Array
  readonly hidden: readonly Float32Array[]
}

/** Rows for the surrogate gradient: every token position of every rollout, stacked. */
export interface SurrogateBatch {
  readonly rows: number
  /** [rows, inputDim] */
  readonly features: Float32Array
  /** [rows, vocab], additive (0 legal, −1e9 illegal) */
  readonly mask: Float32Array
  /** the sampled token of each row */
  readonly actions: ArrayLike<number>
  readonly advantages: Float32Array
  /** log π_old(action) at sampling time */
  readonly oldLogProbs: Float32Array
  /** log π_ref(action); required when klCoef > 0, ignored otherwise */
  readonly refLogProbs?: Float32Array
  /** per-row weight of the sum (the caller's normalisation) */
  readonly weights: Float32Array
  /**
   * The forward pass of exactly these rows with the current parameters (from `forwardInto`): then
   * the gradient does not recompute it. Activations of other rows or older parameters give a
   * wrong gradient; nothing here can tell.
   */
  readonly activations?: PolicyActivations
}

export interface SurrogateResult {
  readonly grads: ParamValues
  readonly loss: number
  readonly meanRatio: number
  readonly clipFraction: number
  /** w-weighted mean k3 KL to the reference (only when klCoef > 0). */
  readonly meanKL?: number
}

/** Rows for the supervised gradient (−Σ w·log π(action)). */
export interface NllBatch {
  readonly rows: number
  readonly features: Float32Array
  readonly mask: Float32Array
  readonly actions: ArrayLike<number>
  readonly weights: Float32Array
}

export interface NllResult {
  readonly grads: ParamValues
  readonly loss: number
}

function checkLength(name: string, a: ArrayLike<number> | undefined, n: number): void {
  if (a === undefined || a.length !== n) throw new Error(`policy batch: ${name} has ${a === undefined ? 'no' : a.length} values, expected ${n}`)
}

export class OnnxPolicy {
  readonly network: MlpConfig
  readonly specs: readonly ParamSpec[]
  readonly surrogate: ResolvedSurrogateOptions
  /** Live parameters: mutate in place (Adam) or replace with {@link OnnxPolicy.setParams}. */
  params: ParamValues

  private constructor(
    network: MlpConfig,
    params: ParamValues,
    surrogate: ResolvedSurrogateOptions,
    private readonly runtime: OnnxRuntime,
    private readonly forwardSession: ort.InferenceSession,
    private readonly surrogateSession: ort.InferenceSession,
    private readonly surrogateFromActivationsSession: ort.InferenceSession,
    private readonly nllSession: ort.InferenceSession,
  ) {
    this.network = network
    this.specs = mlpParamSpecs(network)
    this.params = params
    this.surrogate = surrogate
  }

  /** Builds the four sessions (needs the optional package onnxruntime-node). */
  static async create(options: PolicyOptions): Promise<OnnxPolicy> {
    const network = validateMlpConfig({ inputDim: options.inputDim, hidden: options.hidden ?? [128], outputDim: options.vocab })
    const surrogate = resolveSurrogateOptions(options.surrogate)
    let params: ParamValues
    if (options.params) {
      checkParams(mlpParamSpecs(network), options.params, 'PolicyOptions.params')
      params = cloneParams(options.params)
    } else {
      params = initMlpParams(network, new Rng(options.seed ?? 0))
    }
    const sessionOptions: ort.InferenceSession.SessionOptions = {
      executionProviders: options.executionProviders ?? ['cpu'],
      intraOpNumThreads: options.intraOpNumThreads ?? 1,
      interOpNumThreads: 1,
      executionMode: 'sequential',
      graphOptimizationLevel: 'all',
    }
    const runtime = await loadOnnxRuntime('OnnxPolicy')
    const [fwd, sur, surCached, nll] = await Promise.all([
      runtime.InferenceSession.create(buildForwardGraph(network, undefined, { activations: true }), sessionOptions),
      runtime.InferenceSession.create(buildSurrogateGradientGraph(network, surrogate), sessionOptions),
      runtime.InferenceSession.create(buildSurrogateGradientGraph(network, surrogate, 'activations'), sessionOptions),
      runtime.InferenceSession.create(buildNllGradientGraph(network), sessionOptions),
    ])
    return new OnnxPolicy(network, params, surrogate, runtime, fwd, sur, surCached, nll)
  }

  /** Replace the parameters (copied), e.g. after loading a checkpoint. */
  setParams(values: ParamValues): void {
    checkParams(this.specs, values, 'OnnxPolicy.setParams')
    this.params = cloneParams(values)
  }

  // one tensor per parameter array, made again only when the array is replaced (Adam updates in place)
  private readonly paramTensors: Record<string, ort.Tensor> = {}

  private paramFeeds(): Record<string, ort.Tensor> {
    for (const s of this.specs) {
      const values = this.params[s.name]
      if (this.paramTensors[s.name]?.data !== values) this.paramTensors[s.name] = new this.runtime.Tensor('float32', values, s.shape)
    }
    return this.paramTensors
  }

  private checkRows(rows: number): void {
    if (!Number.isInteger(rows) || rows < 1) throw new Error(`policy batch: rows must be a positive integer (got ${rows})`)
  }

  private rowFeeds(rows: number, features: Float32Array, mask: Float32Array): Record<string, ort.Tensor> {
    this.checkRows(rows)
    checkLength('features', features, rows * this.network.inputDim)
    checkLength('mask', mask, rows * this.network.outputDim)
    return {
      ...this.paramFeeds(),
      features: new this.runtime.Tensor('float32', features, [rows, this.network.inputDim]),
      mask: new this.runtime.Tensor('float32', mask, [rows, this.network.outputDim]),
    }
  }

  private actionFeeds(rows: number, actions: ArrayLike<number>, weights: Float32Array): Record<string, ort.Tensor> {
    checkLength('actions', actions, rows)
    checkLength('weights', weights, rows)
    const a = new BigInt64Array(rows)
    for (let i = 0; i < rows; i++) {
      const t = actions[i]
      if (!Number.isInteger(t) || t < 0 || t >= this.network.outputDim)
        throw new Error(`policy batch: actions[${i}] = ${t} is not a token in 0..${this.network.outputDim - 1}`)
      a[i] = BigInt(t)
    }
    return { actions: new this.runtime.Tensor('int64', a, [rows]), weights: new this.runtime.Tensor('float32', weights, [rows]) }
  }

  private grads(out: ort.InferenceSession.ReturnType): ParamValues {
    const grads: ParamValues = {}
    for (const s of this.specs) grads[s.name] = out[`grad_${s.name}`].data as Float32Array
    return grads
  }

  /** log π over the vocabulary, [rows, vocab] row-major, for feature rows under an additive mask. */
  async logProbs(features: Float32Array, mask: Float32Array, rows: number): Promise<Float32Array> {
    const out = await this.forwardSession.run(this.rowFeeds(rows, features, mask), ['logProbs'])
    return out.logProbs.data as Float32Array
  }

  /**
   * Zeroed room for the activations of `rows` stacked rows (see {@link OnnxPolicy.forwardInto}).
   *
   * @example
   * const kept = policy.allocateActivations(steps * rows)
   */
  allocateActivations(rows: number): PolicyActivations {
    this.checkRows(rows)
    return {
      rows,
      logProbs: new Float32Array(rows * this.network.outputDim),
      hidden: this.network.hidden.map((width) => new Float32Array(rows * width)),
    }
  }

  /**
   * {@link OnnxPolicy.logProbs} that also keeps the forward pass's activations: log π and each
   * hidden layer's output for these `rows` are copied into `into` from row `offset` on (onnxruntime-node
   * copies every output into a fresh array, so writing into `into` directly would save nothing).
   * Returns the log π rows, as `logProbs` does.
   *
   * @example
   * const kept = policy.allocateActivations(2 * rows)
   * const lp0 = await policy.forwardInto(X0, M0, rows, kept, 0)
   * const lp1 = await policy.forwardInto(X1, M1, rows, kept, rows)
   * // a surrogate gradient over the stacked rows [X0; X1] may now pass `activations: kept`
   */
  async forwardInto(features: Float32Array, mask: Float32Array, rows: number, into: PolicyActivations, offset: number): Promise<Float32Array> {
    const feeds = this.rowFeeds(rows, features, mask)
    if (!Number.isInteger(offset) || offset < 0 || offset + rows > into.rows)
      throw new Error(`forwardInto: rows ${offset}..${offset + rows - 1} do not fit activations of ${into.rows} rows`)
    this.checkActivations(into, into.rows)
    const out = await this.forwardSession.run(feeds)
    const V = this.network.outputDim
    into.logProbs.set(out.logProbs.data as Float32Array, offset * V)
    this.network.hidden.forEach((width, l) => into.hidden[l].set(out[hiddenActivationName(l)].data as Float32Array, offset * width))
    return out.logProbs.data as Float32Array
  }

  private checkActivations(a: PolicyActivations, rows: number): void {
    if (a.rows !== rows) throw new Error(`policy batch: activations hold ${a.rows} rows, expected ${rows}`)
    checkLength('activations.logProbs', a.logProbs, rows * this.network.outputDim)
    if (a.hidden.length !== this.network.hidden.length)
      throw new Error(`policy batch: activations hold ${a.hidden.length} hidden layers, the network has ${this.network.hidden.length}`)
    this.network.hidden.forEach((width, l) => checkLength(`activations.hidden[${l}]`, a.hidden[l], rows * width))
  }

  /**
   * Gradient of the clipped surrogate (+ k3 KL when klCoef > 0) and the PPO diagnostics. With
   * `batch.activations` the forward pass is taken from them instead of being run again.
   */
  async surrogateGradients(batch: SurrogateBatch): Promise<SurrogateResult> {
    const { rows } = batch
    const feeds = { ...this.rowFeeds(rows, batch.features, batch.mask), ...this.actionFeeds(rows, batch.actions, batch.weights) }
    checkLength('advantages', batch.advantages, rows)
    checkLength('oldLogProbs', batch.oldLogProbs, rows)
    feeds.advantages = new this.runtime.Tensor('float32', batch.advantages, [rows])
    feeds.oldLogProbs = new this.runtime.Tensor('float32', batch.oldLogProbs, [rows])
    if (this.surrogate.klCoef > 0) {
      checkLength('refLogProbs (required when klCoef > 0)', batch.refLogProbs, rows)
      feeds.refLogProbs = new this.runtime.Tensor('float32', batch.refLogProbs as Float32Array, [rows])
    }
    let session = this.surrogateSession
    if (batch.activations !== undefined) {
      session = this.surrogateFromActivationsSession
      this.activationFeeds(feeds, rows, batch.actions, batch.activations)
    }
    // each session gets only the inputs it declares (the activations form takes no mask, actions, W0 or biases)
    const inputs: Record<string, ort.Tensor> = {}
    for (const name of session.inputNames) inputs[name] = feeds[name]
    const out = await session.run(inputs)
    const scalar = (name: string) => (out[name].data as Float32Array)[0]
    return {
      grads: this.grads(out),
      loss: scalar('loss'),
      meanRatio: scalar('meanRatio'),
      clipFraction: scalar('clipFraction'),
      ...(this.surrogate.klCoef > 0 ? { meanKL: scalar('meanKL') } : {}),
    }
  }

  /** Adds the activations form's inputs: the kept forward pass and the actions' one-hot rows (actions already checked). */
  private activationFeeds(feeds: Record<string, ort.Tensor>, rows: number, actions: ArrayLike<number>, activations: PolicyActivations): void {
    this.checkActivations(activations, rows)
    const { Tensor } = this.runtime
    const V = this.network.outputDim
    const onehot = new Float32Array(rows * V)
    for (let i = 0; i < rows; i++) onehot[i * V + actions[i]] = 1
    feeds.onehot = new Tensor('float32', onehot, [rows, V])
    feeds.logProbs = new Tensor('float32', activations.logProbs, [rows, V])
    this.network.hidden.forEach((width, l) => (feeds[hiddenActivationName(l)] = new Tensor('float32', activations.hidden[l], [rows, width])))
  }

  /** Gradient of −Σ w·log π(action): the supervised warm start on gold traces. */
  async nllGradients(batch: NllBatch): Promise<NllResult> {
    const feeds = { ...this.rowFeeds(batch.rows, batch.features, batch.mask), ...this.actionFeeds(batch.rows, batch.actions, batch.weights) }
    const out = await this.nllSession.run(feeds)
    return { grads: this.grads(out), loss: (out.loss.data as Float32Array)[0] }
  }

  /** A standalone .onnx model (inputs: features, mask; output: logProbs) with the current parameters baked in. */
  exportOnnx(): Uint8Array {
    return buildForwardGraph(this.network, this.params)
  }

  /** Write {@link OnnxPolicy.exportOnnx} to a .onnx file any onnxruntime (or Netron) can open. */
  async saveOnnx(path: string): Promise<void> {
    await writeFile(path, this.exportOnnx())
  }

  async release(): Promise<void> {
    await Promise.all([
      this.forwardSession.release(),
      this.surrogateSession.release(),
      this.surrogateFromActivationsSession.release(),
      this.nllSession.release(),
    ])
  }
}
