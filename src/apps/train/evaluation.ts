/**
 * `npm run eval`: GRPO and FGRPO trained on the same seeds with identical settings, two at a
 * time (one per core), evaluated on held-out scenes; the paper-style table and JSON.
 */
import { fork } from 'node:child_process'
import { availableParallelism } from 'node:os'
import { dirname, extname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { Method, TrainSettings } from './presets.js'
import type { EvalMetrics } from './trainer.js'
import { runEvalJob, type EvalJob, type EvalRunResult } from './evalWorker.js'

export interface EvaluationOptions {
  seeds: number[]
  steps: number
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
  grpo: MethodSummary
  fgrpo: MethodSummary
  seeds: number[]
  steps: number
  runs: EvalRunResult[]
  /** The acceptance checks, each with the figures it compares. */
  checks: { name: string; pass: boolean; detail: string }[]
  seconds: number
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

/** Trains every (method, seed), `parallel` at a time, and summarises. */
export async function runEvaluation(options: EvaluationOptions): Promise<EvaluationReport> {
  const started = performance.now()
  const jobs: EvalJob[] = []
  for (const seed of options.seeds)
    for (const method of ['grpo', 'fgrpo'] as Method[]) jobs.push({ method, seed, steps: options.steps, settings: options.settings })
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
  const grpo = average(results.filter((r) => r.method === 'grpo'))
  const fgrpo = average(results.filter((r) => r.method === 'fgrpo'))
  return {
    grpo,
    fgrpo,
    seeds: options.seeds,
    steps: options.steps,
    runs: results,
    checks: acceptanceChecks(grpo, fgrpo),
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
  for (const check of report.checks) out.push(`${check.pass ? 'PASS' : 'FAIL'}  ${check.name} (${check.detail})`)
  out.push(`held-out scenes per run: ${report.runs[0]?.settings?.evalScenes ?? 2000}; ${report.steps} RL steps per run; ${report.seconds.toFixed(0)} s in all`)
  return out.join('\n')
}
