/**
 * The frames of `/telemetry` (DESIGN §6), built by pure functions: a `hello` on connect, then
 * one `batch` frame per scored batch, from the durable engine (`serve`) or from the built-in
 * training's step reports (`train`). Numbers that carry no data (NaN, ±Infinity) are `null`,
 * so the JSON and MessagePack forms say the same thing.
 */
import type { NodePicture } from '../../src/state/cluster/clusterRoles.js'
import type { Config } from '../../src/core/config.js'
import type { EngineStats } from '../../src/state/durableEngine.js'
import { batchSummary, finiteOrNull, type BatchSummary } from '../../src/state/batchRecord.js'
import type { ScoredBatch } from '../../src/core/types.js'

/**
 * One sample rollout as the dashboard's picture draws it (`streams/dashboard/rollout.js`): the
 * scene's objects on a square grid, the question about two of them along an axis, the claims
 * (each true or not of the scene), the answer and the judges' scores. Telemetry declares the
 * shape it shows; a task that wants its rollouts drawn describes them in it (SpatialGrid's
 * `describeRollout` does).
 */
export interface SamplePicture {
  readonly grid: number
  readonly objects: readonly { readonly type: number; readonly name: string; readonly x: number; readonly y: number }[]
  readonly question: { readonly a: string; readonly b: string; readonly axis: 'x' | 'y'; readonly text: string }
  readonly claims: readonly { readonly subject: string; readonly axis: 'x' | 'y'; readonly value: number; readonly true: boolean }[]
  readonly answer: string
  readonly correctAnswer: string
  readonly judgement: { readonly accuracy: number; readonly grounding: number; readonly consistency: number }
  /** The rollout in one line of text. */
  readonly text: string
}

/** What a training step's learner reports (loss and the PPO-style diagnostics). */
export interface LearnerFigures {
  loss: number
  clipFraction: number
  meanRatio: number
  gradNorm: number
}

/** A batch's metrics in the paper's terms. */
export interface RunMetrics {
  accuracy: number
  inconsistencyRate: number
  grounding: number
}

/** Bumped when a field changes meaning or goes away (new fields do not bump it). */
export const TELEMETRY_VERSION = 1

/** Where the frames come from. */
export type TelemetrySource = 'serve' | 'train'

/** The part of the engine config a viewer needs to read the figures. */
export interface TelemetryConfig {
  groupSize: number
  batchGroups: number
  maxStaleness: number | null
  aggregation: string
  objectives: { channel: string; weight: number }[]
  constraints: { channel: string; sense: '>=' | '<='; threshold: number; sampleThreshold: number; rule: string; lr: number | null; max: number | null }[]
}

/** One constraint in one batch. */
export interface ConstraintFigures {
  sense: '>=' | '<='
  threshold: number
  /** J: the batch (or pooled window) mean; null when the batch had no value. */
  mean: number | null
  /** e = τ − J (`>=`) or J − τ (`<=`): positive means violated. */
  violation: number | null
  /** Share of this batch's values on the wrong side of `sampleThreshold`. */
  sampleViolationRate: number | null
  sampleThreshold: number
  /** Valid values in this batch. */
  count: number
  /** λ after this batch's dual update, and before it. */
  lambda: number
  lambdaBefore: number
}

/** Running totals (since the data folder was created for `serve`, since start for `train`). */
export interface TelemetryCounts {
  /** Rollouts accepted. */
  ingested: number
  /** Items refused at ingest, all reasons. */
  rejected: number
  rejectedByReason: Record<string, number>
  /** Rollouts whose id was seen before (acknowledged, not counted). */
  duplicate: number
  stale: number
  /** Groups dropped incomplete, and the rollouts in them. */
  droppedGroups: number
  droppedGroupRollouts: number
  batches: number
  rolloutsInBatches: number
  /** Rollouts inside the pipeline (open groups, the batch being filled). */
  pending: number
  /** Batches not yet acknowledged by a trainer. */
  outbox: number
}

export interface TelemetryRates {
  /** Rollouts per second into batches, over the last few seconds. */
  rolloutsPerSec: number | null
  /** Rollouts per second accepted at ingest. */
  ingestPerSec: number | null
  /** Batches (steps) per second. */
  batchesPerSec: number | null
}

/** One per scored batch. */
export interface BatchFrame {
  type: 'batch'
  step: number
  /** Wall clock when the frame was built (ms since the epoch). */
  ts: number
  rollouts: number
  groups: number
  partialGroups: number
  /** Mean of each objective channel over the batch. */
  objectives: Record<string, number | null>
  constraints: Record<string, ConstraintFigures>
  /** Per channel, the share of groups that carried no signal. */
  fracZeroStd: Record<string, number>
  advantage: { mean: number | null; std: number | null }
  counts: TelemetryCounts
  throughput: TelemetryRates
  /** serve: the newest rollout's ingest to the batch being durable; train: the step's wall time (ms). */
  latencyMs: number | null
  /** Training only: the policy version after this step, the learner's figures, the batch's metrics. */
  policyVersion?: number
  learner?: { loss: number | null; clipFraction: number | null; meanRatio: number | null; gradNorm: number | null }
  metrics?: { accuracy: number | null; inconsistencyRate: number | null; grounding: number | null }
  /** Training only, a few times a second at most: one rollout of the batch, described for the picture. */
  sample?: SamplePicture
}

/** One series' points in step order: each a real step, its wall time (ms; null if unknown) and value. */
export interface SeriesPoints {
  steps: number[]
  ts: (number | null)[]
  values: number[]
}

/** The downsampled history of a run (or of a range of it): see runHistory.ts. */
export interface HistoryOverview {
  /** Most points per series. */
  maxPoints: number
  /** Steps summarised. */
  steps: number
  first: number | null
  last: number | null
  series: Record<string, SeriesPoints>
}

/** The first frame on every connection. */
export interface HelloFrame {
  type: 'hello'
  version: number
  source: TelemetrySource
  config: TelemetryConfig
  step: number
  lambda: Record<string, number>
  /** The latest counts (null before anything happened in a training run). */
  counts: TelemetryCounts | null
  /** The last batch frames, oldest first, without their samples, so that a page opened mid-run has charts at once. */
  history: BatchFrame[]
  /**
   * The whole run so far, every series downsampled by min/max (runHistory.ts): a page opened at
   * any step, or after a restart, draws the run from step 1 (then `history`, then live frames).
   */
  overview: HistoryOverview
  /** The latest sample rollout, if any. */
  sample: SamplePicture | null
  /** What the training is doing (`warm start`, `RL`, `done`); undefined for serve. */
  phase?: string
  /** A cluster node (`serve --nats`): the run, this node, its roles and the sequencer's node. */
  cluster?: ClusterPicture
  limits: { queue: number; history: number }
}

/** A change of phase in a training run (warm start progress, RL, done). */
export interface StatusFrame {
  type: 'status'
  phase: string
  done?: number
  total?: number
}

/** A cluster node as its dashboard shows it (in the hello, and a `cluster` frame when it changes): the run, the node, its roles, the sequencer's node, the nodes up. */
export type ClusterPicture = NodePicture

/** A cluster node's roles or the sequencer changed. */
export type ClusterFrame = { type: 'cluster' } & ClusterPicture

/** Sent to one client after its queue drained, when it lost frames: how many so far. */
export interface DroppedFrame {
  type: 'dropped'
  frames: number
}

export type TelemetryFrame = HelloFrame | BatchFrame | StatusFrame | ClusterFrame | DroppedFrame

const nullable = (x: number | undefined): number | null => (x === undefined ? null : finiteOrNull(x))

/** The viewer's view of an engine config. */
export function telemetryConfig(config: Config): TelemetryConfig {
  return {
    groupSize: config.groupSize,
    batchGroups: config.batchGroups,
    maxStaleness: config.maxStaleness ?? null,
    aggregation: config.aggregation,
    objectives: config.objectives.map((o) => ({ channel: o.channel, weight: o.weight })),
    constraints: config.constraints.map((c) => ({
      channel: c.channel,
      sense: c.sense,
      threshold: c.threshold,
      sampleThreshold: c.sampleThreshold,
      rule: c.dual.rule,
      lr: 'lr' in c.dual ? c.dual.lr : null,
      max: finiteOrNull(c.dual.max),
    })),
  }
}

/** The counts of an engine's stats. */
export function engineCounts(stats: EngineStats): TelemetryCounts {
  const rejectedByReason = { ...stats.ingest.rejected }
  return {
    ingested: stats.ingest.ingested,
    rejected: Object.values(rejectedByReason).reduce((a, b) => a + b, 0),
    rejectedByReason,
    duplicate: stats.ingest.duplicate,
    stale: stats.pipeline.stale,
    droppedGroups: stats.pipeline.incompleteGroups,
    droppedGroupRollouts: stats.pipeline.incompleteGroupRollouts,
    batches: stats.pipeline.batches,
    rolloutsInBatches: stats.pipeline.rolloutsInBatches,
    pending: stats.pendingRollouts,
    outbox: stats.outbox,
  }
}

/**
 * Rates over a sliding window of wall time: each `update` gives the running totals at `now`
 * and gets the per-second rates since the oldest sample still in the window (null until two
 * samples are at least `minSpanMs` apart).
 */
export class RateMeter {
  private readonly samples: { t: number; rollouts: number; ingested: number; batches: number }[] = []

  constructor(
    private readonly windowMs = 3000,
    private readonly minSpanMs = 200,
  ) {}

  update(now: number, totals: { rollouts: number; ingested: number; batches: number }): TelemetryRates {
    this.samples.push({ t: now, ...totals })
    // keep one sample at or beyond the window's start, so the span covers the whole window
    while (this.samples.length > 2 && now - this.samples[1].t >= this.windowMs) this.samples.shift()
    const first = this.samples[0]
    const span = (now - first.t) / 1000
    if (span * 1000 < this.minSpanMs) return { rolloutsPerSec: null, ingestPerSec: null, batchesPerSec: null }
    return {
      rolloutsPerSec: (totals.rollouts - first.rollouts) / span,
      ingestPerSec: (totals.ingested - first.ingested) / span,
      batchesPerSec: (totals.batches - first.batches) / span,
    }
  }
}

/** The batch figures every frame carries, from a scored batch. */
/** The figures of a batch summary as a frame shows them: counts, objectives, each constraint with its config, advantages. */
export function batchFigures(
  summary: BatchSummary,
  config: Config,
): Pick<BatchFrame, 'step' | 'rollouts' | 'groups' | 'partialGroups' | 'objectives' | 'constraints' | 'fracZeroStd' | 'advantage'> {
  const constraints: Record<string, ConstraintFigures> = {}
  for (const spec of config.constraints) {
    const measured = summary.constraints[spec.channel]
    const lambda = summary.lambda[spec.channel]
    constraints[spec.channel] = {
      sense: spec.sense,
      threshold: spec.threshold,
      mean: measured?.mean ?? null,
      violation: measured?.violation ?? null,
      sampleViolationRate: measured?.sampleViolationRate ?? null,
      sampleThreshold: spec.sampleThreshold,
      count: measured?.count ?? 0,
      lambda: lambda?.after ?? 0,
      lambdaBefore: lambda?.before ?? 0,
    }
  }
  return {
    step: summary.step,
    rollouts: summary.rollouts,
    groups: summary.groups,
    partialGroups: summary.partialGroups,
    objectives: summary.objectives,
    constraints,
    fracZeroStd: { ...summary.fracZeroStd },
    advantage: { mean: summary.advantageMean, std: summary.advantageStd },
  }
}

/** A `serve` frame: a committed batch, the engine's stats right after, and the rates. */
export function serveBatchFrame(input: {
  summary: BatchSummary
  latencyMs: number
  counts: TelemetryCounts
  config: Config
  now: number
  rates: TelemetryRates
}): BatchFrame {
  return {
    type: 'batch',
    ...batchFigures(input.summary, input.config),
    ts: input.now,
    counts: input.counts,
    throughput: input.rates,
    latencyMs: finiteOrNull(input.latencyMs),
  }
}

/** What the training frame needs of a step report (the trainer's `StepReport`). */
export interface StepFigures {
  step: number
  policyVersion: number
  batch: ScoredBatch
  learner: LearnerFigures
  metrics: RunMetrics
  ms: number
}

/** A `train` frame: one RL step, with the learner's figures and, when given, the sample rollout. */
export function trainBatchFrame(input: {
  report: StepFigures
  counts: TelemetryCounts
  config: Config
  now: number
  rates: TelemetryRates
  sample?: SamplePicture
}): BatchFrame {
  const { report } = input
  const frame: BatchFrame = {
    type: 'batch',
    ...batchFigures(batchSummary(report.batch), input.config),
    ts: input.now,
    counts: input.counts,
    throughput: input.rates,
    latencyMs: finiteOrNull(report.ms),
    policyVersion: report.policyVersion,
    learner: {
      loss: nullable(report.learner.loss),
      clipFraction: nullable(report.learner.clipFraction),
      meanRatio: nullable(report.learner.meanRatio),
      gradNorm: nullable(report.learner.gradNorm),
    },
    metrics: {
      accuracy: nullable(report.metrics.accuracy),
      inconsistencyRate: nullable(report.metrics.inconsistencyRate),
      grounding: nullable(report.metrics.grounding),
    },
  }
  // the trainer's step (it counts across resumed runs, as the batch's does)
  frame.step = report.step
  if (input.sample !== undefined) frame.sample = input.sample
  return frame
}
