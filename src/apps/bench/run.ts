/**
 * `npm run bench`: prints a table of throughputs and writes them as JSON.
 *
 *   npm run bench -- --rollouts 1000000 --runs 5 --json bench-results.json
 *   npm run bench -- --telemetry-rollouts 1000000   # the full never-reading-client check
 */
import { writeFileSync } from 'node:fs'
import { availableParallelism, cpus } from 'node:os'
import { Command } from 'commander'
import { benchCore } from './core.js'
import { benchDurable } from './durable.js'
import { formatTable, type Throughput } from './measure.js'
import { benchTelemetryIfAsked, type TelemetryBenchRequest, type TelemetryRunReport } from './telemetry.js'

export interface BenchOptions extends TelemetryBenchRequest {
  rollouts: number
  runs: number
  warmup: number
  /** Rollouts per frame in the durable bench. */
  frame?: number
  json?: string
  /** Where the table goes (the command passes console.log). */
  log: (line: string) => void
}

export interface BenchReport {
  date: string
  node: string
  cpus: string
  results: Throughput[]
  /** Every run of the telemetry bench (throughput, RSS, drops), when it ran. */
  telemetry?: TelemetryRunReport[]
}

/** Runs every benchmark and returns the report (also printed through `log`, and written to `json`). */
export async function runBenchmarks(options: BenchOptions): Promise<BenchReport> {
  const { log } = options
  const results = [...(await benchCore(options)), ...(await benchDurable(options))]
  // the telemetry bench (a /telemetry client that never reads) when --telemetry-rollouts > 0
  const telemetry = await benchTelemetryIfAsked(options)
  results.push(...telemetry.results)
  const report: BenchReport = {
    date: new Date().toISOString(),
    node: process.version,
    cpus: `${availableParallelism()} × ${cpus()[0]?.model}`,
    results,
    telemetry: telemetry.runs,
  }
  log(`dualstream bench — ${report.node}, ${report.cpus}, median of ${options.runs} runs after ${options.warmup} warm-up`)
  log(formatTable(results))
  if (options.json !== undefined) {
    writeFileSync(options.json, `${JSON.stringify(report, null, 2)}\n`)
    log(`wrote ${options.json}`)
  }
  return report
}

/* c8 ignore start */
if (import.meta.url === `file://${process.argv[1]}`) {
  const program = new Command('bench')
    .option('--rollouts <n>', 'rollouts per run', (v) => Number.parseInt(v, 10), 1_000_000)
    .option('--runs <n>', 'measured runs per benchmark', (v) => Number.parseInt(v, 10), 5)
    .option('--warmup <n>', 'unmeasured warm-up runs', (v) => Number.parseInt(v, 10), 2)
    .option('--frame <n>', 'rollouts per WebSocket frame in the durable bench', (v) => Number.parseInt(v, 10), 1000)
    .option('--json <file>', 'write the results as JSON', 'bench-results.json')
    .option(
      '--telemetry-rollouts <n>',
      'rollouts per run of the telemetry bench (a /telemetry client that never reads; 0 = skip)',
      (v) => Number.parseInt(v, 10),
      200_000,
    )
    .option('--telemetry-runs <n>', 'measured runs of each telemetry variant', (v) => Number.parseInt(v, 10), 3)
    .option('--telemetry-warmup <n>', 'unmeasured rounds of the telemetry variants first', (v) => Number.parseInt(v, 10), 1)
    .parse()
  await runBenchmarks({ ...program.opts<Omit<BenchOptions, 'log'>>(), log: console.log })
}
/* c8 ignore stop */
