// The policy without its LMDB checkpoint store (import `./checkpoint.js` for that): loads no native module.
export { Adam, type AdamOptions, type AdamState, type AdamStepInfo } from './adam.js'
export {
  buildForwardGraph,
  buildNllGradientGraph,
  buildSurrogateGradientGraph,
  resolveSurrogateOptions,
  type ForwardGraphOptions,
  type GradientSource,
  type ResolvedSurrogateOptions,
  type SurrogateOptions,
} from './graphs.js'
export { hiddenActivationName, initMlpParams, mlpParamSpecs, validateMlpConfig, type MlpConfig } from './mlp.js'
export { GraphBuilder, decodeModel, encodeModel, float, DEFAULT_OPSET, type AttrValue, type Dim, type ElemType } from './onnx-graph.js'
export {
  bytesToFloats,
  checkParams,
  cloneParams,
  decodeParams,
  encodeParams,
  floatsToBytes,
  paramSize,
  zerosLike,
  type ParamSpec,
  type ParamValues,
} from './params.js'
export { OnnxPolicy, type NllBatch, type NllResult, type PolicyActivations, type PolicyOptions, type SurrogateBatch, type SurrogateResult } from './policy.js'
export { argmaxRows, sampleCategorical, type SampledTokens } from '../../math/sample.js'
export { SNAPSHOT_VERSION, recordToSnapshot, snapshotToRecord, type PolicySnapshot, type SnapshotRecord } from './snapshot.js'
