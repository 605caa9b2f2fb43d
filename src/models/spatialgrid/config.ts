/**
 * Sizes of the SpatialGrid task and the quantities derived from them (vocabulary, feature width),
 * for its two levels:
 *
 * - `easy` (the default): "is A's x (or y) less or greater than B's?" — 2 claims, A's and B's
 *   coordinate on the asked axis. The answer is a single comparison the network can read off the scene.
 * - `hard`: "is A.x + A.y less or greater than B.x + B.y?" on a larger grid with more objects —
 *   4 claims (A.x, A.y, B.x, B.y), each an easy lookup; the answer is a linear function of the
 *   claims but a composition (select, add, compare) of the scene.
 */

/** Number of claims per trace of the easy level. Fixed by its template: claim k describes the k-th queried object. */
export const CLAIMS = 2

/** The levels of the task. */
export const LEVELS = ['easy', 'hard'] as const
export type Level = (typeof LEVELS)[number]

export interface SpatialGridConfig {
  /** Which question and claim template (default `easy`). */
  readonly level: Level
  /** Side of the square grid (cells are GRID × GRID). */
  readonly grid: number
  /** Number of object types (each scene holds at most one object of a type). */
  readonly types: number
  /** Objects per scene, at distinct cells and of distinct types. */
  readonly objects: number
}

export const DEFAULT_SPATIALGRID_CONFIG: SpatialGridConfig = Object.freeze({ level: 'easy', grid: 4, types: 4, objects: 3 })

/** The sizes each level starts from (a partial config overrides them). */
export const LEVEL_DEFAULTS: Readonly<Record<Level, SpatialGridConfig>> = Object.freeze({
  easy: DEFAULT_SPATIALGRID_CONFIG,
  hard: Object.freeze({ level: 'hard', grid: 6, types: 8, objects: 6 }),
})

/** Claims per trace of each level. */
const LEVEL_CLAIMS: Readonly<Record<Level, number>> = { easy: CLAIMS, hard: 4 }

/** A validated config with the derived sizes every other module needs. */
export interface SpatialGridSpec extends SpatialGridConfig {
  /** Claims per trace (2 at the easy level, 4 at the hard one). */
  readonly claims: number
  /** Claim tokens: one per (axis, value), so 2 × grid. */
  readonly claimTokens: number
  /** Vocabulary: claim tokens then the two answer tokens (less, greater). */
  readonly vocab: number
  /** Token positions per trace: the claims then the answer. */
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

/** Fill defaults (those of the level), validate, and derive sizes. Throws with the offending field on bad input. */
export function resolveSpatialGridConfig(partial: Partial<SpatialGridConfig> = {}): SpatialGridSpec {
  const level = partial.level ?? 'easy'
  if (!(LEVELS as readonly string[]).includes(level)) throw new Error(`SpatialGridConfig.level must be one of ${LEVELS.join(', ')} (got ${String(level)})`)
  const merged = { ...LEVEL_DEFAULTS[level], ...partial }
  const grid = checkInt('grid', merged.grid, 2)
  const types = checkInt('types', merged.types, 2)
  const objects = checkInt('objects', merged.objects, 2)
  if (objects > types) throw new Error(`SpatialGridConfig.objects (${objects}) must not exceed types (${types}): objects have distinct types`)
  if (objects > grid * grid) throw new Error(`SpatialGridConfig.objects (${objects}) must not exceed grid² (${grid * grid}): objects sit at distinct cells`)
  const claims = LEVEL_CLAIMS[level]
  const claimTokens = 2 * grid
  const steps = claims + 1
  const featureDim =
    level === 'easy'
      ? // scene (per type: present + x one-hot + y one-hot) | question (A, B, axis) | step | previous claims (bag) | subject
        types * (1 + 2 * grid) + 2 * types + 2 + steps + claimTokens + types
      : // scene | question (A, B) | step | previous claims (one block per position) | subject
        types * (1 + 2 * grid) + 2 * types + steps + claims * claimTokens + types
  return Object.freeze({ level, grid, types, objects, claims, claimTokens, vocab: claimTokens + 2, steps, featureDim })
}
