/**
 * The `train` (what `npm start` runs) and `eval` (what `npm run eval` runs) commands.
 */
import { mkdirSync, writeFileSync } from 'node:fs'
import { basename, join, resolve } from 'node:path'
import { Command, Option } from 'commander'
import { integerOption } from '../cliOptions.js'
import { loadConfig, parseConfig, type Config } from '../../core/config.js'
import { createProgress, fixed, lambdaText, percent } from '../progress.js'
import { DEFAULT_TRAIN_SETTINGS, LEVEL_PRESETS, PRESETS, defaultDataDir, rlStepsFor, type Method } from './presets.js'
import { SpatialGridTrainer, type EvalMetrics, type StepReport } from './trainer.js'
import { formatEvaluation, runEvaluation } from './evaluation.js'
import { formatAblation, runAblation } from './ablation.js'
import { ablationSvg } from './curves.js'
import { LEVELS, type Level } from '../../models/spatialgrid/config.js'
import { tokensFromEnv } from '../../../streams/auth.js'
import { TrainingTelemetry } from '../../../streams/telemetry/telemetry.js'
import type { HistorySnapshot } from '../../../streams/telemetry/runHistory.js'
import { TelemetryServer } from '../../../streams/telemetry/telemetryServer.js'

/** The dashboard's default port (`--port`). */
export const DEFAULT_DASHBOARD_PORT = 8787

export interface CommandIO {
  stdout: NodeJS.WritableStream
  stderr: NodeJS.WritableStream
}

export interface TrainCommandOptions {
  method: Method
  config?: string
  /** RL steps (default: the level's, 30,000 at both levels). */
  steps?: number
  /** SpatialGrid level (default `easy`). */
  level?: Level
  seed: number
  data?: string
  /** Stops after the current step (Ctrl-C). */
  signal?: AbortSignal
  /** Called with every step report (telemetry). */
  onStep?: (report: StepReport, trainer: SpatialGridTrainer) => void
  /** Dashboard port on 127.0.0.1 (default 8787; 0 = any free port; a port in use falls back to a free one). */
  port?: number
  /** false: no dashboard, `/telemetry` nor `/metrics` (`--no-dashboard`). */
  dashboard?: boolean
  /** Called once the dashboard listens, and awaited before the run starts (embedding, tests). */
  onDashboard?: (url: string, telemetry: TrainingTelemetry) => void | Promise<void>
}

/** Starts the training's dashboard server on loopback; says where (and when the port was taken). */
async function startDashboard(options: TrainCommandOptions, config: Config, trainer: SpatialGridTrainer, say: (line: string) => void) {
  const tokens = { viewer: tokensFromEnv(process.env).viewer }
  // the whole-run history resumes with the checkpoint, so the dashboard shows the run from step 1 after a restart
  const history = trainer.saved('telemetryHistory') as HistorySnapshot | undefined
  const telemetry = new TrainingTelemetry(config, { step: trainer.rlSteps, lambda: trainer.lambda }, { history })
  trainer.keepWithCheckpoint('telemetryHistory', () => telemetry.history.snapshot())
  const server = new TelemetryServer({ tokens, health: () => ({ step: trainer.rlSteps }) })
  telemetry.mount(server, tokens)
  const { port, fellBackFrom } = await server.listen(options.port ?? DEFAULT_DASHBOARD_PORT, '127.0.0.1', true)
  if (fellBackFrom !== undefined) say(`dashboard: port ${fellBackFrom} is in use, using ${port} instead`)
  const url = `http://127.0.0.1:${port}/`
  say(`dashboard: ${url} (live telemetry: WebSocket /telemetry, Prometheus /metrics${tokens.viewer === undefined ? '' : '; viewer token required'})`)
  await options.onDashboard?.(url, telemetry)
  return {
    telemetry,
    close: async () => {
      telemetry.close()
      await server.close()
    },
  }
}

/** The summary table printed at the end of a training run. */
export function formatTrainSummary(rows: { label: string; metrics: EvalMetrics }[], lambda: Record<string, number>): string {
  const lines = [
    `${'held-out'.padEnd(22)}  accuracy  inconsistency  grounding`,
    ...rows.map(
      (r) =>
        `${r.label.padEnd(22)}  ${percent(r.metrics.accuracy).padStart(8)}  ${percent(r.metrics.inconsistencyRate).padStart(13)}  ${percent(r.metrics.grounding).padStart(9)}`,
    ),
  ]
  const lambdas = Object.entries(lambda)
  lines.push(lambdas.length === 0 ? 'λ: none (no constraints)' : `λ at the end: ${lambdas.map(([k, v]) => `${k} ${fixed(v)}`).join(', ')}`)
  return lines.join('\n')
}

/** Runs warm start (once per data folder), `steps` RL steps, the held-out evaluation, and exports the policy. */
export async function trainCommand(options: TrainCommandOptions, io: CommandIO): Promise<void> {
  const config = options.config !== undefined ? loadConfig(options.config) : parseConfig(PRESETS[options.method])
  const label = options.config !== undefined ? basename(options.config, '.json') : options.method
  const level = LEVEL_PRESETS[options.level ?? 'easy']
  const steps = rlStepsFor(options.level, options.steps)
  const settings = { ...DEFAULT_TRAIN_SETTINGS, ...level.settings }
  const dataDir = resolve(options.data ?? defaultDataDir(label, options.level))
  const trainer = await SpatialGridTrainer.create({ config, seed: options.seed, dataDir, task: level.task, settings: level.settings })
  const say = (line: string) => io.stdout.write(`${line}\n`)
  let dashboard: Awaited<ReturnType<typeof startDashboard>> | undefined
  try {
    const constraints = config.constraints.map((c) => `${c.channel} ${c.sense} ${c.threshold}`).join(', ') || 'none'
    say(
      `dualstream train — ${label}${options.level === 'hard' ? ' (SpatialGrid level hard)' : ''}: objectives ${config.objectives.map((o) => `${o.channel}×${o.weight}`).join(', ')}; constraints ${constraints}`,
    )
    say(`state: ${dataDir} (${trainer.rlSteps > 0 ? `resuming after RL step ${trainer.rlSteps}` : trainer.warmStarted ? 'warm start done' : 'new run'})`)
    if (options.dashboard !== false) dashboard = await startDashboard(options, config, trainer, say)
    const telemetry = dashboard?.telemetry
    const rows: { label: string; metrics: EvalMetrics }[] = []
    if (!trainer.warmStarted) {
      const bar = createProgress({ format: 'warm start {bar} {value}/{total} steps', total: settings.sftSteps, stream: io.stderr })
      const started = performance.now()
      let warmSteps = 0
      await trainer.warmStart((done, total) => {
        warmSteps = done
        bar.update(done)
        telemetry?.status('warm start', done, total)
      })
      bar.stop()
      say(`warm start: ${warmSteps} supervised steps on gold traces in ${((performance.now() - started) / 1000).toFixed(1)} s`)
      rows.push({ label: 'after warm start', metrics: await trainer.evaluate() })
    } else {
      rows.push({ label: `at RL step ${trainer.rlSteps}`, metrics: await trainer.evaluate() })
    }
    const first = trainer.rlSteps
    const bar = createProgress({
      format: 'RL {bar} step {step} | {rate} steps/s | acc {acc} incons {incons} ground {ground} | λ {lambda}',
      total: steps,
      stream: io.stderr,
      payload: { step: first, rate: '–', acc: '–', incons: '–', ground: '–', lambda: '–' },
    })
    // said before the first step starts, so a Ctrl-C after this line stops after one step at least
    if (steps > 0) say(`RL: steps ${first + 1} to ${first + steps}; Ctrl-C stops after the current step and saves`)
    const started = performance.now()
    telemetry?.status('RL')
    await trainer.train(
      steps,
      (report) => {
        options.onStep?.(report, trainer)
        telemetry?.onStep(report)
        if (!bar.active) return
        const lambda = lambdaText(Object.fromEntries(Object.entries(report.batch.lambda).map(([k, v]) => [k[0], v.after])), 2)
        bar.update(report.step - first, {
          step: report.step,
          rate: fixed((report.step - first) / ((performance.now() - started) / 1000), 0),
          acc: percent(report.metrics.accuracy),
          incons: percent(report.metrics.inconsistencyRate),
          ground: percent(report.metrics.grounding),
          lambda,
        })
      },
      options.signal,
    )
    bar.stop()
    const seconds = (performance.now() - started) / 1000
    const done = trainer.rlSteps - first
    say(
      `RL: ${done} step${done === 1 ? '' : 's'} in ${seconds.toFixed(1)} s (${(done / Math.max(seconds, 1e-9)).toFixed(0)} steps/s, ${config.batchGroups}×${config.groupSize} rollouts each); now at RL step ${trainer.rlSteps}`,
    )
    telemetry?.status('held-out evaluation')
    rows.push({ label: `at RL step ${trainer.rlSteps}`, metrics: await trainer.evaluate() })
    telemetry?.status('done')
    const onnx = join(dataDir, 'policy.onnx')
    await trainer.exportOnnx(onnx)
    say('')
    say(formatTrainSummary(rows, trainer.lambda))
    say(`policy exported to ${onnx}; run again to continue from step ${trainer.rlSteps}`)
  } finally {
    await dashboard?.close()
    await trainer.close()
  }
}

/** The settings an invocation names (an option left out keeps the default). */
const definedOnly = <T extends object>(settings: T): Partial<T> =>
  Object.fromEntries(Object.entries(settings).filter(([, value]) => value !== undefined)) as Partial<T>

interface EvalCommandOptions {
  seeds: number[]
  steps?: number
  level?: Level
  ablation?: boolean
  artifacts: string
  rows?: string[]
  parallel?: number
  json?: string
  warmSteps?: number
  scenes?: number
}

/** `eval --ablation`: the table per level, ablation.json and one picture per level under --artifacts (and --json when given). */
async function ablationCommand(opts: EvalCommandOptions, io: CommandIO): Promise<void> {
  const levels: Level[] = opts.level === undefined ? [...LEVELS] : [opts.level]
  const steps = Object.fromEntries(levels.map((l) => [l, rlStepsFor(l, opts.steps)])) as Record<Level, number>
  io.stdout.write(
    `dualstream eval --ablation — levels ${levels.map((l) => `${l} (${steps[l]} RL steps)`).join(', ')}, seeds ${opts.seeds.join(', ')}, identical settings per level\n`,
  )
  const report = await runAblation({
    levels,
    seeds: opts.seeds,
    steps,
    rows: opts.rows,
    parallel: opts.parallel,
    settings: definedOnly({ sftSteps: opts.warmSteps, evalScenes: opts.scenes }),
    onResult: (r, done, total) =>
      io.stdout.write(
        `  [${done}/${total}] ${r.level} ${r.method} seed ${r.seed}: accuracy ${percent(r.final.accuracy)}, inconsistency ${percent(r.final.inconsistencyRate)}, grounding ${percent(r.final.grounding)} (${r.seconds.toFixed(0)} s)\n`,
      ),
  })
  io.stdout.write(`\n${formatAblation(report)}\n`)
  mkdirSync(opts.artifacts, { recursive: true })
  const json = `${JSON.stringify(report, null, 2)}\n`
  const written = [join(opts.artifacts, 'ablation.json')]
  writeFileSync(written[0], json)
  for (const level of report.levels) {
    const svg = join(opts.artifacts, `ablation-${level.level}.svg`)
    writeFileSync(svg, ablationSvg(level))
    written.push(svg)
  }
  if (opts.json !== undefined) {
    writeFileSync(opts.json, json)
    written.push(opts.json)
  }
  io.stdout.write(`wrote ${written.join(', ')}\n`)
}

/** Adds `train` and `eval` to the program. */
export function addTrainCommands(program: Command, io: CommandIO): void {
  program
    .command('train')
    .description('Built-in online training on SpatialGrid (warm start, then GRPO/FGRPO); resumes from --data.')
    .addOption(new Option('-m, --method <method>', 'preset engine config').choices(['fgrpo', 'grpo']).default('fgrpo'))
    .option('-c, --config <file>', 'engine config (JSON) instead of a preset')
    .option('-s, --steps <n>', `RL steps to run now (default ${LEVEL_PRESETS.easy.rlSteps}; ${LEVEL_PRESETS.hard.rlSteps} at the hard level)`, integerOption(0))
    .addOption(new Option('--level <level>', 'SpatialGrid level').choices(LEVELS).default('easy'))
    .option('--seed <n>', 'seed of a new run', integerOption(0), 0)
    .option('-d, --data <dir>', 'state folder (default data/<method or config name>, with -hard at the hard level)')
    .option(
      '-p, --port <n>',
      `dashboard port on 127.0.0.1 (0 = any free port; a port in use falls back to a free one)`,
      integerOption(0, 65535),
      DEFAULT_DASHBOARD_PORT,
    )
    .option('--no-dashboard', 'no dashboard, /telemetry nor /metrics')
    .addHelpText('after', '\nThe dashboard (/, WebSocket /telemetry, /metrics) asks for DUALSTREAM_VIEWER_TOKEN when it is set.')
    .action(async (opts: TrainCommandOptions) => {
      const abort = new AbortController()
      const stop = () => abort.abort()
      process.once('SIGINT', stop)
      try {
        await trainCommand({ ...opts, signal: abort.signal }, io)
      } finally {
        process.off('SIGINT', stop)
      }
    })

  program
    .command('eval')
    .description('Train GRPO and FGRPO on several seeds with identical settings; the held-out table.')
    .option('--seeds <list>', 'comma-separated seeds', (v) => v.split(',').map((s) => integerOption(0)(s.trim())), [0, 1, 2])
    .option('-s, --steps <n>', `RL steps per run (default ${LEVEL_PRESETS.easy.rlSteps}; ${LEVEL_PRESETS.hard.rlSteps} at the hard level)`, integerOption(0))
    .addOption(new Option('--level <level>', 'SpatialGrid level (default easy; with --ablation default both)').choices(LEVELS))
    .option('--ablation', 'the ablation table of FGRPO design choices (and its picture under --artifacts)')
    .option('--artifacts <dir>', 'where --ablation writes ablation.json and ablation-<level>.svg', 'artifacts')
    .option('--rows <ids>', 'with --ablation: only these rows (comma-separated ids, default all)', (v) => v.split(',').map((s) => s.trim()))
    .option('--parallel <n>', 'trainings at a time (default: one per core)', integerOption(1))
    .option('--json <file>', 'write the results as JSON')
    .option('--warm-steps <n>', `supervised warm-start steps per run (default ${DEFAULT_TRAIN_SETTINGS.sftSteps}; fewer for a quick check)`, integerOption(0))
    .option('--scenes <n>', `held-out scenes per evaluation (default ${DEFAULT_TRAIN_SETTINGS.evalScenes}; fewer for a quick check)`, integerOption(1))
    .action(async (opts: EvalCommandOptions) => {
      if (opts.ablation) return ablationCommand(opts, io)
      const level = opts.level ?? 'easy'
      const steps = rlStepsFor(level, opts.steps)
      io.stdout.write(
        `dualstream eval — GRPO and FGRPO${level === 'easy' ? '' : ` on level ${level}`}, seeds ${opts.seeds.join(', ')}, ${steps} RL steps each, identical settings\n`,
      )
      const report = await runEvaluation({
        seeds: opts.seeds,
        steps,
        level,
        parallel: opts.parallel,
        settings: definedOnly({ sftSteps: opts.warmSteps, evalScenes: opts.scenes }),
        onResult: (r, done, total) =>
          io.stdout.write(
            `  [${done}/${total}] ${r.method} seed ${r.seed}: accuracy ${percent(r.final.accuracy)}, inconsistency ${percent(r.final.inconsistencyRate)}, grounding ${percent(r.final.grounding)} (${r.seconds.toFixed(0)} s)\n`,
          ),
      })
      io.stdout.write(`\n${formatEvaluation(report)}\n`)
      if (opts.json !== undefined) {
        writeFileSync(opts.json, `${JSON.stringify(report, null, 2)}\n`)
        io.stdout.write(`wrote ${opts.json}\n`)
      }
    })
}
