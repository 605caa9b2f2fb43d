/**
 * The engine's configuration: one JSON document, validated with zod. A bad config is
 * refused with every problem listed by path (`constraints[1].dual.lr: must be > 0`).
 */
import { readFileSync } from 'node:fs'
import { z } from 'zod'

const positive = (what = 'must be > 0') => z.number({ error: 'must be a number' }).gt(0, { error: what })
const nonNegative = () => z.number({ error: 'must be a number' }).gte(0, { error: 'must be >= 0' })
const positiveInt = () => z.number({ error: 'must be a number' }).int({ error: 'must be an integer' }).gte(1, { error: 'must be >= 1' })
const unitInterval = () => z.number({ error: 'must be a number' }).gte(0, { error: 'must be in [0, 1)' }).lt(1, { error: 'must be in [0, 1)' })
const channelName = () =>
  z
    .string({ error: 'must be a string' })
    .regex(/^[A-Za-z_][A-Za-z0-9_.-]*$/, { error: 'must be a channel name (letters, digits, _ . -)' })
    // assigning this key sets an object's prototype: λ and constraint records would lose the channel
    .refine((name) => name !== '__proto__', { error: '"__proto__" cannot name a channel (it is the prototype accessor of JavaScript objects)' })

const normalizeFields = {
  center: z.enum(['group', 'batch']),
  scale: z.enum(['group', 'batch', 'none']),
  std: z.enum(['sample', 'population']),
  eps: nonNegative(),
  minStd: nonNegative(),
}

/** Per-channel normalisation (DESIGN §3); defaults are GRPO's. */
export const NormalizeSchema = z.strictObject({
  center: normalizeFields.center.default('group'),
  scale: normalizeFields.scale.default('group'),
  std: normalizeFields.std.default('sample'),
  eps: normalizeFields.eps.default(1e-6),
  minStd: normalizeFields.minStd.default(1e-6),
})
/** A per-channel override: only the fields it names replace the default. */
const NormalizeOverrideSchema = z.strictObject(normalizeFields).partial()

const SgdSchema = z.strictObject({
  rule: z.literal('sgd'),
  lr: positive(),
  init: nonNegative().default(0),
  max: positive().optional(),
})
const LogSchema = z.strictObject({
  rule: z.literal('log'),
  lr: positive(),
  init: positive('must be > 0 (λ is stored as log λ)').default(1),
  max: positive().optional(),
})
// Defaults are OmniSafe's CPPOPID defaults.
const PidSchema = z.strictObject({
  rule: z.literal('pid'),
  kp: nonNegative().default(0.1),
  ki: nonNegative().default(0.01),
  kd: nonNegative().default(0.01),
  alphaP: unitInterval().default(0.95),
  alphaD: unitInterval().default(0.95),
  delay: positiveInt().default(10),
  init: nonNegative().default(0.001),
  max: positive().optional(),
})
export const DualSchema = z.discriminatedUnion('rule', [SgdSchema, LogSchema, PidSchema])

const ObjectiveSchema = z.strictObject({
  channel: channelName(),
  weight: z.number({ error: 'must be a number' }).default(1),
  normalize: NormalizeOverrideSchema.optional(),
})

const ConstraintSchema = z.strictObject({
  channel: channelName(),
  sense: z.enum(['>=', '<=']),
  threshold: z.number({ error: 'must be a number' }),
  sampleThreshold: z.number({ error: 'must be a number' }).optional(),
  window: positiveInt().default(1),
  normalize: NormalizeOverrideSchema.optional(),
  dual: DualSchema,
})

export const ConfigSchema = z
  .strictObject({
    groupSize: positiveInt(),
    minGroupSize: positiveInt().optional(),
    groupTimeoutMs: positive().optional(),
    batchGroups: positiveInt(),
    batchMaxWaitMs: positive().optional(),
    maxStaleness: z.number({ error: 'must be a number' }).int({ error: 'must be an integer' }).gte(0, { error: 'must be >= 0' }).optional(),
    maxAsync: z.number({ error: 'must be a number' }).int({ error: 'must be an integer' }).gte(0, { error: 'must be >= 0' }).optional(),
    normalize: NormalizeSchema.default(NormalizeSchema.parse({})),
    aggregation: z.enum(['normalize-then-sum', 'sum-then-normalize']).default('normalize-then-sum'),
    scaleByLambda: z.boolean({ error: 'must be true or false' }).default(false),
    whiten: z.enum(['none', 'batch']).default('none'),
    objectives: z.array(ObjectiveSchema).min(1, { error: 'must name at least one objective channel' }),
    constraints: z.array(ConstraintSchema).default([]),
  })
  .superRefine((config, ctx) => {
    if (config.minGroupSize !== undefined && config.minGroupSize > config.groupSize) {
      ctx.addIssue({ code: 'custom', path: ['minGroupSize'], message: `must be <= groupSize (${config.groupSize})` })
    }
    if (config.maxAsync !== undefined && config.maxStaleness !== undefined && config.maxAsync > config.maxStaleness) {
      // admitted rollouts would then be dropped as stale after being logged
      ctx.addIssue({ code: 'custom', path: ['maxAsync'], message: `must be <= maxStaleness (${config.maxStaleness})` })
    }
    const seen = new Map<string, string>()
    const claim = (channel: string, path: (string | number)[]) => {
      const where = path.join('.')
      const first = seen.get(channel)
      if (first !== undefined) {
        ctx.addIssue({ code: 'custom', path: [...path, 'channel'], message: `channel "${channel}" is already used by ${first}` })
      } else {
        seen.set(channel, where)
      }
    }
    config.objectives.forEach((o, i) => claim(o.channel, ['objectives', i]))
    config.constraints.forEach((c, i) => {
      claim(c.channel, ['constraints', i])
      if (c.dual.max !== undefined && c.dual.init > c.dual.max) {
        ctx.addIssue({ code: 'custom', path: ['constraints', i, 'dual', 'init'], message: `must be <= dual.max (${c.dual.max})` })
      }
    })
  })

export type ConfigInput = z.input<typeof ConfigSchema>
type ParsedConfig = z.output<typeof ConfigSchema>
export type Normalize = z.output<typeof NormalizeSchema>
export type DualRule = z.output<typeof DualSchema>
export type SgdRule = z.output<typeof SgdSchema>
export type LogRule = z.output<typeof LogSchema>
export type PidRule = z.output<typeof PidSchema>

/** An objective channel with its normalisation resolved. */
export interface ObjectiveSpec {
  channel: string
  weight: number
  normalize: Normalize
}

/** A constraint channel with defaults resolved (λmax = Infinity when not set). */
export interface ConstraintSpec {
  channel: string
  sense: '>=' | '<='
  threshold: number
  sampleThreshold: number
  window: number
  normalize: Normalize
  dual: DualRule & { max: number }
}

/** The validated configuration, every default filled in. */
export interface Config extends Omit<ParsedConfig, 'objectives' | 'constraints' | 'minGroupSize'> {
  minGroupSize: number
  objectives: ObjectiveSpec[]
  constraints: ConstraintSpec[]
}

/** Raised for a config that does not validate; `problems` lists every issue by path. */
export class ConfigError extends Error {
  constructor(
    readonly problems: string[],
    readonly source = 'config',
  ) {
    super(`invalid ${source}:\n  ${problems.join('\n  ')}`)
    this.name = 'ConfigError'
  }
}

/** Formats a zod path like `constraints[1].dual.lr`. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = ''
  for (const key of path) {
    out += typeof key === 'number' ? `[${key}]` : out === '' ? String(key) : `.${String(key)}`
  }
  return out === '' ? '(root)' : out
}

/**
 * Validates a config object and fills in defaults.
 *
 * @example
 * const config = parseConfig({ groupSize: 8, batchGroups: 16, objectives: [{ channel: 'accuracy' }] })
 */
export function parseConfig(input: unknown, source?: string): Config {
  const result = ConfigSchema.safeParse(input)
  if (!result.success) {
    throw new ConfigError(
      result.error.issues.map((issue) => `${formatPath(issue.path)}: ${issue.message}`),
      source,
    )
  }
  const parsed = result.data
  const resolve = (override: Partial<Normalize> | undefined): Normalize => ({ ...parsed.normalize, ...override })
  return {
    ...parsed,
    minGroupSize: parsed.minGroupSize ?? Math.min(2, parsed.groupSize),
    objectives: parsed.objectives.map((o) => ({ channel: o.channel, weight: o.weight, normalize: resolve(o.normalize) })),
    constraints: parsed.constraints.map((c) => ({
      channel: c.channel,
      sense: c.sense,
      threshold: c.threshold,
      sampleThreshold: c.sampleThreshold ?? c.threshold,
      window: c.window,
      normalize: resolve(c.normalize),
      dual: { ...c.dual, max: c.dual.max ?? Infinity },
    })),
  }
}

/** Reads and validates a JSON config file; errors name the file. */
export function loadConfig(path: string): Config {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (error) {
    throw new ConfigError([`cannot read: ${(error as Error).message}`], path)
  }
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (error) {
    throw new ConfigError([`not valid JSON: ${(error as Error).message}`], path)
  }
  return parseConfig(json, path)
}

/** Every channel the config reads, objectives first. */
export function configChannels(config: Pick<Config, 'objectives' | 'constraints'>): string[] {
  return [...config.objectives.map((o) => o.channel), ...config.constraints.map((c) => c.channel)]
}
