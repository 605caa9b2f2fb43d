/**
 * A user's ONNX model as a `ScoringModel` for the `scoreRollouts` operator: one float input
 * [rows, features] and one output with one score per row ([rows] or [rows, 1]). onnxruntime-node
 * (an optional peer dependency) is loaded by the first call, not on import.
 */
import type ort from 'onnxruntime-node'
import { loadOnnxRuntime } from './onnxRuntime.js'

/**
 * An execution provider as onnxruntime takes it: a name (`'cpu'`, `'cuda'`, …) or its options
 * (`{ name: 'cuda', deviceId: 0 }`). Declared here, not taken from onnxruntime-node, so that
 * dualstream's published types do not need that optional package installed.
 */
export type ExecutionProvider = string | { readonly name: string; readonly [option: string]: unknown }

export interface OnnxScorer {
  /** Scores a [rows, featureDim] batch. */
  run: (features: Float32Array, rows: number) => Promise<Float32Array>
  readonly inputName: string
  readonly outputName: string
  release(): Promise<void>
}

export interface OnnxScorerOptions {
  /** Input and output to use (default: the model's first). */
  input?: string
  output?: string
  /** Default ['cpu']. */
  executionProviders?: ExecutionProvider[]
  intraOpNumThreads?: number
}

/**
 * Loads a model from a .onnx path or its bytes (needs the optional package onnxruntime-node).
 *
 * @example
 * const judge = await loadOnnxScorer('judge.onnx')
 * rollouts$.pipe(scoreRollouts({ channel: 'judge', featureDim: 2, features: (r) => r.payload.x, model: judge.run }))
 */
export async function loadOnnxScorer(model: string | Uint8Array, options: OnnxScorerOptions = {}): Promise<OnnxScorer> {
  const runtime = await loadOnnxRuntime('loadOnnxScorer')
  const sessionOptions: ort.InferenceSession.SessionOptions = {
    executionProviders: options.executionProviders ?? ['cpu'],
    intraOpNumThreads: options.intraOpNumThreads ?? 1,
  }
  const session =
    typeof model === 'string' ? await runtime.InferenceSession.create(model, sessionOptions) : await runtime.InferenceSession.create(model, sessionOptions)
  const inputName = options.input ?? session.inputNames[0]
  const outputName = options.output ?? session.outputNames[0]
  for (const [kind, name, names] of [
    ['input', inputName, session.inputNames],
    ['output', outputName, session.outputNames],
  ] as const) {
    if (!names.includes(name)) throw new Error(`the scoring model has no ${kind} "${name}" (it has ${names.join(', ')})`)
  }
  return {
    inputName,
    outputName,
    run: async (features, rows) => {
      const featureDim = features.length / rows
      const out = await session.run({ [inputName]: new runtime.Tensor('float32', features, [rows, featureDim]) })
      return out[outputName].data as Float32Array
    },
    release: () => session.release(),
  }
}
