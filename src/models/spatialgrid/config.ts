/**
 * Sizes of the SpatialGrid task and the quantities derived from them (vocabulary, feature width).
 */

/** Number of claims per trace. Fixed by the template: claim k describes the k-th queried object. */
export const CLAIMS = 2

export interface SpatialGridConfig {
  /** Side of the square grid (cells are GRID × GRID). */
  readonly grid: number
  /** Number of object types (each scene holds at most one object of a type). */
  readonly types: number
  /** Objects per scene, at distinct cells and of distinct types. */
  readonly objects: number
}

export const DEFAULT_SPATIALGRID_CONFIG: SpatialGridConfig = Object.freeze({ grid: 4, types: 4, objects: 3 })

/** A validated config with the derived sizes every other module needs. */
export interface SpatialGridSpec extends SpatialGridConfig {
  /** Claim tokens: one per (axis, value), so 2 × grid. */
  readonly claimTokens: number
  /** Vocabulary: claim tokens then the two answer tokens (less, greater). */
  readonly vocab: number
  /** Token positions per trace: CLAIMS claims then the answer. */
  readonly steps: number
  /** Width of one feature row (see features.ts for the layout). */
  readonly featureDim: number
}

function checkInt(name: string, value: unknown, min: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min) {
    throw new Error(`SpatialGridConfig.${name} must be an integer ≥ ${min} (got ${String(value)})`)
  }
  return value
}

/** Fill defaults, validate, and derive sizes. Throws with the offending field on bad input. */
export function resolveSpatialGridConfig(partial: Partial<SpatialGridConfig> = {}): SpatialGridSpec {
  const merged = { ...DEFAULT_SPATIALGRID_CONFIG, ...partial }
  const grid = checkInt('grid', merged.grid, 2)
  const types = checkInt('types', merged.types, 2)
  const objects = checkInt('objects', merged.objects, 2)
  if (objects > types) throw new Error(`SpatialGridConfig.objects (${objects}) must not exceed types (${types}): objects have distinct types`)
  if (objects > grid * grid) throw new Error(`SpatialGridConfig.objects (${objects}) must not exceed grid² (${grid * grid}): objects sit at distinct cells`)
  const claimTokens = 2 * grid
  const steps = CLAIMS + 1
  // scene (per type: present + x one-hot + y one-hot) | question (A, B, axis) | step | previous claims | subject
  const featureDim = types * (1 + 2 * grid) + 2 * types + 2 + steps + claimTokens + types
  return Object.freeze({ grid, types, objects, claimTokens, vocab: claimTokens + 2, steps, featureDim })
}
