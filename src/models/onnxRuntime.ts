/**
 * onnxruntime-node, loaded on first use. It is an optional peer dependency (a native addon of
 * tens of megabytes): importing dualstream never loads it, and a user who scores rollouts with
 * a model of their own never has to install it. Only `loadOnnxScorer` and `OnnxPolicy.create`
 * ask for it, and they say how to install it when it is missing.
 */
/** The onnxruntime-node module: `InferenceSession`, `Tensor`, … */
export type OnnxRuntime = typeof import('onnxruntime-node')

// its named exports, not `default`: TypeScript loaders that honour `__esModule` (tsx) give no default
const importOnnxRuntime = (): Promise<OnnxRuntime> => import('onnxruntime-node')

/**
 * Loads onnxruntime-node for `user` (named in the error), with an error that says what to
 * install when the package is missing; any other failure (a broken native binary) as it came.
 *
 * @example
 * const ort = await loadOnnxRuntime('loadOnnxScorer')
 * const session = await ort.InferenceSession.create(modelBytes)
 */
export async function loadOnnxRuntime(user: string, load: () => Promise<OnnxRuntime> = importOnnxRuntime): Promise<OnnxRuntime> {
  try {
    return await load()
  } catch (error) {
    // only the package itself missing: a missing dependency of it is a broken install, reported as is
    if ((error as NodeJS.ErrnoException).code === 'ERR_MODULE_NOT_FOUND' && String((error as Error).message).includes("'onnxruntime-node'")) {
      throw new Error(`${user} needs the optional package onnxruntime-node: npm install onnxruntime-node`, { cause: error })
    }
    throw error
  }
}
