/**
 * `dualstream/models`: what the built-in training is made of, for use on its own — the
 * SpatialGrid task (scenes, tokens, judges, rollouts, rendering) and the policy (an MLP whose
 * forward pass and gradients run as ONNX graphs on onnxruntime, with Adam and snapshots), and
 * `loadOnnxScorer` for a model of your own. onnxruntime-node, an optional peer dependency, is
 * loaded by `OnnxPolicy.create` and `loadOnnxScorer`, not on import; LMDB is not loaded.
 *
 * @example
 * import { OnnxPolicy, resolveSpatialGridConfig } from 'dualstream/models'
 * const task = resolveSpatialGridConfig({ grid: 4 })
 * const policy = await OnnxPolicy.create({ inputDim: task.featureDim, vocab: task.vocab })
 */

// the SpatialGrid task
export * from './models/spatialgrid/index.js'

// the policy: graphs, parameters, the optimiser, snapshots (its LMDB checkpoint store stays with the training)
export * from './models/policy/index.js'

// a user's ONNX model as a scoring model
export { loadOnnxScorer, type ExecutionProvider, type OnnxScorer, type OnnxScorerOptions } from './models/onnxScorer.js'
