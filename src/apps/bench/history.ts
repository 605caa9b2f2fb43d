/**
 * The whole-run history's cost (issue 15): memory and time for a simulated run of `steps`
 * training steps (every series the built-in training publishes), the size of the hello's
 * overview, and the time `serve` takes at start to rebuild the history from `restartSteps`
 * committed batch summaries in LMDB.
 *
 *   npm run bench -- --history-steps 1000000 --history-restart-steps 100000
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseConfig } from '../../core/config.js'
import { PRESETS } from '../train/presets.js'
import { telemetryConfig, type BatchFrame } from '../../../streams/telemetry/frames.js'
import { RunHistory, seriesOfFrame } from '../../../streams/telemetry/runHistory.js'
import { addSummaries, HELLO_OVERVIEW_POINTS } from '../../../streams/telemetry/telemetry.js'
import { EngineStore } from '../../state/engineStore.js'
import { collectFully, memoryInUse } from './collect.js'

export interface HistoryBenchReport {
  steps: number
  series: number
  maxPoints: number
  /** Memory retained by the history after `steps` steps (V8 heap and array buffers, bytes, after a full GC). */
  retainedBytes: number
  /** Mean time to add one step (µs). */
  addMicros: number
  /** The hello's overview: JSON bytes and time to build it (ms). */
  helloBytes: number
  helloMs: number
  /** Rebuilding from committed summaries in LMDB, as serve does at start. */
  restartSteps: number
  restartMs: number
}

/** A training frame of step `step` with values that wander (and a spike now and then). */
function frameAt(step: number, config: ReturnType<typeof parseConfig>): BatchFrame {
  const wave = Math.sin(step / 977) + (step % 4999 === 0 ? 5 : 0)
  const constraints: BatchFrame['constraints'] = {}
  for (const c of config.constraints)
    constraints[c.channel] = {
      sense: c.sense,
      threshold: c.threshold,
      mean: 0.9 + 0.05 * wave,
      violation: 0.01 * wave,
      sampleViolationRate: 0.1 + 0.05 * wave,
      sampleThreshold: c.sampleThreshold,
      count: 64,
      lambda: 1 + wave,
      lambdaBefore: 1 + wave,
    }
  return {
    type: 'batch',
    step,
    ts: 1_700_000_000_000 + step * 50,
    rollouts: 64,
    groups: 8,
    partialGroups: 0,
    objectives: Object.fromEntries(config.objectives.map((o) => [o.channel, 0.5 + 0.1 * wave])),
    constraints,
    fracZeroStd: Object.fromEntries(config.objectives.map((o) => [o.channel, 0.2])),
    advantage: { mean: 0, std: 1 },
    counts: {} as BatchFrame['counts'],
    throughput: { rolloutsPerSec: 1000 + wave, ingestPerSec: 1000, batchesPerSec: 20 },
    latencyMs: 40 + wave,
    policyVersion: step,
    learner: { loss: wave, clipFraction: 0.1, meanRatio: 1, gradNorm: 2 + wave },
    metrics: { accuracy: 0.8 + 0.1 * wave, inconsistencyRate: 0.01, grounding: 0.9 },
  }
}

export async function benchHistory(options: { steps: number; restartSteps: number; log: (line: string) => void }): Promise<HistoryBenchReport> {
  const config = parseConfig(PRESETS.fgrpo)
  // the buckets are Float64Arrays: their storage is outside the V8 heap (arrayBuffers, counted too)
  const used = memoryInUse
  await collectFully()
  const before = used()
  let history: RunHistory | undefined = new RunHistory()
  const started = performance.now()
  for (let step = 1; step <= options.steps; step++) {
    const frame = frameAt(step, config)
    history.add(step, frame.ts, seriesOfFrame(frame))
  }
  const addMicros = ((performance.now() - started) * 1000) / options.steps
  await collectFully()
  const retainedBytes = used() - before
  const helloStarted = performance.now()
  const hello = JSON.stringify({ config: telemetryConfig(config), overview: history.query({ points: HELLO_OVERVIEW_POINTS }) })
  const helloMs = performance.now() - helloStarted
  const series = Object.keys(history.overview().series).length
  history = undefined

  // serve's start: the summaries of `restartSteps` committed steps, read from LMDB into a history
  const dir = mkdtempSync(join(tmpdir(), 'dualstream-history-bench-'))
  let restartMs = 0
  try {
    const store = EngineStore.open(dir)
    store.steps.transactionSync(() => {
      for (let step = 1; step <= options.restartSteps; step++) {
        const f = frameAt(step, config)
        const lambda = Object.fromEntries(Object.entries(f.constraints).map(([c, v]) => [c, { before: v.lambdaBefore, after: v.lambda }]))
        const constraints = Object.fromEntries(
          Object.entries(f.constraints).map(([c, v]) => [
            c,
            { mean: v.mean, violation: v.violation, sampleViolationRate: v.sampleViolationRate, count: v.count },
          ]),
        )
        const summary = {
          step,
          groups: 8,
          rollouts: 64,
          partialGroups: 0,
          lambda,
          constraints,
          objectives: f.objectives,
          fracZeroStd: f.fracZeroStd,
          advantageMean: 0,
          advantageStd: 1,
        }
        void store.steps.put(step, { ...summary, ts: f.ts })
      }
    })
    const restartStarted = performance.now()
    addSummaries(new RunHistory(), store.summaries(), config)
    restartMs = performance.now() - restartStarted
    await store.close()
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }

  const report: HistoryBenchReport = {
    steps: options.steps,
    series,
    maxPoints: new RunHistory().maxPoints,
    retainedBytes,
    addMicros,
    helloBytes: Buffer.byteLength(hello),
    helloMs,
    restartSteps: options.restartSteps,
    restartMs,
  }
  const mib = (bytes: number) => `${(bytes / 1024 ** 2).toFixed(2)} MiB`
  options.log(
    `history: ${report.steps.toLocaleString('en-US')} steps × ${series} series → ${mib(retainedBytes)} retained (≤ ${report.maxPoints} points a series), ` +
      `${addMicros.toFixed(2)} µs a step; hello overview ${mib(report.helloBytes)} JSON in ${helloMs.toFixed(0)} ms; ` +
      `serve start rebuilds ${report.restartSteps.toLocaleString('en-US')} steps in ${restartMs.toFixed(0)} ms`,
  )
  return report
}

/** The history bench when `historySteps` > 0 (restart rebuild of `historyRestartSteps`, default 100,000), else nothing. */
export async function benchHistoryIfAsked(options: {
  historySteps?: number
  historyRestartSteps?: number
  log: (line: string) => void
}): Promise<HistoryBenchReport | undefined> {
  const steps = options.historySteps ?? 0
  if (steps <= 0) return undefined
  return benchHistory({ steps, restartSteps: options.historyRestartSteps ?? 100_000, log: options.log })
}
