/**
 * `npm run bench`: prints a table of throughputs and writes them as JSON.
 *
 *   npm run bench -- --rollouts 1000000 --runs 5 --json bench-results.json
 *   npm run bench -- --telemetry-rollouts 1000000   # the full never-reading-client check
 *   npm run bench -- --history-steps 1000000        # the whole-run history's memory for a long run
 *   npm run bench -- --pending-rollouts 1000000      # serve's memory with the trainer stopped
 *   npm run bench -- --payload-bytes 128,16384,65536 --frame 64,1000   # LLM-sized payloads beside the disk's floors
 *   npm run bench -- --cluster --rollouts 200000        # one node vs a cluster node on 1 and 3 NATS servers, the sequencer alone, 10 failovers
 */
import { writeFileSync } from 'node:fs'
import { availableParallelism, cpus } from 'node:os'
import { Command, InvalidArgumentError } from 'commander'
import { benchCore } from './core.js'
import { benchDurable } from './durable.js'
import { formatTable, type Throughput } from './measure.js'
import { benchHistoryIfAsked, type HistoryBenchReport } from './history.js'
import type { PendingMemoryReport } from './pendingMemory.js'
import { benchPayload, type PayloadCell } from './payload.js'
import type { ClusterBenchReport } from './cluster.js'
import { benchTelemetryIfAsked, type TelemetryBenchRequest, type TelemetryRunReport } from './telemetry.js'

export interface BenchOptions extends Omit<TelemetryBenchRequest, 'frame'> {
  rollouts: number
  runs: number
  warmup: number
  /**
   * Rollouts per frame in the durable bench: a row each (default [1000]); with `payloadBytes`,
   * a column of the payload matrix each. The telemetry bench takes the first.
   */
  frame?: number[]
  /** Payload bytes per rollout: runs the payload matrix (payload.ts) instead of the payload-less durable row. */
  payloadBytes?: number[]
  json?: string
  /** Steps of the simulated run of the history bench (0 = skip), and of the restart rebuild. */
  historySteps?: number
  historyRestartSteps?: number
  /** Rollouts streamed to a `serve` whose trainer never connects, and their payload bytes (pendingMemory.ts; 0 = skip). */
  pendingRollouts?: number
  pendingPayloadBytes?: number
  /** Runs only the cluster bench (cluster.ts) with `rollouts`, `runs`, `warmup`, the first frame and payload size. */
  cluster?: boolean
  /** SIGKILLs of the sequencer's node the cluster bench times failover over (default 10). */
  kills?: number
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
  /** The whole-run history's memory and times, when it ran. */
  history?: HistoryBenchReport
  /** Every cell of the payload matrix, when it ran. */
  payload?: PayloadCell[]
  /** serve's memory with the trainer stopped, when it ran. */
  pending?: PendingMemoryReport
  /** The cluster bench, when it ran (`--cluster`). */
  cluster?: ClusterBenchReport
}

/** Runs every benchmark and returns the report (also printed through `log`, and written to `json`). */
export async function runBenchmarks(options: BenchOptions): Promise<BenchReport> {
  const { log, payloadBytes } = options
  const frames = options.frame ?? [1000]
  /* c8 ignore start -- starts nats-server processes: `npm run bench -- --cluster` (its figures are in the README) */
  if (options.cluster === true) {
    const { benchCluster } = await import('./cluster.js')
    const cluster = await benchCluster({ ...options, frame: frames[0], payloadBytes: payloadBytes?.[0], log })
    const report: BenchReport = {
      date: new Date().toISOString(),
      node: process.version,
      cpus: `${availableParallelism()} × ${cpus()[0]?.model}`,
      results: [],
      cluster,
    }
    if (options.json !== undefined) writeFileSync(options.json, `${JSON.stringify(report, null, 2)}\n`)
    return report
  }
  /* c8 ignore stop */
  const results = await benchCore(options)
  // the payload-less durable row for each frame, unless the payload matrix replaces it
  for (const frame of payloadBytes === undefined ? frames : []) results.push(...(await benchDurable({ ...options, frame })))
  // the telemetry bench (a /telemetry client that never reads) when --telemetry-rollouts > 0
  const telemetry = await benchTelemetryIfAsked({ ...options, frame: frames[0] })
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
  report.payload = payloadBytes === undefined ? undefined : await benchPayload({ ...options, payloadBytes, frames })
  report.history = await benchHistoryIfAsked(options)
  /* c8 ignore next 4 -- spawns the compiled serve: run in CI by the fault suite (test/faults/pendingMemory.test.ts) */
  if ((options.pendingRollouts ?? 0) > 0) {
    const { benchPendingMemory } = await import('./pendingMemory.js')
    report.pending = await benchPendingMemory({ rollouts: options.pendingRollouts!, payloadBytes: options.pendingPayloadBytes ?? 1024, log })
  }
  if (options.json !== undefined) {
    writeFileSync(options.json, `${JSON.stringify(report, null, 2)}\n`)
    log(`wrote ${options.json}`)
  }
  return report
}

/* c8 ignore start */
/** A commander parser of `N[,N…]`: integers of at least `min`. */
const integerList = (min: number) => (value: string) => {
  const list = value.split(',').map((item) => Number(item.trim()))
  if (list.some((n) => !Number.isSafeInteger(n) || n < min))
    throw new InvalidArgumentError(`expected integers of at least ${min}, separated by commas: ${value}`)
  return list
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const program = new Command('bench')
    .option('--rollouts <n>', 'rollouts per run', (v) => Number.parseInt(v, 10), 1_000_000)
    .option('--runs <n>', 'measured runs per benchmark', (v) => Number.parseInt(v, 10), 5)
    .option('--warmup <n>', 'unmeasured warm-up runs', (v) => Number.parseInt(v, 10), 2)
    .option(
      '--frame <n[,n…]>',
      'rollouts per WebSocket frame in the durable bench: a row each (a column of the payload matrix each); the telemetry bench takes the first',
      integerList(1),
      [1000],
    )
    .option(
      '--payload-bytes <b[,b…]>',
      'payload bytes per rollout ({tokens, logprobs} as MessagePack bins): runs the payload matrix, durable path beside its LMDB and file floors, instead of the payload-less durable row',
      integerList(0),
    )
    .option('--json <file>', 'write the results as JSON', 'bench-results.json')
    .option(
      '--telemetry-rollouts <n>',
      'rollouts per run of the telemetry bench (a /telemetry client that never reads; 0 = skip)',
      (v) => Number.parseInt(v, 10),
      200_000,
    )
    .option('--telemetry-runs <n>', 'measured runs of each telemetry variant', (v) => Number.parseInt(v, 10), 3)
    .option('--telemetry-warmup <n>', 'unmeasured rounds of the telemetry variants first', (v) => Number.parseInt(v, 10), 1)
    .option('--history-steps <n>', 'steps of a simulated run for the whole-run history bench (0 = skip)', (v) => Number.parseInt(v, 10), 1_000_000)
    .option(
      '--history-restart-steps <n>',
      'committed steps serve rebuilds its history from at start, in the history bench',
      (v) => Number.parseInt(v, 10),
      100_000,
    )
    .option('--pending-rollouts <n>', 'rollouts streamed to a serve whose trainer never connects, for its memory (0 = skip)', (v) => Number.parseInt(v, 10), 0)
    .option(
      '--cluster',
      'only the cluster bench: one node with LMDB vs a cluster node on a 1- and a 3-server NATS (nats-server), the sequencer alone, failover over --kills',
    )
    .option('--kills <n>', "SIGKILLs of the sequencer's node the cluster bench times failover over (0 = skip)", (v) => Number.parseInt(v, 10), 10)
    .option('--pending-payload-bytes <n>', 'payload bytes per rollout of that run', (v) => Number.parseInt(v, 10), 1024)
    .parse()
  await runBenchmarks({ ...program.opts<Omit<BenchOptions, 'log'>>(), log: console.log })
}
/* c8 ignore stop */
