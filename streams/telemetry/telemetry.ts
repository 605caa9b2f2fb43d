/**
 * Live telemetry (DESIGN §6) for both kinds of run: `EngineTelemetry` follows a durable
 * engine (`serve`: frames from `engine.committed` and `engine.stats()`), `TrainingTelemetry`
 * follows the built-in training (frames from its step reports, with the learner's figures
 * and, a few times a second at most, a sample rollout for the picture). Both publish through
 * one hub and one Prometheus registry, and mount the same endpoints on a server:
 * `/telemetry` (WebSocket, viewer token), `/metrics`, `/telemetry/auth` and the dashboard.
 */
import type { Subscription } from 'rxjs'
import type { Config } from '../../src/core/config.js'
import type { CommittedBatch } from '../../src/state/durableEngine.js'
import type { Engine } from '../../src/state/engine.js'
import type { BatchSummary } from '../../src/state/batchRecord.js'
import type { RoleTokens } from '../auth.js'
import {
  RateMeter,
  batchFigures,
  engineCounts,
  serveBatchFrame,
  telemetryConfig,
  trainBatchFrame,
  type BatchFrame,
  type SamplePicture,
  type StatusFrame,
  type ClusterFrame,
  type ClusterPicture,
  type StepFigures,
  type TelemetryCounts,
  type TelemetrySource,
} from './frames.js'
import { TelemetryHub, type HubOptions } from './hub.js'
import { TelemetryMetrics } from './metrics.js'
import { authRoute, dashboardRoutes, historyRoute, metricsRoute, type Mountable } from './routes.js'
import { RunHistory, seriesOfFrame, type HistoryOverview, type HistoryQuery, type HistorySnapshot } from './runHistory.js'

export type { HistoryQuery } from './runHistory.js'

/** Most points per series in a hello's whole-run overview (enough for a chart as wide as a screen). */
export const HELLO_OVERVIEW_POINTS = 1000

export interface TelemetryOptions extends Partial<Pick<HubOptions, 'queueLimit' | 'highWaterBytes' | 'historyLimit'>> {
  /** Most points per series kept for the whole run (default 2000). */
  historyPoints?: number
  /** `serve`: save the whole-run history in the data folder every this many steps (default `HISTORY_SAVE_EVERY`). */
  historySaveEvery?: number
  /** Node's process metrics in `/metrics` (default true). */
  processMetrics?: boolean
  /** Wall clock (ms); injectable for tests. */
  now?: () => number
}

interface RunState {
  step: number
  lambda: Record<string, number>
  counts: TelemetryCounts | null
  phase?: string
}

const zeroCounts = (): TelemetryCounts => ({
  ingested: 0,
  rejected: 0,
  rejectedByReason: {},
  duplicate: 0,
  stale: 0,
  droppedGroups: 0,
  droppedGroupRollouts: 0,
  batches: 0,
  rolloutsInBatches: 0,
  pending: 0,
  outbox: 0,
})

/** The hub and the metrics of one run, and the routes that expose them. */
export class Telemetry {
  readonly hub: TelemetryHub
  readonly metrics: TelemetryMetrics
  protected readonly now: () => number
  protected readonly rates = new RateMeter()
  /** The last batch frame published. */
  latest: BatchFrame | undefined
  /** The whole run's series, downsampled (the hello's `overview`, `/history`). */
  history: RunHistory
  private cluster: (() => ClusterPicture) | undefined

  constructor(
    readonly source: TelemetrySource,
    readonly config: Config,
    state: () => RunState,
    options: TelemetryOptions = {},
  ) {
    this.now = options.now ?? Date.now
    this.history = new RunHistory({ maxPoints: options.historyPoints })
    // the config part of the hello is the same for every connection
    const viewerConfig = telemetryConfig(config)
    this.hub = new TelemetryHub({
      queueLimit: options.queueLimit,
      highWaterBytes: options.highWaterBytes,
      historyLimit: options.historyLimit,
      hello: () => {
        const { step, lambda, counts, phase } = state()
        const overview = this.history.query({ points: HELLO_OVERVIEW_POINTS })
        const cluster = this.cluster?.()
        return {
          source,
          config: viewerConfig,
          step,
          lambda,
          counts,
          overview,
          ...(phase === undefined ? {} : { phase }),
          ...(cluster === undefined ? {} : { cluster }),
        }
      },
      onDropped: () => this.metrics.countDropped(),
    })
    this.metrics = new TelemetryMetrics({
      source,
      config,
      hub: this.hub,
      counts: () => state().counts ?? zeroCounts(),
      state: () => state(),
      processMetrics: options.processMetrics,
    })
  }

  /**
   * A cluster node: `read` tells the node, its roles and the sequencer's node; the hello carries
   * it, `/metrics` has it, and `clusterChanged()` sends it to every viewer.
   */
  showCluster(read: () => ClusterPicture): void {
    this.cluster = read
    this.metrics.watchCluster(read)
  }

  /** Sends the cluster picture to every viewer (its roles or the sequencer changed). */
  clusterChanged(): void {
    if (this.cluster !== undefined) this.publish({ type: 'cluster', ...this.cluster() })
  }

  /** Sends a frame to every viewer and updates the metrics. */
  publish(frame: BatchFrame | StatusFrame | ClusterFrame): void {
    this.hub.publish(frame)
    if (frame.type === 'batch') {
      this.latest = frame
      this.metrics.observe(frame)
      this.history.add(frame.step, frame.ts, seriesOfFrame(frame))
    }
  }

  /** The run's series for `/history`: from the whole-run history kept in memory. */
  queryHistory(query: HistoryQuery): Promise<HistoryOverview> {
    return Promise.resolve(this.history.query(query))
  }

  /**
   * Serves `/telemetry` (WebSocket, role viewer: the server checks the token at the upgrade),
   * `/metrics`, `/telemetry/auth` and the dashboard (`/`, its files, uPlot under `/assets/`).
   */
  mount(target: Mountable, tokens: RoleTokens = {}): void {
    target.addWebSocketEndpoint('/telemetry', { role: 'viewer', connect: (ws, format) => this.hub.connect(ws, format) })
    target.addHttpRoute('/metrics', metricsRoute(this.metrics))
    target.addHttpRoute(
      '/history',
      historyRoute((query) => this.queryHistory(query), tokens, this.history.maxPoints),
    )
    target.addHttpRoute('/telemetry/auth', authRoute(tokens))
    for (const [path, route] of dashboardRoutes()) target.addHttpRoute(path, route)
  }

  /** Closes the viewers' connections. */
  close(): void {
    this.hub.close()
  }
}

/** Where `serve` keeps the whole-run history in its data folder, and how often it is saved (steps). */
const HISTORY_KEY = 'history'
export const HISTORY_SAVE_EVERY = 1000

/** `/history` ranges of at most this many steps are read exactly from the data folder (longer ones from memory). */
export const EXACT_HISTORY_STEPS = 50_000

/** A saved history, or undefined when there is none or it cannot be read (then it is rebuilt from the steps). */
function restoreSaved(saved: unknown): RunHistory | undefined {
  if (saved === undefined) return undefined
  try {
    return RunHistory.restore(saved as HistorySnapshot)
  } catch {
    return undefined
  }
}

/** A batch summary as the data folder keeps it: with its commit time. */
type StoredSummary = BatchSummary & { ts?: number }

/** Adds committed batch summaries (as `EngineStore.summaries()` reads them) to a history. */
export function addSummaries(history: RunHistory, summaries: Iterable<{ summary: unknown }>, config: Config): void {
  for (const { summary } of summaries) {
    const stored = summary as StoredSummary
    history.add(stored.step, stored.ts ?? null, seriesOfFrame(batchFigures(stored, config)))
  }
}

/** Telemetry of a durable engine: one frame per committed batch. */
export class EngineTelemetry extends Telemetry {
  private readonly subscription: Subscription
  private readonly historySaveEvery: number

  constructor(
    private readonly engine: Engine,
    options: TelemetryOptions = {},
  ) {
    super(
      'serve',
      engine.config,
      () => {
        const stats = engine.stats()
        return { step: stats.step, lambda: stats.lambda, counts: engineCounts(stats) }
      },
      options,
    )
    // the whole run: the history saved last (every HISTORY_SAVE_EVERY steps and at a clean stop),
    // then the committed steps after it, so a restart is quick however long the run; live-only
    // series start now
    this.historySaveEvery = options.historySaveEvery ?? HISTORY_SAVE_EVERY
    const saved = restoreSaved(engine.store.auxiliary(HISTORY_KEY))
    if (saved !== undefined) this.history = saved
    addSummaries(this.history, engine.store.summaries((this.history.lastStep ?? 0) + 1), this.config)
    this.subscription = engine.committed.subscribe((committed) => this.onCommitted(engine, committed))
    const disk = engine.disk
    if (disk !== undefined) this.metrics.watchDisk(() => disk.state)
  }

  /**
   * `/history` of a durable engine: every committed step in the range read from the data folder
   * (exact, then thinned to `points` by min/max), with the live-only series (throughput,
   * latency: not stored) from memory since the process started.
   */
  override queryHistory(query: HistoryQuery): Promise<HistoryOverview> {
    const points = query.points ?? this.history.maxPoints
    const span = (query.to ?? this.engine.stats().step) - (query.from ?? 1) + 1
    // a long range would take seconds to read (≈ 14 µs a step): the whole-run history in memory answers it
    if (span > EXACT_HISTORY_STEPS) return super.queryHistory(query)
    const exact = new RunHistory({ maxPoints: points })
    addSummaries(exact, this.engine.store.summaries(query.from, query.to), this.config)
    const stored = exact.query({ series: query.series })
    const live = this.history.query({ ...query, points })
    for (const [name, series] of Object.entries(live.series)) stored.series[name] ??= series
    return Promise.resolve(stored)
  }

  private onCommitted(engine: Engine, { summary, latencyMs }: CommittedBatch): void {
    const counts = engineCounts(engine.stats())
    const now = this.now()
    const rates = this.rates.update(now, { rollouts: counts.rolloutsInBatches, ingested: counts.ingested, batches: counts.batches })
    this.publish(serveBatchFrame({ summary, latencyMs, counts, config: this.config, now, rates }))
    if (summary.step % this.historySaveEvery === 0) void this.saveHistory()
  }

  /**
   * Saves the whole-run history in the data folder (every `HISTORY_SAVE_EVERY` steps, and at a
   * clean stop), so a restart reads only the steps committed after it. Best effort: a failed
   * write only makes the next start read more steps (and a failed engine writes nothing).
   */
  saveHistory(): Promise<void> {
    if (this.engine.error !== undefined) return Promise.resolve()
    return this.engine.store.saveAuxiliary(HISTORY_KEY, this.history.snapshot()).catch(() => {})
  }

  override close(): void {
    this.subscription.unsubscribe()
    super.close()
  }
}

export interface TrainingTelemetryOptions extends TelemetryOptions {
  /** Least time between two sample rollouts in the frames (default 250 ms: at most 4 a second). */
  sampleEveryMs?: number
  /** Least time between two warm-start status frames (default 200 ms). */
  statusEveryMs?: number
  /** The whole-run history saved with the checkpoint being resumed. */
  history?: HistorySnapshot
}

/** What a step report gives (the trainer's `StepReport`). */
export interface StepReportLike extends StepFigures {
  sample: () => SamplePicture
}

/** Telemetry of the built-in training: one frame per RL step. */
export class TrainingTelemetry extends Telemetry {
  // a holder: the base class reads the state while it is being constructed
  private readonly run: { state: RunState }
  private readonly counts = zeroCounts()
  private readonly sampleEveryMs: number
  private readonly statusEveryMs: number
  private lastSample = -Infinity
  private lastStatus = -Infinity

  constructor(config: Config, initial: { step: number; lambda: Record<string, number> }, options: TrainingTelemetryOptions = {}) {
    const run = { state: { step: initial.step, lambda: { ...initial.lambda }, counts: null, phase: 'starting' } as RunState }
    super('train', config, () => run.state, options)
    this.run = run
    if (options.history !== undefined) this.history = RunHistory.restore(options.history)
    this.sampleEveryMs = options.sampleEveryMs ?? 250
    this.statusEveryMs = options.statusEveryMs ?? 200
  }

  /** Publishes the run's phase; progress within a phase (`done` of `total`) is throttled, its first and last are not. */
  status(phase: string, done?: number, total?: number): void {
    const now = this.now()
    const edge = phase !== this.run.state.phase || done === undefined || done === total
    if (!edge && now - this.lastStatus < this.statusEveryMs) return
    this.lastStatus = now
    this.run.state.phase = phase
    const frame: StatusFrame = { type: 'status', phase }
    if (done !== undefined) frame.done = done
    if (total !== undefined) frame.total = total
    this.publish(frame)
  }

  /** One RL step: counts, rates, a frame (with a sample rollout when the last one is old enough). */
  onStep(report: StepReportLike): void {
    const now = this.now()
    const c = this.counts
    c.ingested += report.batch.rolloutCount
    c.batches++
    c.rolloutsInBatches += report.batch.rolloutCount
    const rates = this.rates.update(now, { rollouts: c.rolloutsInBatches, ingested: c.ingested, batches: c.batches })
    let sample: SamplePicture | undefined
    if (now - this.lastSample >= this.sampleEveryMs) {
      this.lastSample = now
      sample = report.sample()
    }
    const counts = { ...c, rejectedByReason: {} }
    const frame = trainBatchFrame({ report, counts, config: this.config, now, rates, sample })
    this.run.state = { step: report.step, lambda: Object.fromEntries(Object.entries(frame.constraints).map(([k, v]) => [k, v.lambda])), counts, phase: 'RL' }
    this.publish(frame)
  }
}
