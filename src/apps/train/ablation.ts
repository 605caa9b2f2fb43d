/**
 * `npm run eval -- --ablation`: FGRPO's design choices against their alternatives, every row
 * trained from the same warm start on the same seeds with the same budget, per task level:
 * GRPO; the constraints folded into the reward with fixed weights; normalize-then-sum with a
 * fixed λ (no dual update) at two values; FGRPO with the sgd, log and pid dual rules; FGRPO at
 * two other thresholds; FGRPO with scaleByLambda.
 *
 * A fixed λ needs no dual controller: normalize-then-sum with constant λₖ on '>=' constraints is
 * A = Â_accuracy + Σ λₖ Âₖ, exactly the objectives {accuracy × 1, consistency × λ, grounding × λ}
 * (and sum-then-normalize with fixed weights is the same objectives under that aggregation).
 */
import type { ConfigInput } from '../../core/config.js'
import type { Level } from '../../models/spatialgrid/config.js'
import { FGRPO_CONFIG, GRPO_CONFIG, type TrainSettings } from './presets.js'
import type { EvalJob, EvalRunResult } from './evalWorker.js'
import { formatTimings, runJobs, sumTimings, type JobOptions } from './evaluation.js'
import type { EvalMetrics, StepTimings } from './trainer.js'

/** One row of the ablation: a label, what it changes, its engine config. */
export interface AblationRow {
  /** Short id (JSON, the picture's legend). */
  id: string
  label: string
  config: ConfigInput
  /** λ held fixed by the row (shown in the λ column), when it has no dual update. */
  fixedLambda?: number
  /** Drawn in the picture. */
  main?: boolean
}

type ConstraintInput = NonNullable<ConfigInput['constraints']>[number]

const fgrpoConstraints = FGRPO_CONFIG.constraints as ConstraintInput[]

/** FGRPO's preset with each constraint changed by `change`. */
function fgrpoWith(change: (c: ConstraintInput) => Partial<ConstraintInput>, extra: Partial<ConfigInput> = {}): ConfigInput {
  return { ...FGRPO_CONFIG, ...extra, constraints: fgrpoConstraints.map((c) => ({ ...c, ...change(c) }) as ConstraintInput) }
}

/** The constraints as fixed-weight objectives (see the file comment). */
function fixedWeights(weight: number, aggregation: ConfigInput['aggregation']): ConfigInput {
  return {
    ...GRPO_CONFIG,
    aggregation,
    objectives: [
      { channel: 'accuracy', weight: 1 },
      { channel: 'consistency', weight },
      { channel: 'grounding', weight },
    ],
  }
}

const thresholds = (consistency: number, grounding: number) => (c: ConstraintInput) => ({
  threshold: c.channel === 'consistency' ? consistency : grounding,
})

/** The rows, in table order. Dual rules other than sgd use their sources' defaults, with FGRPO's λmax 1. */
export const ABLATION_ROWS: readonly AblationRow[] = [
  { id: 'grpo', label: 'GRPO (accuracy only)', config: GRPO_CONFIG, main: true },
  {
    id: 'sum-then-normalize',
    label: 'reward + consistency + grounding (sum-then-normalize, weights 1)',
    config: fixedWeights(1, 'sum-then-normalize'),
    fixedLambda: 1,
    main: true,
  },
  { id: 'fixed-0.1', label: 'normalize-then-sum, fixed λ 0.1', config: fixedWeights(0.1, 'normalize-then-sum'), fixedLambda: 0.1 },
  { id: 'fixed-1', label: 'normalize-then-sum, fixed λ 1', config: fixedWeights(1, 'normalize-then-sum'), fixedLambda: 1, main: true },
  { id: 'fgrpo-sgd', label: 'FGRPO, sgd (η 0.05) — the preset', config: FGRPO_CONFIG, main: true },
  { id: 'fgrpo-log', label: 'FGRPO, log (safe-rlhf: η 0.1, λ₀ 1)', config: fgrpoWith(() => ({ dual: { rule: 'log', lr: 0.1, init: 1, max: 1 } })), main: true },
  { id: 'fgrpo-pid', label: 'FGRPO, pid (OmniSafe defaults)', config: fgrpoWith(() => ({ dual: { rule: 'pid', max: 1 } })), main: true },
  { id: 'fgrpo-loose', label: 'FGRPO, τ consistency 0.90, grounding 0.85', config: fgrpoWith(thresholds(0.9, 0.85)) },
  { id: 'fgrpo-strict', label: 'FGRPO, τ consistency 0.995, grounding 0.99', config: fgrpoWith(thresholds(0.995, 0.99)) },
  { id: 'fgrpo-scaled', label: 'FGRPO, scaleByLambda (A / (1 + Σλ))', config: { ...FGRPO_CONFIG, scaleByLambda: true } },
]

export interface AblationOptions extends JobOptions {
  levels: Level[]
  seeds: number[]
  /** RL steps per run, by level (the CLI's default is the level's preset, `LEVEL_PRESETS[level].rlSteps`). */
  steps: Partial<Record<Level, number>>
  settings?: Partial<TrainSettings>
  /** Width of the windows of the curves, in RL steps (default: steps / 100). */
  historyEvery?: number
  /** Rows to run (default all), by id. */
  rows?: readonly string[]
}

/** One row of the table: means over the seeds. */
export interface AblationSummary extends EvalMetrics {
  id: string
  label: string
  /** Mean over seeds of the first RL step whose batch met consistency ≥ 0.98 and grounding ≥ 0.95; null when a seed never did. */
  stepsToMeet: number | null
  /** Per seed. */
  firstMet: (number | null)[]
  /** λ at the end (mean over seeds; the fixed λ of rows without a dual update). */
  lambda: Record<string, number>
  fixedLambda?: number
  /** Wall time of one run, mean over seeds (s). */
  seconds: number
  accuracyBySeed: number[]
}

export interface AblationLevelReport {
  level: Level
  steps: number
  rows: AblationSummary[]
  runs: EvalRunResult[]
  timings: StepTimings
}

export interface AblationReport {
  seeds: number[]
  levels: AblationLevelReport[]
  seconds: number
}

const meanOf = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length

/** One row of the table from its runs (one per seed). */
export function summariseRow(row: AblationRow, runs: EvalRunResult[]): AblationSummary {
  const lambda: Record<string, number> = {}
  for (const run of runs) for (const [k, v] of Object.entries(run.lambda)) lambda[k] = (lambda[k] ?? 0) + v / runs.length
  const firstMet = runs.map((r) => r.firstMet)
  return {
    id: row.id,
    label: row.label,
    accuracy: meanOf(runs.map((r) => r.final.accuracy)),
    inconsistencyRate: meanOf(runs.map((r) => r.final.inconsistencyRate)),
    grounding: meanOf(runs.map((r) => r.final.grounding)),
    stepsToMeet: firstMet.some((s) => s === null) ? null : meanOf(firstMet as number[]),
    firstMet,
    lambda,
    ...(row.fixedLambda === undefined ? {} : { fixedLambda: row.fixedLambda }),
    seconds: meanOf(runs.map((r) => r.seconds)),
    accuracyBySeed: runs.map((r) => r.final.accuracy),
  }
}

/** Trains every (level, row, seed) and summarises per level. */
export async function runAblation(options: AblationOptions): Promise<AblationReport> {
  const started = performance.now()
  const unknown = (options.rows ?? []).filter((id) => !ABLATION_ROWS.some((r) => r.id === id))
  if (unknown.length > 0) throw new Error(`ablation: no row named ${unknown.join(', ')} (the rows: ${ABLATION_ROWS.map((r) => r.id).join(', ')})`)
  const rows = options.rows === undefined ? ABLATION_ROWS : ABLATION_ROWS.filter((r) => options.rows!.includes(r.id))
  const jobs: EvalJob[] = []
  const stepsOf = (level: Level) => {
    const steps = options.steps[level]
    if (steps === undefined) throw new Error(`ablation: no RL steps given for level ${level}`)
    return steps
  }
  for (const level of options.levels) {
    const steps = stepsOf(level)
    const historyEvery = options.historyEvery ?? Math.max(1, Math.round(steps / 100))
    for (const row of rows)
      for (const seed of options.seeds) jobs.push({ method: row.id, config: row.config, seed, steps, level, settings: options.settings, historyEvery })
  }
  const results = await runJobs(jobs, options)
  return {
    seeds: options.seeds,
    levels: options.levels.map((level) => {
      const runs = results.filter((r) => r.level === level)
      return {
        level,
        steps: stepsOf(level),
        rows: rows.map((row) =>
          summariseRow(
            row,
            runs.filter((r) => r.method === row.id),
          ),
        ),
        runs,
        timings: sumTimings(runs),
      }
    }),
    seconds: (performance.now() - started) / 1000,
  }
}

const pct = (x: number) => `${(100 * x).toFixed(1)}%`

function lambdaCell(row: AblationSummary): string {
  if (row.fixedLambda !== undefined) return `fixed ${row.fixedLambda}`
  const entries = Object.entries(row.lambda)
  return entries.length === 0 ? '–' : entries.map(([k, v]) => `${k[0]} ${v.toFixed(3)}`).join(', ')
}

/** The table of one level. */
export function formatAblationLevel(report: AblationLevelReport, seeds: number[]): string {
  const header = ['row', 'accuracy', 'inconsistency', 'grounding', 'steps to meet', 'λ at the end', 'wall time']
  const body = report.rows.map((r) => [
    r.label,
    pct(r.accuracy),
    pct(r.inconsistencyRate),
    pct(r.grounding),
    r.stepsToMeet === null ? 'never' : r.stepsToMeet.toFixed(0),
    lambdaCell(r),
    `${r.seconds.toFixed(0)} s`,
  ])
  const rows = [header, ...body]
  const widths = header.map((_, i) => Math.max(...rows.map((r) => r[i].length)))
  const line = (r: string[]) => r.map((c, i) => (i === 0 || i === 5 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ')
  return [
    `level ${report.level}: ${report.steps} RL steps per run, seeds ${seeds.join(', ')} (means over seeds); "steps to meet" = first RL step whose batch had consistency ≥ 0.98 and grounding ≥ 0.95`,
    line(header),
    widths.map((w) => '-'.repeat(w)).join('  '),
    ...body.map(line),
    formatTimings(report.timings),
  ].join('\n')
}

/** Every level's table. */
export function formatAblation(report: AblationReport): string {
  return [...report.levels.map((l) => formatAblationLevel(l, report.seeds)), `${report.seconds.toFixed(0)} s in all`].join('\n\n')
}

/** The README's markdown table of one level. */
export function ablationMarkdown(report: AblationLevelReport): string {
  const lines = [
    '| row | accuracy | inconsistency | grounding | steps to meet | λ at the end | wall time |',
    '|---|---|---|---|---|---|---|',
    ...report.rows.map(
      (r) =>
        `| ${r.label} | ${pct(r.accuracy)} | ${pct(r.inconsistencyRate)} | ${pct(r.grounding)} | ${r.stepsToMeet === null ? 'never' : r.stepsToMeet.toFixed(0)} | ${lambdaCell(r)} | ${r.seconds.toFixed(0)} s |`,
    ),
  ]
  return lines.join('\n')
}
