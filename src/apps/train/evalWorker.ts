/**
 * One training of `dualstream eval`, in its own process (one per core): receives its job
 * over IPC, trains from scratch with the preset of its method (or the job's own config, for
 * the ablation), evaluates on held-out scenes and sends the result back.
 */
import { parseConfig, type ConfigInput } from '../../core/config.js'
import type { Level } from '../../models/spatialgrid/config.js'
import { FGRPO_CONFIG, LEVEL_PRESETS, PRESETS, type Method, type TrainSettings } from './presets.js'
import { SpatialGridTrainer, type EvalMetrics, type StepTimings } from './trainer.js'

export interface EvalJob {
  /** A preset's name, or the label of an ablation row (then `config` is required). */
  method: Method | string
  seed: number
  steps: number
  /** Task level (default `easy`); its preset's settings apply under `settings`. */
  level?: Level
  settings?: Partial<TrainSettings>
  /** The engine config when `method` names no preset. */
  config?: ConfigInput
  /** Record the curves (batch means over windows of this many RL steps) in `history`. */
  historyEvery?: number
}

/** Batch means over consecutive windows of RL steps (`historyEvery`), and λ at each window's end. */
export interface RunHistory {
  step: number[]
  accuracy: number[]
  inconsistencyRate: number[]
  grounding: number[]
  lambda: Record<string, number[]>
}

export interface EvalRunResult extends EvalJob {
  warmStart: EvalMetrics
  final: EvalMetrics
  lambda: Record<string, number>
  seconds: number
  /** First RL step whose batch met both of FGRPO's constraints (consistency ≥ 0.98, grounding ≥ 0.95), null when none did. */
  firstMet: number | null
  /** Where the RL steps' time went. */
  timings: StepTimings
  history?: RunHistory
}

const thresholdOf = (channel: string): number => FGRPO_CONFIG.constraints!.find((c) => c.channel === channel)!.threshold

/** The thresholds of the main FGRPO preset, against which every row's "steps until both constraints are met" is counted. */
export const MET_THRESHOLDS = { consistency: thresholdOf('consistency'), grounding: thresholdOf('grounding') }

/** Runs one job in this process. */
export async function runEvalJob(job: EvalJob): Promise<EvalRunResult> {
  const started = performance.now()
  const input = job.config ?? PRESETS[job.method as Method]
  if (input === undefined) throw new Error(`eval job '${job.method}': not a preset (${Object.keys(PRESETS).join(', ')}) and no config given`)
  const level = LEVEL_PRESETS[job.level ?? 'easy']
  const trainer = await SpatialGridTrainer.create({
    config: parseConfig(input),
    seed: job.seed,
    task: level.task,
    settings: { ...level.settings, ...job.settings },
    intraOpNumThreads: 1,
  })
  try {
    await trainer.warmStart()
    const warmStart = await trainer.evaluate()
    let firstMet: number | null = null
    const every = job.historyEvery
    const history: RunHistory | undefined = every === undefined ? undefined : { step: [], accuracy: [], inconsistencyRate: [], grounding: [], lambda: {} }
    const sums = { n: 0, accuracy: 0, inconsistencyRate: 0, grounding: 0 }
    await trainer.train(job.steps, ({ step, metrics, batch }) => {
      if (firstMet === null && 1 - metrics.inconsistencyRate >= MET_THRESHOLDS.consistency && metrics.grounding >= MET_THRESHOLDS.grounding) firstMet = step
      if (history === undefined) return
      sums.n++
      sums.accuracy += metrics.accuracy
      sums.inconsistencyRate += metrics.inconsistencyRate
      sums.grounding += metrics.grounding
      if (step % every! !== 0 && step !== job.steps) return
      history.step.push(step)
      history.accuracy.push(sums.accuracy / sums.n)
      history.inconsistencyRate.push(sums.inconsistencyRate / sums.n)
      history.grounding.push(sums.grounding / sums.n)
      for (const [channel, l] of Object.entries(batch.lambda)) (history.lambda[channel] ??= []).push(l.after)
      sums.n = sums.accuracy = sums.inconsistencyRate = sums.grounding = 0
    })
    const final = await trainer.evaluate()
    return {
      ...job,
      level: trainer.spec.level,
      warmStart,
      final,
      lambda: trainer.lambda,
      seconds: (performance.now() - started) / 1000,
      firstMet,
      timings: { ...trainer.timings },
      ...(history === undefined ? {} : { history }),
    }
  } finally {
    await trainer.close()
  }
}

/* c8 ignore start */
if (process.send !== undefined && process.argv.includes('--eval-worker')) {
  process.once('message', (job: EvalJob) => {
    runEvalJob(job).then(
      (result) => process.send!({ ok: true, result }, () => process.exit(0)),
      (error: unknown) => process.send!({ ok: false, error: error instanceof Error ? (error.stack ?? error.message) : String(error) }, () => process.exit(1)),
    )
  })
}
/* c8 ignore stop */
