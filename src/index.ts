/**
 * `dualstream`: the library without its servers — the config, the data model, rollout
 * validation, the FGRPO operators, the pure math of a step, scoring with a user's ONNX model,
 * and the JSON Lines replay. Importing it loads RxJS and zod, never LMDB, ws or onnxruntime
 * (`loadOnnxScorer` loads onnxruntime-node, an optional peer dependency, when called). The
 * durable engine and its server are in `dualstream/server`; the SpatialGrid task and the ONNX
 * policy in `dualstream/models`.
 *
 * @example
 * import { from } from 'rxjs'
 * import { fgrpo, parseConfig } from 'dualstream'
 * const config = parseConfig({ groupSize: 4, batchGroups: 8, objectives: [{ channel: 'accuracy' }] })
 * from(rollouts).pipe(fgrpo(config)).subscribe((batch) => console.log(batch.step, batch.advantages))
 */

// the configuration
export { ConfigError, ConfigSchema, configChannels, formatPath, loadConfig, parseConfig } from './core/config.js'
export type { Config, ConfigInput, ConstraintSpec, DualRule, LogRule, Normalize, ObjectiveSpec, PidRule, SgdRule } from './core/config.js'

// the data model: rollouts, groups, batches, the dual state, drop events
export type * from './core/types.js'

// rollout validation, as the engine does it at ingest
export { DEFAULT_LIMITS, formatFieldError, validateRollout, type FieldError, type Validation, type ValidationLimits } from './core/validate.js'

// the operators (also `dualstream/operators`)
export * from './operators.js'

// the pure math of a step (also `dualstream/math`)
export * from './math.js'

// a user's ONNX model as a scoreRollouts model (onnxruntime-node loaded by the call)
export { loadOnnxScorer, type ExecutionProvider, type OnnxScorer, type OnnxScorerOptions } from './models/onnxScorer.js'

// a recorded stream (JSON Lines) through the operators, and the record it writes per batch
export { replay, ReplayInputError, type ReplayOptions, type ReplaySummary } from './apps/replay.js'
export { batchRecord, type BatchRecord } from './state/batchRecord.js'
