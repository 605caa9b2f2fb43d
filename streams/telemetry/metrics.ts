/**
 * `/metrics`: Prometheus text format via prom-client, from a registry owned by the server
 * (not prom-client's global one). Gauges follow the batch frames; the counters mirror the
 * engine's running totals (they are read at scrape time and advanced by the difference, so
 * they start from the totals of the data folder); the latency histogram is fed per batch.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import type { Config } from '../../src/core/config.js'
import type { BatchFrame, TelemetryCounts, TelemetrySource } from './frames.js'
import type { TelemetryHub } from './hub.js'

/** Seconds: batch latency is milliseconds on loopback, seconds when groups wait on timeouts. */
export const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300]

export interface TelemetryMetricsOptions {
  source: TelemetrySource
  config: Config
  hub: TelemetryHub
  /** The running totals now (read at each scrape). */
  counts: () => TelemetryCounts
  /** The step and λ now (for gauges before the first batch). */
  state: () => { step: number; lambda: Record<string, number> }
  /** Node's process metrics (CPU, memory, event loop lag, GC) in the same registry (default true). */
  processMetrics?: boolean
}

export class TelemetryMetrics {
  readonly registry = new Registry()
  private readonly step: Gauge
  private readonly lambda: Gauge<'constraint'>
  private readonly constraintMean: Gauge<'constraint'>
  private readonly violation: Gauge<'constraint'>
  private readonly violatedSteps: Gauge<'constraint'>
  /** Per constraint, the batches in a row (up to the latest) whose violation was positive. */
  private readonly violatedRun = new Map<string, number>()
  private readonly sampleViolationRate: Gauge<'constraint'>
  private readonly objectiveMean: Gauge<'objective'>
  private readonly fracZeroStd: Gauge<'channel'>
  private readonly advantage: Gauge<'stat'>
  private readonly throughput: Gauge
  private readonly latency: Histogram
  private readonly learner: Gauge<'stat'> | undefined
  private readonly droppedFrames: Counter

  constructor(private readonly options: TelemetryMetricsOptions) {
    const registers = [this.registry]
    const { config, hub } = options
    this.step = new Gauge({ name: 'dualstream_step', help: 'Step (dual update) of the latest batch.', registers })
    this.lambda = new Gauge({
      name: 'dualstream_lambda',
      help: 'Lagrange multiplier of each constraint after the latest dual update.',
      labelNames: ['constraint'],
      registers,
    })
    const thresholds = new Gauge({
      name: 'dualstream_constraint_threshold',
      help: 'Threshold τ of each constraint.',
      labelNames: ['constraint', 'sense'],
      registers,
    })
    this.constraintMean = new Gauge({
      name: 'dualstream_constraint_mean',
      help: 'Batch mean J of each constraint channel (latest batch).',
      labelNames: ['constraint'],
      registers,
    })
    this.violation = new Gauge({
      name: 'dualstream_constraint_violation',
      help: 'Violation e of each constraint in the latest batch (τ − J for >=, J − τ for <=; positive = violated).',
      labelNames: ['constraint'],
      registers,
    })
    this.violatedSteps = new Gauge({
      name: 'dualstream_constraint_violated_steps',
      help: 'Consecutive batches up to the latest in which each constraint was violated (e > 0), counted since this process started; 0 once met. A batch without a value leaves it as it was.',
      labelNames: ['constraint'],
      registers,
    })
    const lambdaMax = new Gauge({
      name: 'dualstream_lambda_max',
      help: 'Upper bound λmax of each constraint’s multiplier (dual.max; no series for a constraint without one).',
      labelNames: ['constraint'],
      registers,
    })
    this.sampleViolationRate = new Gauge({
      name: 'dualstream_constraint_sample_violation_rate',
      help: 'Share of the latest batch’s values on the wrong side of sampleThreshold.',
      labelNames: ['constraint'],
      registers,
    })
    this.objectiveMean = new Gauge({
      name: 'dualstream_objective_mean',
      help: 'Batch mean of each objective channel (latest batch).',
      labelNames: ['objective'],
      registers,
    })
    this.fracZeroStd = new Gauge({
      name: 'dualstream_frac_zero_std',
      help: 'Share of the latest batch’s groups with no signal, per channel.',
      labelNames: ['channel'],
      registers,
    })
    this.advantage = new Gauge({ name: 'dualstream_advantage', help: 'Mean and std of the latest batch’s advantages.', labelNames: ['stat'], registers })
    this.throughput = new Gauge({
      name: 'dualstream_throughput_rollouts_per_second',
      help: 'Rollouts per second into batches over the last seconds.',
      registers,
    })
    for (const c of config.constraints) {
      thresholds.set({ constraint: c.channel, sense: c.sense }, c.threshold)
      // an unbounded λ has no series rather than +Inf: there is no ceiling for it to be pinned at
      if (Number.isFinite(c.dual.max)) lambdaMax.set({ constraint: c.channel }, c.dual.max)
      this.violatedSteps.set({ constraint: c.channel }, 0)
    }
    const { step, lambda } = options.state()
    this.step.set(step)
    // own keys only: a channel may be named like an Object.prototype member (`constructor`)
    for (const c of config.constraints) this.lambda.set({ constraint: c.channel }, Object.hasOwn(lambda, c.channel) ? lambda[c.channel] : 0)

    const totals = (name: string, help: string, read: (counts: TelemetryCounts) => number) => runningTotal(registers, name, help, () => read(options.counts()))
    totals('dualstream_rollouts_ingested_total', 'Rollouts accepted at ingest.', (c) => c.ingested)
    totals('dualstream_rollouts_duplicate_total', 'Rollouts whose id was already logged (acknowledged, not counted again).', (c) => c.duplicate)
    totals('dualstream_rollouts_stale_total', 'Rollouts dropped as stale (more than maxStaleness policy versions behind).', (c) => c.stale)
    totals('dualstream_incomplete_groups_total', 'Groups dropped with fewer than minGroupSize rollouts.', (c) => c.droppedGroups)
    totals('dualstream_incomplete_group_rollouts_total', 'Rollouts in the dropped incomplete groups.', (c) => c.droppedGroupRollouts)
    totals('dualstream_batches_total', 'Scored batches (steps).', (c) => c.batches)
    totals('dualstream_rollouts_in_batches_total', 'Rollouts that reached a batch.', (c) => c.rolloutsInBatches)
    const rejectedSeen: Record<string, number> = {}
    new Counter({
      name: 'dualstream_rollouts_rejected_total',
      help: 'Items refused at ingest, by reason (the field at fault, or shape).',
      labelNames: ['reason'],
      registers,
      collect() {
        for (const [reason, n] of Object.entries(options.counts().rejectedByReason)) {
          const seen = rejectedSeen[reason] ?? 0
          if (n > seen) this.inc({ reason }, n - seen)
          rejectedSeen[reason] = Math.max(seen, n)
        }
      },
    })
    new Gauge({
      name: 'dualstream_pending_rollouts',
      help: 'Rollouts inside the pipeline (open groups, the batch being filled).',
      registers,
      collect() {
        this.set(options.counts().pending)
      },
    })
    new Gauge({
      name: 'dualstream_outbox_batches',
      help: 'Batches not yet acknowledged by a trainer.',
      registers,
      collect() {
        this.set(options.counts().outbox)
      },
    })

    this.latency =
      options.source === 'serve'
        ? new Histogram({
            name: 'dualstream_batch_latency_seconds',
            help: 'From the newest rollout of a batch being ingested to the batch being durable.',
            buckets: LATENCY_BUCKETS,
            registers,
          })
        : new Histogram({
            name: 'dualstream_train_step_seconds',
            help: 'Wall time of one RL step (sampling, judging, the pipeline, the learner update).',
            buckets: LATENCY_BUCKETS,
            registers,
          })
    if (options.source === 'train') {
      this.learner = new Gauge({
        name: 'dualstream_learner',
        help: 'The learner’s latest update: loss, clip_fraction, mean_ratio, grad_norm.',
        labelNames: ['stat'],
        registers,
      })
    }

    this.droppedFrames = new Counter({
      name: 'dualstream_telemetry_dropped_frames_total',
      help: 'Telemetry frames dropped from slow clients’ queues (all clients).',
      registers,
    })
    new Gauge({
      name: 'dualstream_telemetry_clients',
      help: 'Connected /telemetry clients.',
      registers,
      collect() {
        this.set(hub.clientInfo().length)
      },
    })
    new Gauge({
      name: 'dualstream_telemetry_client_dropped_frames',
      help: 'Frames each connected /telemetry client lost so far (the client label is its connection number).',
      labelNames: ['client'],
      registers,
      collect() {
        this.reset()
        for (const client of hub.clientInfo()) this.set({ client: String(client.id) }, client.dropped)
      },
    })
    new Gauge({
      name: 'dualstream_telemetry_client_queued_frames',
      help: 'Frames waiting in each connected /telemetry client’s queue.',
      labelNames: ['client'],
      registers,
      collect() {
        this.reset()
        for (const client of hub.clientInfo()) this.set({ client: String(client.id) }, client.queued)
      },
    })
    if (options.processMetrics !== false) collectDefaultMetrics({ register: this.registry })
  }

  /** The trainer side of a server in `/metrics`: its policy version and the data-parallel ranks connected. */
  watchTrainers(read: () => { policyVersion: number | undefined; trainerRanks: { world: number | undefined; ranks: number[] } }): void {
    const registers = [this.registry]
    new Gauge({
      name: 'dualstream_trainer_policy_version',
      help: 'The newest policyVersion a trainer reported (0 before one did).',
      registers,
      collect() {
        this.set(read().policyVersion ?? 0)
      },
    })
    new Gauge({
      name: 'dualstream_trainer_ranks',
      help: 'Trainer connections (data-parallel ranks) connected, and the world they belong to.',
      labelNames: ['of'],
      registers,
      collect() {
        const { trainerRanks } = read()
        this.set({ of: 'connected' }, trainerRanks.ranks.length)
        this.set({ of: 'world' }, trainerRanks.world ?? 0)
      },
    })
  }

  /**
   * The producers' side of a server in `/metrics`, read at each scrape: the bytes of frames
   * read and not yet answered against their bound (`--max-ingest-bytes`), how often reading
   * stopped for it, and how often a producer went past its credit.
   */
  watchIngest(read: () => { ingestBytes: { held: number; max: number; holds: number }; pauses: number }): void {
    const registers = [this.registry]
    new Gauge({
      name: 'dualstream_ingest_bytes',
      help: 'Bytes of producer frames read and not yet answered (of="held"), and their bound --max-ingest-bytes (of="max").',
      labelNames: ['of'],
      registers,
      collect() {
        const { held, max } = read().ingestBytes
        this.set({ of: 'held' }, held)
        this.set({ of: 'max' }, max)
      },
    })
    runningTotal(
      registers,
      'dualstream_ingest_holds_total',
      'Times the bytes in flight went above --max-ingest-bytes and no producer was read.',
      () => read().ingestBytes.holds,
    )
    runningTotal(registers, 'dualstream_producer_pauses_total', 'Times a producer went past its credit and its socket was paused.', () => read().pauses)
  }

  /** A cluster node's roles and the nodes of its run. */
  watchCluster(read: () => { roles: { sequencer: boolean; partitions: number[] }; nodes: number }): void {
    const registers = [this.registry]
    new Gauge({
      name: 'dualstream_cluster_sequencer',
      help: "1 while this cluster node holds the sequencer's lease, else 0.",
      registers,
      collect() {
        this.set(read().roles.sequencer ? 1 : 0)
      },
    })
    new Gauge({
      name: 'dualstream_cluster_partitions_owned',
      help: 'Partitions whose lease this cluster node holds (it forms their groups).',
      registers,
      collect() {
        this.set(read().roles.partitions.length)
      },
    })
    new Gauge({
      name: 'dualstream_cluster_nodes',
      help: "Nodes of this node's cluster run that reported in the last two lease times.",
      registers,
      collect() {
        this.set(read().nodes)
      },
    })
  }

  /**
   * Gauges of the data folder's disk, read at each scrape: `dualstream_disk_free_bytes`,
   * `dualstream_disk_reserve_bytes` and `dualstream_disk_full` (1 while new rollouts are
   * refused for lack of space).
   */
  watchDisk(read: () => { free: number; reserve: number; full: boolean }): void {
    const registers = [this.registry]
    new Gauge({
      name: 'dualstream_disk_free_bytes',
      help: "Free bytes on the data folder's filesystem (the last statfs less what was written since).",
      registers,
      collect() {
        this.set(read().free)
      },
    })
    new Gauge({
      name: 'dualstream_disk_reserve_bytes',
      help: 'Free bytes that must remain (--disk-reserve): below them new rollouts are refused.',
      registers,
      collect() {
        this.set(read().reserve)
      },
    })
    new Gauge({
      name: 'dualstream_disk_full',
      help: "1 while the data folder's disk is at its reserve and new rollouts are refused, else 0.",
      registers,
      collect() {
        this.set(read().full ? 1 : 0)
      },
    })
  }

  /** A frame was dropped from a client's queue. */
  readonly countDropped = (): void => this.droppedFrames.inc()

  /** Updates the gauges and the histogram from a batch frame. */
  observe(frame: BatchFrame): void {
    this.step.set(frame.step)
    const set = (gauge: Gauge<string>, labels: Record<string, string>, value: number | null) => {
      // no data: the series goes away rather than showing a stale figure
      if (value === null) gauge.remove(labels)
      else gauge.set(labels, value)
    }
    for (const [constraint, c] of Object.entries(frame.constraints)) {
      this.lambda.set({ constraint }, c.lambda)
      set(this.constraintMean, { constraint }, c.mean)
      set(this.violation, { constraint }, c.violation)
      // a batch without a value says nothing: the run goes on as it was
      if (c.violation !== null) {
        const run = c.violation > 0 ? (this.violatedRun.get(constraint) ?? 0) + 1 : 0
        this.violatedRun.set(constraint, run)
        this.violatedSteps.set({ constraint }, run)
      }
      set(this.sampleViolationRate, { constraint }, c.sampleViolationRate)
    }
    for (const [objective, mean] of Object.entries(frame.objectives)) set(this.objectiveMean, { objective }, mean)
    for (const [channel, f] of Object.entries(frame.fracZeroStd)) this.fracZeroStd.set({ channel }, f)
    set(this.advantage, { stat: 'mean' }, frame.advantage.mean)
    set(this.advantage, { stat: 'std' }, frame.advantage.std)
    if (frame.throughput.rolloutsPerSec !== null) this.throughput.set(frame.throughput.rolloutsPerSec)
    if (frame.latencyMs !== null) this.latency.observe(frame.latencyMs / 1000)
    if (this.learner !== undefined && frame.learner !== undefined) {
      set(this.learner, { stat: 'loss' }, frame.learner.loss)
      set(this.learner, { stat: 'clip_fraction' }, frame.learner.clipFraction)
      set(this.learner, { stat: 'mean_ratio' }, frame.learner.meanRatio)
      set(this.learner, { stat: 'grad_norm' }, frame.learner.gradNorm)
    }
  }

  get contentType(): string {
    return this.registry.contentType
  }

  /** The exposition text. */
  text(): Promise<string> {
    return this.registry.metrics()
  }
}

/** A counter of a running total read at each scrape (a prom-client Counter only goes up): advanced by the difference, never back. */
function runningTotal(registers: Registry[], name: string, help: string, read: () => number): void {
  let seen = 0
  new Counter({
    name,
    help,
    registers,
    collect() {
      const now = read()
      if (now > seen) this.inc(now - seen)
      seen = Math.max(seen, now)
    },
  })
}
