/**
 * A policy snapshot (network shape, parameters, optional Adam state) as a plain, versioned record
 * of bytes — what a checkpoint store (LMDB, msgpack, a file) persists.
 */
import type { AdamState } from './adam.js'
import { checkParams, decodeParams, encodeParams, type ParamValues } from './params.js'
import { mlpParamSpecs, validateMlpConfig, type MlpConfig } from './mlp.js'

export const SNAPSHOT_VERSION = 1

export interface PolicySnapshot {
  readonly network: MlpConfig
  readonly params: ParamValues
  readonly adam?: AdamState
  /** Caller's extras: step, policyVersion, λ, RNG state… (must be msgpack/JSON friendly). */
  readonly meta?: Record<string, unknown>
}

export interface SnapshotRecord {
  readonly version: typeof SNAPSHOT_VERSION
  readonly network: { readonly inputDim: number; readonly hidden: number[]; readonly outputDim: number }
  readonly params: Record<string, Uint8Array>
  readonly adam?: { readonly t: number; readonly m: Record<string, Uint8Array>; readonly v: Record<string, Uint8Array> }
  readonly meta?: Record<string, unknown>
}

export function snapshotToRecord(s: PolicySnapshot): SnapshotRecord {
  const specs = mlpParamSpecs(s.network)
  checkParams(specs, s.params, 'snapshot params')
  return {
    version: SNAPSHOT_VERSION,
    network: { inputDim: s.network.inputDim, hidden: [...s.network.hidden], outputDim: s.network.outputDim },
    params: encodeParams(s.params),
    ...(s.adam ? { adam: { t: s.adam.t, m: encodeParams(s.adam.m), v: encodeParams(s.adam.v) } } : {}),
    ...(s.meta ? { meta: s.meta } : {}),
  }
}

const isObject = (x: unknown): x is Record<string, unknown> => typeof x === 'object' && x !== null

/** Validate and decode a stored record; errors name the field that is wrong. */
export function recordToSnapshot(record: unknown): PolicySnapshot {
  if (!isObject(record)) throw new Error(`policy snapshot: expected an object, got ${record === null ? 'null' : typeof record}`)
  if (record.version !== SNAPSHOT_VERSION)
    throw new Error(`policy snapshot: unsupported version ${String(record.version)} (this build reads ${SNAPSHOT_VERSION})`)
  if (!isObject(record.network)) throw new Error('policy snapshot: network is missing')
  if (!isObject(record.params)) throw new Error('policy snapshot: params is missing')
  const network = validateMlpConfig(record.network as unknown as MlpConfig)
  const specs = mlpParamSpecs(network)
  const params = decodeParams(record.params as Record<string, Uint8Array>, 'policy snapshot params')
  checkParams(specs, params, 'policy snapshot params')
  let adam: AdamState | undefined
  if (record.adam !== undefined) {
    const a = record.adam
    if (!isObject(a) || !isObject(a.m) || !isObject(a.v) || typeof a.t !== 'number') throw new Error('policy snapshot: adam must be { t, m, v }')
    adam = {
      t: a.t,
      m: decodeParams(a.m as Record<string, Uint8Array>, 'policy snapshot adam.m'),
      v: decodeParams(a.v as Record<string, Uint8Array>, 'policy snapshot adam.v'),
    }
    checkParams(specs, adam.m, 'policy snapshot adam.m')
    checkParams(specs, adam.v, 'policy snapshot adam.v')
  }
  return {
    network,
    params,
    ...(adam ? { adam } : {}),
    ...(isObject(record.meta) ? { meta: record.meta } : {}),
  }
}
