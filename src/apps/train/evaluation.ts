/**
 * `npm run eval`: GRPO and FGRPO trained on the same seeds with identical settings, two at a
 * time (one per core), evaluated on held-out scenes; the paper-style table and JSON.
 */
import { fork } from 'node:child_process'
import { availableParallelism } from 'node:os'
import { dirname, extname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { Level } from '../../models/spatialgrid/config.js'
import type { Method, TrainSettings } from './presets.js'
import type { EvalMetrics, StepTimings } from './trainer.js'
import { runEvalJob, type EvalJob, type EvalRunResult } from './evalWorker.js'

export interface EvaluationOptions {
  seeds: number[]
  steps: number
  /** SpatialGrid level (default `easy`). */
  level?: Level
  settings?: Partial<TrainSettings>
  /** Trainings at a time (default: one per core). */
  parallel?: number
  /** Run jobs in this process instead of child processes (tests). */
  inProcess?: boolean
  onResult?: (result: EvalRunResult, done: number, total: number) => void
}

export interface MethodSummary extends EvalMetrics {
  lambda: Record<string, number>
}

/** The JSON written by `--json`. */
export interface EvaluationReport {
  level: Level
  grpo: MethodSummary
  fgrpo: MethodSummary
  seeds: number[]
  steps: number
  runs: EvalRunResult[]
  /** The issue's acceptance checks, each with the figures it compares. */
  checks: { name: string; pass: boolean; detail: string }[]
  /** Where the RL steps' time went, summed over the runs (ms). */
  timings: StepTimings
  seconds: number
}

/** Options of {@link runJobs}. */
export interface JobOptions {
  parallel?: number
  inProcess?: boolean
  onResult?: (result: EvalRunResult, done: number, total: number) => void
}

/** Runs the jobs `parallel` at a time (default one per core), each in its own process unless `inProcess`; results in job order. */
export async function runJobs(jobs: EvalJob[], options: JobOptions): Promise<EvalRunResult[]> {
  const parallel = Math.max(1, options.parallel ?? availableParallelism())
  const results: EvalRunResult[] = new Array(jobs.length)
  let next = 0
  let done = 0
  const lane = async () => {
    while (next < jobs.length) {
      const index = next++
      results[index] = await (options.inProcess ? runEvalJob(jobs[index]) : runInChild(jobs[index]))
      options.onResult?.(results[index], ++done, jobs.length)
    }
  }
  await Promise.all(Array.from({ length: Math.min(parallel, jobs.length) }, lane))
  return results
}

/** The sum of the runs' step timings. */
export function sumTimings(runs: readonly EvalRunResult[]): StepTimings {
  const total: StepTimings = { steps: 0, forward: 0, sampling: 0, judges: 0, pipeline: 0, gradient: 0, adam: 0, other: 0, total: 0 }
  for (const run of runs) for (const key of Object.keys(total) as (keyof StepTimings)[]) total[key] += run.timings[key]
  return total
}

/** One line: the share of the RL steps' time of each part, largest first, and ms per step. */
export function formatTimings(t: StepTimings): string {
  const parts: [string, number][] = [
    ['ONNX gradient', t.gradient],
    ['ONNX forward (sampling)', t.forward],
    ['features, masks, drawing tokens', t.sampling],
    ['operator pipeline', t.pipeline],
    ['judges', t.judges],
    ['Adam', t.adam],
    ['other', t.other],
  ]
  const perStep = t.steps === 0 ? 0 : t.total / t.steps
  return `time per RL step ${perStep.toFixed(2)} ms: ${parts
    .sort((a, b) => b[1] - a[1])
    .map(([name, ms]) => `${name} ${t.total === 0 ? '0' : ((100 * ms) / t.total).toFixed(0)}%`)
    .join(', ')}`
}

// the worker runs as TypeScript under the test loader, as JavaScript from dist/: same extension as this file
const here = fileURLToPath(import.meta.url)
const workerScript = join(dirname(here), `evalWorker${extname(here)}`)

/** Runs one job in a child process with the same Node options (TS loader under tests). */
export function runInChild(job: EvalJob, script = workerScript): Promise<EvalRunResult> {
  return new Promise((resolve, reject) => {
    const child = fork(script, ['--eval-worker'], { execArgv: process.execArgv, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
    let settled = false
    child.once('message', (message: { ok: boolean; result?: EvalRunResult; error?: string }) => {
      settled = true
      if (message.ok) resolve(message.result!)
      else reject(new Error(`${job.method} seed ${job.seed}: ${message.error}`))
    })
    child.once('exit', (code) => {
      if (!settled) reject(new Error(`${job.method} seed ${job.seed}: the worker exited with code ${code} before reporting`))
    })
    child.send(job)
  })
}

const sampleStd = (xs: number[]): number => {
  if (xs.length < 2) return 0
  const m = xs.reduce((a, b) => a + b, 0) / xs.length
  return Math.sqrt(xs.reduce((a, b) => a + (b - m) * (b - m), 0) / (xs.length - 1))
}

/** Accuracy's spread over seeds: per method, min–max and the sample standard deviation, in points. */
export function accuracySpread(runs: readonly EvalRunResult[]): string {
  const part = (method: string) => {
    const xs = runs.filter((r) => r.method === method).map((r) => 100 * r.final.accuracy)
    return `${method.toUpperCase()} ${Math.min(...xs).toFixed(1)}–${Math.max(...xs).toFixed(1)} (sd ${sampleStd(xs).toFixed(1)})`
  }
  return `accuracy over seeds: ${part('grpo')}, ${part('fgrpo')}`
}

function average(runs: EvalRunResult[]): MethodSummary {
  const n = runs.length
  const lambda: Record<string, number> = {}
  for (const run of runs) for (const [k, v] of Object.entries(run.lambda)) lambda[k] = (lambda[k] ?? 0) + v / n
  return {
    accuracy: runs.reduce((s, r) => s + r.final.accuracy, 0) / n,
    inconsistencyRate: runs.reduce((s, r) => s + r.final.inconsistencyRate, 0) / n,
    grounding: runs.reduce((s, r) => s + r.final.grounding, 0) / n,
    lambda,
  }
}

const pct = (x: number) => `${(100 * x).toFixed(1)}%`

/** The acceptance checks of the built-in evaluation (issue #5). */
export function acceptanceChecks(grpo: EvalMetrics, fgrpo: EvalMetrics): EvaluationReport['checks'] {
  const gain = fgrpo.grounding - grpo.grounding
  return [
    { name: 'GRPO shows the failure mode: inconsistency ≥ 20%', pass: grpo.inconsistencyRate >= 0.2, detail: pct(grpo.inconsistencyRate) },
    { name: 'FGRPO inconsistency ≤ 2%', pass: fgrpo.inconsistencyRate <= 0.02, detail: pct(fgrpo.inconsistencyRate) },
    { name: 'FGRPO grounding ≥ GRPO + 13 points', pass: gain >= 0.13, detail: `${(100 * gain).toFixed(1)} points` },
    { name: 'FGRPO accuracy ≥ GRPO − 1 point', pass: fgrpo.accuracy >= grpo.accuracy - 0.01, detail: `${pct(fgrpo.accuracy)} vs ${pct(grpo.accuracy)}` },
  ]
}

/**
 * The checks of the hard level (issue #14): FGRPO's accuracy above GRPO's by ≥ 2 points on the
 * mean with every seed pointing the same way, and the faithfulness checks of the easy level.
 */
export function hardLevelChecks(grpo: EvalMetrics, fgrpo: EvalMetrics, runs: readonly EvalRunResult[]): EvaluationReport['checks'] {
  const gain = fgrpo.accuracy - grpo.accuracy
  const bySeed = accuracyGainBySeed(runs)
  return [
    ...acceptanceChecks(grpo, fgrpo).slice(0, 3),
    { name: 'FGRPO accuracy ≥ GRPO + 2 points (mean of seeds)', pass: gain >= 0.02, detail: `${(100 * gain).toFixed(1)} points` },
    {
      name: 'FGRPO accuracy above GRPO on every seed',
      pass: bySeed.length > 0 && bySeed.every((s) => s.gain > 0),
      detail: bySeed.map((s) => `seed ${s.seed} ${s.gain >= 0 ? '+' : ''}${(100 * s.gain).toFixed(1)}`).join(', '),
    },
  ]
}

/** FGRPO's accuracy minus GRPO's, per seed that has both. */
export function accuracyGainBySeed(runs: readonly EvalRunResult[]): { seed: number; gain: number }[] {
  const out: { seed: number; gain: number }[] = []
  for (const f of runs.filter((r) => r.method === 'fgrpo')) {
    const g = runs.find((r) => r.method === 'grpo' && r.seed === f.seed)
    if (g !== undefined) out.push({ seed: f.seed, gain: f.final.accuracy - g.final.accuracy })
  }
  return out
}

/** Trains every (method, seed), `parallel` at a time, and summarises. */
export async function runEvaluation(options: EvaluationOptions): Promise<EvaluationReport> {
  const started = performance.now()
  const level = options.level ?? 'easy'
  const jobs: EvalJob[] = []
  for (const seed of options.seeds)
    for (const method of ['grpo', 'fgrpo'] as Method[]) jobs.push({ method, seed, steps: options.steps, level, settings: options.settings })
  const results = await runJobs(jobs, options)
  const grpo = average(results.filter((r) => r.method === 'grpo'))
  const fgrpo = average(results.filter((r) => r.method === 'fgrpo'))
  return {
    level,
    grpo,
    fgrpo,
    seeds: options.seeds,
    steps: options.steps,
    runs: results,
    checks: level === 'hard' ? hardLevelChecks(grpo, fgrpo, results) : acceptanceChecks(grpo, fgrpo),
    timings: sumTimings(results),
    seconds: (performance.now() - started) / 1000,
  }
}

/** The paper-style table: per seed, then the mean over seeds, then the checks. */
export function formatEvaluation(report: EvaluationReport): string {
  const lambda = (l: Record<string, number>) =>
    Object.keys(l).length === 0
      ? '–'
      : Object.entries(l)
          .map(([k, v]) => `${k} ${v.toFixed(3)}`)
          .join(', ')
  const rows: string[][] = [['method', 'seed', 'accuracy', 'inconsistency', 'grounding', 'λ at the end']]
  for (const r of report.runs)
    rows.push([r.method.toUpperCase(), String(r.seed), pct(r.final.accuracy), pct(r.final.inconsistencyRate), pct(r.final.grounding), lambda(r.lambda)])
  for (const [name, m] of [
    ['GRPO', report.grpo],
    ['FGRPO', report.fgrpo],
  ] as const) {
    rows.push([name, 'mean', pct(m.accuracy), pct(m.inconsistencyRate), pct(m.grounding), lambda(m.lambda)])
  }
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)))
  const line = (r: string[]) => r.map((c, i) => (i < 2 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ')
  const out = [
    line(rows[0]),
    widths.map((w) => '-'.repeat(w)).join('  '),
    ...rows.slice(1, -2).map(line),
    widths.map((w) => '-'.repeat(w)).join('  '),
    ...rows.slice(-2).map(line),
    '',
  ]
  out.push(accuracySpread(report.runs))
  out.push('')
  for (const check of report.checks) out.push(`${check.pass ? 'PASS' : 'FAIL'}  ${check.name} (${check.detail})`)
  out.push(
    `level ${report.level}; held-out scenes per run: ${report.runs[0]?.settings?.evalScenes ?? 2000}; ${report.steps} RL steps per run; ${report.seconds.toFixed(0)} s in all`,
  )
  out.push(formatTimings(report.timings))
  return out.join('\n')
}
