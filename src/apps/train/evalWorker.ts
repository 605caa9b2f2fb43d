/**
 * One training of `dualstream eval`, in its own process (one per core): receives its job
 * over IPC, trains from scratch with the preset of its method, evaluates on held-out scenes
 * and sends the result back.
 */
import { parseConfig } from '../../core/config.js'
import { PRESETS, type Method, type TrainSettings } from './presets.js'
import { SpatialGridTrainer, type EvalMetrics } from './trainer.js'

export interface EvalJob {
  method: Method
  seed: number
  steps: number
  settings?: Partial<TrainSettings>
}

export interface EvalRunResult extends EvalJob {
  warmStart: EvalMetrics
  final: EvalMetrics
  lambda: Record<string, number>
  seconds: number
}

/** Runs one job in this process. */
export async function runEvalJob(job: EvalJob): Promise<EvalRunResult> {
  const started = performance.now()
  const trainer = await SpatialGridTrainer.create({ config: parseConfig(PRESETS[job.method]), seed: job.seed, settings: job.settings, intraOpNumThreads: 1 })
  try {
    await trainer.warmStart()
    const warmStart = await trainer.evaluate()
    await trainer.train(job.steps)
    const final = await trainer.evaluate()
    return { ...job, warmStart, final, lambda: trainer.lambda, seconds: (performance.now() - started) / 1000 }
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
