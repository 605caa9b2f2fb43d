/**
 * The cluster bench (issue 11: `npm run bench -- --cluster`). On a 1-server NATS (nats-server
 * started here, on loopback): first the sequencer alone over a prepared GROUPS stream (the
 * cluster's ceiling: partitions scale out over nodes, the sequencer does not); then the payload
 * bench's producer and trainer processes (payload.ts) against one node with LMDB and a
 * cluster node, taking turns run by run (the host's drift falls on both: their ratio is the
 * figure); then the failover time over `kills` SIGKILLs of the sequencer's node
 * (failover.ts). Last, a cluster node on a 3-server NATS. Each run on a fresh run of its own;
 * rollouts/s end to end, ack latency p50/p99 and ack → batch p50/p99, medians of the runs
 * with their ranges.
 */
import { jetstream } from '@nats-io/jetstream'
import { ClusterEngine } from '../../state/cluster/clusterEngine.js'
import { ClusterRoles } from '../../state/cluster/clusterRoles.js'
import { openRun } from '../../state/cluster/clusterRun.js'
import { connectNats } from '../../state/cluster/natsConnect.js'
import { createRunStreams } from '../../state/cluster/runStreams.js'
import { runLayout } from '../../state/cluster/runLayout.js'
import { startNats, type NatsServers } from '../natsServers.js'
import { benchConfig } from './core.js'
import { formatRate, median, textTable } from './measure.js'
import { durableRun, openDurableBenchEngine, spread, type BenchEngine, type DurablePayloadRun, type Spread } from './payload.js'
import { benchSequencer, type SequencerBenchReport } from './sequencerBench.js'
import { benchFailover, type FailoverReport } from './failover.js'
import { DEFAULT_WIRE_LIMITS } from '../../../streams/wire.js'

export interface ClusterBenchOptions {
  rollouts: number
  runs: number
  warmup: number
  /** Rollouts per frame (default 1000). */
  frame?: number
  /** Payload bytes per rollout (default 128). */
  payloadBytes?: number
  /** Partitions of the cluster runs (default 8). */
  partitions?: number
  /** Groups the sequencer-alone bench sequences (default 100,000: 800,000 rollouts). */
  sequencerGroups?: number
  /** Sequencer kills the failover bench times (default 10; 0 = none). */
  kills?: number
  log: (line: string) => void
}

export interface ClusterSetupRow {
  setup: string
  rate: Spread
  ackP50: Spread
  ackP99: Spread
  ackToBatchP50: Spread
  ackToBatchP99: Spread
  delivered: number
  duplicates: number
  runs: DurablePayloadRun[]
}

/** The sequencer-alone cases: GROUPS messages of 64 groups (an owner under load) and of 1; batches of the paper's 16 groups (128 rollouts) and of 128 groups (1,024). */
const SEQUENCER_CASES = [
  { groupsPerEntry: 64, batchGroups: 16 },
  { groupsPerEntry: 1, batchGroups: 16 },
  { groupsPerEntry: 64, batchGroups: 128 },
] as const

/** One sequencer-alone case over the measured runs. */
export interface SequencerRow {
  groupsPerEntry: number
  /** Rollouts per batch (step). */
  batchRollouts: number
  /** The sequencer's rollouts/s. */
  rate: Spread
  /** NATS alone on the same messages (the design's ceiling here). */
  transport: Spread
  runs: SequencerBenchReport[]
}

export interface ClusterBenchReport {
  frame: number
  payloadBytes: number
  rollouts: number
  setups: ClusterSetupRow[]
  /** The cluster node on a 1-server NATS as % of one node with LMDB (medians). */
  percentOfSingleNode: number
  sequencer: SequencerRow[]
  failover?: FailoverReport
}

let runCounter = 0

/** A cluster node in this process on `nats`: a fresh run, its engine and its roles (it holds every role). */
export async function openClusterBenchEngine(nats: NatsServers, partitions: number): Promise<BenchEngine> {
  const nc = await connectNats({ servers: nats.url, name: 'dualstream bench' })
  const run = `bench${process.pid}_${++runCounter}`
  const { layout, record } = await openRun({ nc, run, config: benchConfig, partitions })
  const engine = await ClusterEngine.open({ nc, layout, config: record.config, partitions: record.partitions, node: 'bench' })
  const roles = await ClusterRoles.start({ js: engine.js, jsm: engine.jsm, layout, record, node: 'bench', engine })
  return {
    engine,
    close: async () => {
      await roles.stop()
      await engine.close()
      await nc.close()
    },
  }
}

function row(setup: string, runs: DurablePayloadRun[]): ClusterSetupRow {
  return {
    setup,
    rate: spread(runs.map((r) => r.rate)),
    ackP50: spread(runs.map((r) => r.ackP50)),
    ackP99: spread(runs.map((r) => r.ackP99)),
    ackToBatchP50: spread(runs.map((r) => r.ackToBatchP50)),
    ackToBatchP99: spread(runs.map((r) => r.ackToBatchP99)),
    delivered: Math.min(...runs.map((r) => r.delivered)),
    duplicates: Math.max(...runs.map((r) => r.duplicates)),
    runs,
  }
}

/**
 * The sequencer alone over prepared GROUPS entries as large and as small as owners publish
 * them, with the paper's batches and larger ones. It runs first, in a process that has run no
 * other bench: after the end-to-end runs (their engines closed, their garbage collected) it
 * measured ≈ 15% lower, which is the heap those runs leave, not the sequencer.
 */
async function benchSequencerCases(nats: NatsServers, warmup: number, runs: number, groups: number): Promise<SequencerRow[]> {
  const rows: SequencerRow[] = []
  const nc = await connectNats({ servers: nats.url, name: 'dualstream bench sequencer' })
  try {
    for (const { groupsPerEntry, batchGroups } of SEQUENCER_CASES) {
      const config = { ...benchConfig, batchGroups }
      const all: SequencerBenchReport[] = []
      for (let i = 0; i < warmup + runs; i++) {
        const layout = runLayout(`seq${process.pid}_${++runCounter}`)
        const jsm = await jetstream(nc).jetstreamManager()
        await createRunStreams(jsm, layout, 1)
        all.push(await benchSequencer({ nc, layout, config, groups, groupsPerEntry }))
        // the next run's streams start empty; this one's are not needed again
        for (const stream of Object.values(layout.streams)) await jsm.streams.delete(stream).catch(() => false)
      }
      const measured = all.slice(warmup)
      rows.push({
        groupsPerEntry,
        batchRollouts: batchGroups * benchConfig.groupSize,
        rate: spread(measured.map((r) => r.rolloutsPerSecond)),
        transport: spread(measured.map((r) => r.transportRolloutsPerSecond)),
        runs: measured,
      })
    }
  } finally {
    await nc.close()
  }
  return rows
}

/** Runs the cluster bench and prints its tables through `log`. */
export async function benchCluster(options: ClusterBenchOptions): Promise<ClusterBenchReport> {
  const { rollouts, runs, warmup, log } = options
  const frame = options.frame ?? 1000
  const payloadBytes = options.payloadBytes ?? 128
  const partitions = options.partitions ?? 8
  const maxFrameBytes = Math.max(DEFAULT_WIRE_LIMITS.maxFrameBytes, frame * (payloadBytes + 1024))
  // the setups given take turns, run by run, so that the host's drift falls on each alike
  const measure = async (...opens: (() => Promise<BenchEngine>)[]): Promise<DurablePayloadRun[][]> => {
    const all = opens.map((): DurablePayloadRun[] => [])
    for (let i = 0; i < warmup + runs; i++)
      for (const [k, open] of opens.entries()) all[k].push(await durableRun(rollouts, payloadBytes, frame, maxFrameBytes, open))
    return all.map((measured) => measured.slice(warmup))
  }
  const setups: ClusterSetupRow[] = []
  const sequencer: SequencerRow[] = []
  let failover: FailoverReport | undefined
  for (const servers of [1, 3] as const) {
    const nats = await startNats({ servers })
    try {
      if (servers === 1) sequencer.push(...(await benchSequencerCases(nats, warmup, runs, options.sequencerGroups ?? 100_000)))
      const cluster = `cluster node, ${servers}-server NATS (R=${servers === 3 ? 3 : 1})`
      if (servers === 1) {
        // one node and the cluster node alternate: their ratio is the figure the issue asks for
        const [single, clustered] = await measure(openDurableBenchEngine, () => openClusterBenchEngine(nats, partitions))
        setups.push(row('one node, LMDB', single), row(cluster, clustered))
      } else setups.push(row(cluster, (await measure(() => openClusterBenchEngine(nats, partitions)))[0]))
      if (servers === 1 && (options.kills ?? 10) > 0) failover = await benchFailover({ kills: options.kills ?? 10, nats, log })
    } finally {
      await nats.stop()
    }
  }
  const report: ClusterBenchReport = {
    frame,
    payloadBytes,
    rollouts,
    setups,
    percentOfSingleNode: (100 * setups[1].rate.median) / setups[0].rate.median,
    sequencer,
    failover,
  }
  log(formatClusterTables(report))
  return report
}

const ms = (s: Spread) => `${s.median.toFixed(1)} (${s.min.toFixed(1)}–${s.max.toFixed(1)})`

/** The report as plain-text tables. */
export function formatClusterTables(report: ClusterBenchReport): string {
  return [
    `cluster bench: ${report.rollouts.toLocaleString('en-US')} rollouts of ${report.payloadBytes} B in frames of ${report.frame}, one producer and one trainer process; median (min–max)`,
    textTable(
      ['setup', 'rollouts/s', 'ack p50 / p99 ms', 'ack→batch p50 / p99 ms', 'delivered (dup)'],
      report.setups.map((s) => [
        s.setup,
        `${formatRate(s.rate.median)} (${formatRate(s.rate.min)} – ${formatRate(s.rate.max)})`,
        `${ms(s.ackP50)} / ${ms(s.ackP99)}`,
        `${ms(s.ackToBatchP50)} / ${ms(s.ackToBatchP99)}`,
        `${s.delivered} (${s.duplicates})`,
      ]),
    ),
    `cluster node on a 1-server NATS: ${report.percentOfSingleNode.toFixed(0)}% of one node with LMDB`,
    '',
    'the sequencer alone over a prepared GROUPS stream (1-server NATS): read, decode, score, encode, publish with the expected-sequence check; its CPU: its process, every thread (not the NATS server); NATS alone: the same GROUPS messages read and the steps they completed published as the sequencer does (coalesced while a publish is in flight, encoded then), nothing scored',
    textTable(
      [
        'groups per entry',
        'rollouts per batch',
        'rollouts',
        'rollouts/s',
        'its CPU µs per rollout',
        'NATS alone rollouts/s',
        'pure steps: decode / feed / encode µs per rollout',
      ],
      report.sequencer.map((row) => {
        const perRollout = (seconds: (r: SequencerBenchReport) => number) => ((1e6 * median(row.runs.map(seconds))) / row.runs[0].rollouts).toFixed(2)
        return [
          String(row.groupsPerEntry),
          row.batchRollouts.toLocaleString('en-US'),
          row.runs[0].rollouts.toLocaleString('en-US'),
          `${formatRate(row.rate.median)} (${formatRate(row.rate.min)} – ${formatRate(row.rate.max)})`,
          perRollout((r) => r.cpuSeconds),
          `${formatRate(row.transport.median)} (${formatRate(row.transport.min)} – ${formatRate(row.transport.max)})`,
          `${perRollout((r) => r.phases.decode)} / ${perRollout((r) => r.phases.feed)} / ${perRollout((r) => r.phases.encode)}`,
        ]
      }),
    ),
    ...(report.failover === undefined ? [] : ['', formatFailover(report.failover)]),
  ].join('\n')
}

/** The failover bench's line: p50 / max over the kills, each kill, the restarts. */
export function formatFailover(report: FailoverReport): string {
  const lease = report.leaseMs === undefined ? 'the default lease (3000 ms)' : `a lease of ${report.leaseMs} ms`
  return [
    `failover: SIGKILL of the sequencer's node → the next new step at the trainer, ${report.kills} kills, 3 nodes on a 1-server NATS, ${lease}:`,
    `  p50 ${report.p50.toFixed(0)} ms, max ${report.max.toFixed(0)} ms (each: ${report.failoverMs.map((ms) => ms.toFixed(0)).join(', ')}); a killed node restarts and listens in ${Math.min(...report.restartMs).toFixed(0)}–${Math.max(...report.restartMs).toFixed(0)} ms`,
  ].join('\n')
}
