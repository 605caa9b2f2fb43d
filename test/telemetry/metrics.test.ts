import t from 'tap'
import { RunHistory } from '../../streams/telemetry/runHistory.js'
import { parseConfig } from '../../src/core/config.js'
import type { BatchFrame, TelemetryCounts } from '../../streams/telemetry/frames.js'
import { TelemetryHub } from '../../streams/telemetry/hub.js'
import { TelemetryMetrics } from '../../streams/telemetry/metrics.js'

const config = parseConfig({
  groupSize: 2,
  batchGroups: 1,
  objectives: [{ channel: 'acc' }],
  constraints: [{ channel: 'judge', sense: '>=', threshold: 0.9, dual: { rule: 'sgd', lr: 0.5 } }],
})

const zero = (): TelemetryCounts => ({
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

/** One sample's value from the exposition text (undefined when the series is absent). */
function value(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `))
  return line === undefined ? undefined : Number(line.slice(series.length + 1))
}

const frame = (over: Partial<BatchFrame> = {}): BatchFrame => ({
  type: 'batch',
  step: 4,
  ts: 0,
  rollouts: 2,
  groups: 1,
  partialGroups: 0,
  objectives: { acc: 0.75 },
  constraints: {
    judge: { sense: '>=', threshold: 0.9, mean: 0.5, violation: 0.4, sampleViolationRate: 0.5, sampleThreshold: 0.9, count: 2, lambda: 0.2, lambdaBefore: 0 },
  },
  fracZeroStd: { acc: 0.5, judge: 0 },
  advantage: { mean: 0, std: 1 },
  counts: zero(),
  throughput: { rolloutsPerSec: 1000, ingestPerSec: 1000, batchesPerSec: 10 },
  latencyMs: 30,
  ...over,
})

t.test('serve metrics: gauges from frames, counters from the running totals, the latency histogram', async (t) => {
  const counts = zero()
  const hub = new TelemetryHub({
    hello: () => ({ source: 'serve', config: {} as never, step: 0, lambda: {}, counts: null, overview: new RunHistory().overview() }),
  })
  const metrics = new TelemetryMetrics({
    source: 'serve',
    config,
    hub,
    counts: () => counts,
    state: () => ({ step: 2, lambda: { judge: 0.125 } }),
    processMetrics: false,
  })
  let text = await metrics.text()
  t.equal(value(text, 'dualstream_step'), 2, 'from the state before any batch')
  t.equal(value(text, 'dualstream_lambda{constraint="judge"}'), 0.125)
  t.equal(value(text, 'dualstream_constraint_threshold{constraint="judge",sense=">="}'), 0.9)
  t.equal(value(text, 'dualstream_rollouts_ingested_total'), 0)
  t.equal(value(text, 'dualstream_telemetry_clients'), 0)
  t.notMatch(text, 'process_cpu', 'no process metrics when asked not to')
  t.notMatch(text, 'dualstream_learner')
  t.equal(value(text, 'dualstream_constraint_violated_steps{constraint="judge"}'), 0, 'no violation before any batch')
  t.notMatch(text, 'dualstream_lambda_max{', 'no λmax series for a constraint without dual.max')

  metrics.observe(frame())
  Object.assign(counts, {
    ingested: 10,
    duplicate: 2,
    stale: 1,
    droppedGroups: 1,
    droppedGroupRollouts: 1,
    batches: 4,
    rolloutsInBatches: 8,
    pending: 2,
    outbox: 3,
    rejectedByReason: { rewards: 2 },
  })
  metrics.countDropped()
  text = await metrics.text()
  t.equal(value(text, 'dualstream_step'), 4)
  t.equal(value(text, 'dualstream_lambda{constraint="judge"}'), 0.2)
  t.equal(value(text, 'dualstream_constraint_mean{constraint="judge"}'), 0.5)
  t.equal(value(text, 'dualstream_constraint_violation{constraint="judge"}'), 0.4)
  t.equal(value(text, 'dualstream_constraint_sample_violation_rate{constraint="judge"}'), 0.5)
  t.equal(value(text, 'dualstream_objective_mean{objective="acc"}'), 0.75)
  t.equal(value(text, 'dualstream_frac_zero_std{channel="acc"}'), 0.5)
  t.equal(value(text, 'dualstream_advantage{stat="std"}'), 1)
  t.equal(value(text, 'dualstream_throughput_rollouts_per_second'), 1000)
  t.equal(value(text, 'dualstream_rollouts_ingested_total'), 10)
  t.equal(value(text, 'dualstream_rollouts_duplicate_total'), 2)
  t.equal(value(text, 'dualstream_rollouts_stale_total'), 1)
  t.equal(value(text, 'dualstream_incomplete_groups_total'), 1)
  t.equal(value(text, 'dualstream_incomplete_group_rollouts_total'), 1)
  t.equal(value(text, 'dualstream_batches_total'), 4)
  t.equal(value(text, 'dualstream_rollouts_in_batches_total'), 8)
  t.equal(value(text, 'dualstream_rollouts_rejected_total{reason="rewards"}'), 2)
  t.equal(value(text, 'dualstream_pending_rollouts'), 2)
  t.equal(value(text, 'dualstream_outbox_batches'), 3)
  t.equal(value(text, 'dualstream_telemetry_dropped_frames_total'), 1)
  t.equal(value(text, 'dualstream_batch_latency_seconds_count'), 1)
  t.equal(value(text, 'dualstream_batch_latency_seconds_bucket{le="0.05"}'), 1)
  t.equal(value(text, 'dualstream_batch_latency_seconds_bucket{le="0.025"}'), 0)

  // totals only move forward; a scrape without change adds nothing
  Object.assign(counts, { ingested: 15, rejectedByReason: { rewards: 3, id: 1 } })
  text = await metrics.text()
  t.equal(value(text, 'dualstream_rollouts_ingested_total'), 15)
  t.equal(value(text, 'dualstream_rollouts_rejected_total{reason="rewards"}'), 3)
  t.equal(value(text, 'dualstream_rollouts_rejected_total{reason="id"}'), 1)
  text = await metrics.text()
  t.equal(value(text, 'dualstream_rollouts_ingested_total'), 15)

  // a batch without data for a figure drops that series rather than keeping a stale value
  metrics.observe(
    frame({
      objectives: { acc: null },
      constraints: { judge: { ...frame().constraints.judge, mean: null, violation: null, sampleViolationRate: null } },
      advantage: { mean: null, std: null },
      throughput: { rolloutsPerSec: null, ingestPerSec: null, batchesPerSec: null },
      latencyMs: null,
    }),
  )
  text = await metrics.text()
  t.equal(value(text, 'dualstream_constraint_mean{constraint="judge"}'), undefined)
  t.equal(value(text, 'dualstream_objective_mean{objective="acc"}'), undefined)
  t.equal(value(text, 'dualstream_advantage{stat="mean"}'), undefined)
  t.equal(value(text, 'dualstream_throughput_rollouts_per_second'), 1000, 'the last known rate stays')
  t.equal(value(text, 'dualstream_batch_latency_seconds_count'), 1)
  t.equal(metrics.contentType, 'text/plain; version=0.0.4; charset=utf-8')
})

t.test('violated steps: consecutive batches with e > 0, back to 0 once met; λmax from the config', async (t) => {
  const bounded = parseConfig({
    groupSize: 2,
    batchGroups: 1,
    objectives: [{ channel: 'acc' }],
    constraints: [
      { channel: 'judge', sense: '>=', threshold: 0.9, dual: { rule: 'sgd', lr: 0.5, max: 5 } },
      { channel: 'length', sense: '<=', threshold: 100, dual: { rule: 'log', lr: 0.1 } },
      // a channel named like an Object.prototype member keeps its own count
      { channel: 'constructor', sense: '>=', threshold: 0.5, dual: { rule: 'pid', max: 2 } },
    ],
  })
  // the metrics ask the hub only for its clients
  const hub = { clientInfo: () => [] } as unknown as TelemetryHub
  const metrics = new TelemetryMetrics({ source: 'serve', config: bounded, hub, counts: zero, state: () => ({ step: 0, lambda: {} }), processMetrics: false })
  const figures = frame().constraints.judge
  const observe = (violation: Record<string, number | null>) =>
    metrics.observe(frame({ constraints: Object.fromEntries(Object.entries(violation).map(([c, e]) => [c, { ...figures, violation: e }])) }))
  const steps = async () => {
    const text = await metrics.text()
    return ['judge', 'length', 'constructor'].map((c) => value(text, `dualstream_constraint_violated_steps{constraint="${c}"}`))
  }

  let text = await metrics.text()
  t.equal(value(text, 'dualstream_lambda_max{constraint="judge"}'), 5)
  t.equal(value(text, 'dualstream_lambda_max{constraint="constructor"}'), 2)
  t.equal(value(text, 'dualstream_lambda_max{constraint="length"}'), undefined, 'an unbounded λ has no λmax series')
  t.same(await steps(), [0, 0, 0])

  observe({ judge: 0.4, length: -3, constructor: 0.1 })
  observe({ judge: 0.2, length: 1, constructor: 0.1 })
  observe({ judge: 0.1, length: 2, constructor: 0.1 })
  t.same(await steps(), [3, 2, 3], 'three violated batches in a row; length was met in the first')

  observe({ judge: null, length: 0, constructor: 0.2 })
  t.same(await steps(), [3, 0, 4], 'a batch without a value keeps the run; e = 0 is met')

  observe({ judge: 0.3, length: 5, constructor: -0.1 })
  t.same(await steps(), [4, 1, 0], 'met resets to 0')
  observe({ judge: -0.1, length: 5, constructor: 0.1 })
  t.same(await steps(), [0, 2, 1], 'and a new violation starts a new run')
  text = await metrics.text()
  t.equal(value(text, 'dualstream_lambda_max{constraint="judge"}'), 5, 'λmax stays whatever the frames say')
})

t.test('per-client telemetry gauges and the disk gauges, read at each scrape', async (t) => {
  const clients = [{ id: 3, dropped: 7, queued: 2 }]
  const hub = { clientInfo: () => clients } as unknown as TelemetryHub
  const metrics = new TelemetryMetrics({ source: 'serve', config, hub, counts: zero, state: () => ({ step: 0, lambda: {} }), processMetrics: false })
  const disk = { free: 5e9, reserve: 1e9, full: false }
  metrics.watchDisk(() => disk)
  let text = await metrics.text()
  t.equal(value(text, 'dualstream_telemetry_clients'), 1)
  t.equal(value(text, 'dualstream_telemetry_client_dropped_frames{client="3"}'), 7)
  t.equal(value(text, 'dualstream_telemetry_client_queued_frames{client="3"}'), 2)
  t.equal(value(text, 'dualstream_disk_free_bytes'), 5e9)
  t.equal(value(text, 'dualstream_disk_reserve_bytes'), 1e9)
  t.equal(value(text, 'dualstream_disk_full'), 0)
  clients.length = 0
  Object.assign(disk, { free: 1e9, full: true })
  text = await metrics.text()
  t.equal(value(text, 'dualstream_telemetry_client_queued_frames{client="3"}'), undefined, 'a client gone has no series')
  t.equal(value(text, 'dualstream_disk_full'), 1)
})

t.test('the trainer gauges: policy version and ranks', async (t) => {
  const hub = { clientInfo: () => [] } as unknown as TelemetryHub
  const metrics = new TelemetryMetrics({ source: 'serve', config, hub, counts: zero, state: () => ({ step: 0, lambda: {} }), processMetrics: false })
  const health: { policyVersion: number | undefined; trainerRanks: { world: number | undefined; ranks: number[] } } = {
    policyVersion: undefined,
    trainerRanks: { world: undefined, ranks: [] },
  }
  metrics.watchTrainers(() => health)
  let text = await metrics.text()
  t.equal(value(text, 'dualstream_trainer_policy_version'), 0, '0 before a version was reported')
  t.equal(value(text, 'dualstream_trainer_ranks{of="connected"}'), 0)
  t.equal(value(text, 'dualstream_trainer_ranks{of="world"}'), 0)
  Object.assign(health, { policyVersion: 12, trainerRanks: { world: 4, ranks: [0, 2, 3] } })
  text = await metrics.text()
  t.equal(value(text, 'dualstream_trainer_policy_version'), 12)
  t.equal(value(text, 'dualstream_trainer_ranks{of="connected"}'), 3)
  t.equal(value(text, 'dualstream_trainer_ranks{of="world"}'), 4)
})

t.test('the ingest gauges: bytes in flight and their bound, holds and credit pauses as running totals', async (t) => {
  const hub = { clientInfo: () => [] } as unknown as TelemetryHub
  const metrics = new TelemetryMetrics({ source: 'serve', config, hub, counts: zero, state: () => ({ step: 0, lambda: {} }), processMetrics: false })
  const health = { ingestBytes: { held: 0, max: 64 * 1024 * 1024, holds: 0 }, pauses: 0 }
  metrics.watchIngest(() => health)
  let text = await metrics.text()
  t.equal(value(text, 'dualstream_ingest_bytes{of="held"}'), 0)
  t.equal(value(text, 'dualstream_ingest_bytes{of="max"}'), 64 * 1024 * 1024)
  t.equal(value(text, 'dualstream_ingest_holds_total'), 0)
  t.equal(value(text, 'dualstream_producer_pauses_total'), 0)
  health.ingestBytes = { held: 70 * 1024 * 1024, max: 64 * 1024 * 1024, holds: 3 }
  health.pauses = 2
  text = await metrics.text()
  t.equal(value(text, 'dualstream_ingest_bytes{of="held"}'), 70 * 1024 * 1024)
  t.equal(value(text, 'dualstream_ingest_holds_total'), 3)
  t.equal(value(text, 'dualstream_producer_pauses_total'), 2)
  // a counter never goes back, whatever it reads
  health.pauses = 1
  text = await metrics.text()
  t.equal(value(text, 'dualstream_producer_pauses_total'), 2, 'never decreases')
})

t.test('training metrics: the learner, the step-time histogram, process metrics', async (t) => {
  const hub = new TelemetryHub({
    hello: () => ({ source: 'train', config: {} as never, step: 0, lambda: {}, counts: null, overview: new RunHistory().overview() }),
  })
  const metrics = new TelemetryMetrics({ source: 'train', config, hub, counts: zero, state: () => ({ step: 0, lambda: {} }) })
  metrics.observe(frame({ learner: { loss: 0.5, clipFraction: 0.1, meanRatio: 1, gradNorm: null } }))
  metrics.observe(frame({ step: 5 }))
  const text = await metrics.text()
  t.equal(value(text, 'dualstream_learner{stat="loss"}'), 0.5)
  t.equal(value(text, 'dualstream_learner{stat="clip_fraction"}'), 0.1)
  t.equal(value(text, 'dualstream_learner{stat="grad_norm"}'), undefined)
  t.equal(value(text, 'dualstream_lambda{constraint="judge"}'), 0.2, 'a constraint without λ in the state starts at 0 and follows the frames')
  t.equal(value(text, 'dualstream_train_step_seconds_count'), 2)
  t.notMatch(text, 'dualstream_batch_latency_seconds')
  t.match(text, /^process_cpu_user_seconds_total /m, 'Node’s process metrics by default')
})
