/**
 * A user's ONNX model as a `ScoringModel` for the `scoreRollouts` operator: one float input
 * [rows, features] and one output with one score per row ([rows] or [rows, 1]).
 */
import ort from 'onnxruntime-node'

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
  executionProviders?: ort.InferenceSession.ExecutionProviderConfig[]
  intraOpNumThreads?: number
}

/** Loads a model from a .onnx path or its bytes. */
export async function loadOnnxScorer(model: string | Uint8Array, options: OnnxScorerOptions = {}): Promise<OnnxScorer> {
  const sessionOptions: ort.InferenceSession.SessionOptions = {
    executionProviders: options.executionProviders ?? ['cpu'],
    intraOpNumThreads: options.intraOpNumThreads ?? 1,
  }
  const session =
    typeof model === 'string' ? await ort.InferenceSession.create(model, sessionOptions) : await ort.InferenceSession.create(model, sessionOptions)
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
      const out = await session.run({ [inputName]: new ort.Tensor('float32', features, [rows, featureDim]) })
      return out[outputName].data as Float32Array
    },
    release: () => session.release(),
  }
}
