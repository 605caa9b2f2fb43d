// The SpatialGrid task: pure TypeScript, no ONNX. The reference training loop (which loads
// onnxruntime) is in './train.js' and deliberately not re-exported here.
export {
  CLAIMS,
  DEFAULT_SPATIALGRID_CONFIG,
  LEVELS,
  LEVEL_DEFAULTS,
  resolveSpatialGridConfig,
  type Level,
  type SpatialGridConfig,
  type SpatialGridSpec,
} from './config.js'
export { featureRows, writeFeatures } from './features.js'
export { claimTruths, entailedAnswer, judge, type Judgement } from './judges.js'
export { describeRollout, questionText, renderGrid, renderRollout, sceneObjects, typeName, type RolloutDescription, type SceneObject } from './render.js'
export { Rng, deriveSeed, splitmix32 } from '../../core/rng.js'
export { goldRollouts, judgeRollouts, sampleRollouts, teacherForced, type JudgedRollouts, type Rollouts, type TokenPolicy } from './rollout.js'
export { AXIS_NAMES, claimSlots, comparedValue, sampleScene, sampleScenes, truthAnswer, type Axis, type ClaimSlot, type Question, type Scene } from './scene.js'
export { MASKED, claimToken, decodeAnswer, decodeClaim, goldTrace, isClaimStep, isLegal, legalMask, maskRows, type Claim } from './tokens.js'
