import t from 'tap'
import { parseConfig } from '../../src/core/config.js'
import { initialDualState } from '../../src/math/dual.js'
import { scoreGroups } from '../../src/math/score.js'
import { batchSummary } from '../../src/state/batchRecord.js'
import type { Group, ScoredBatch } from '../../src/core/types.js'
import { RateMeter, engineCounts, serveBatchFrame, telemetryConfig, trainBatchFrame } from '../../streams/telemetry/frames.js'

const config = parseConfig({
  groupSize: 2,
  batchGroups: 1,
  maxStaleness: 1,
  objectives: [{ channel: 'acc' }],
  constraints: [
    { channel: 'judge', sense: '>=', threshold: 0.9, sampleThreshold: 0.5, dual: { rule: 'sgd', lr: 0.5 } },
    { channel: 'cost', sense: '<=', threshold: 0.2, dual: { rule: 'pid', max: 3 } },
  ],
})

/** A scored batch of one group of two rollouts. */
function batchOf(rewards: Record<string, number | null>[]): ScoredBatch {
  const groups: Group[] = [{ promptId: 'p', partial: false, ts: 5, rollouts: rewards.map((r, i) => ({ id: `r${i}`, promptId: 'p', rewards: r })) }]
  const step = scoreGroups(groups, config, initialDualState(config.constraints))
  return { groups, ts: 5, reason: 'full', columns: { offsets: Int32Array.of(0, 2), columns: {} }, windows: {}, ...step }
}

const counts = engineCounts({
  step: 3,
  lambda: {},
  ingest: { ingested: 10, rejected: { rewards: 2, id: 1 }, duplicate: 4 },
  pipeline: { batches: 3, rolloutsInBatches: 6, stale: 1, incompleteGroups: 1, incompleteGroupRollouts: 1 },
  pendingRollouts: 2,
  outbox: 1,
  nextSeq: 11,
})

t.test('the viewer’s config: thresholds, senses, dual rules; no max is null', (t) => {
  t.same(telemetryConfig(config), {
    groupSize: 2,
    batchGroups: 1,
    maxStaleness: 1,
    aggregation: 'normalize-then-sum',
    objectives: [{ channel: 'acc', weight: 1 }],
    constraints: [
      { channel: 'judge', sense: '>=', threshold: 0.9, sampleThreshold: 0.5, rule: 'sgd', lr: 0.5, max: null },
      { channel: 'cost', sense: '<=', threshold: 0.2, sampleThreshold: 0.2, rule: 'pid', lr: null, max: 3 },
    ],
  })
  t.equal(telemetryConfig(parseConfig({ groupSize: 2, batchGroups: 1, objectives: [{ channel: 'a' }] })).maxStaleness, null)
  t.end()
})

t.test('counts from the engine stats: rejected summed over reasons', (t) => {
  t.same(counts, {
    ingested: 10,
    rejected: 3,
    rejectedByReason: { rewards: 2, id: 1 },
    duplicate: 4,
    stale: 1,
    droppedGroups: 1,
    droppedGroupRollouts: 1,
    batches: 3,
    rolloutsInBatches: 6,
    pending: 2,
    outbox: 1,
  })
  t.end()
})

t.test('rates over a sliding window, null until it spans long enough', (t) => {
  const meter = new RateMeter(1000, 200)
  t.same(meter.update(0, { rollouts: 0, ingested: 0, batches: 0 }), { rolloutsPerSec: null, ingestPerSec: null, batchesPerSec: null })
  t.same(meter.update(100, { rollouts: 10, ingested: 20, batches: 1 }), { rolloutsPerSec: null, ingestPerSec: null, batchesPerSec: null })
  t.same(meter.update(500, { rollouts: 50, ingested: 100, batches: 5 }), { rolloutsPerSec: 100, ingestPerSec: 200, batchesPerSec: 10 })
  // 2 s later: the window keeps the last sample at or before its start
  t.same(meter.update(2500, { rollouts: 250, ingested: 300, batches: 25 }), { rolloutsPerSec: 100, ingestPerSec: 100, batchesPerSec: 10 })
  t.same(
    meter.update(3000, { rollouts: 350, ingested: 400, batches: 35 }),
    { rolloutsPerSec: 120, ingestPerSec: 120, batchesPerSec: 12 },
    'since the last sample at or before the window’s start (500)',
  )
  t.end()
})

t.test('a serve frame: per constraint mean, threshold, violation, rate, λ; NaN is null', (t) => {
  const batch = batchOf([
    { acc: 1, judge: 1, cost: 0.5 },
    { acc: 0, judge: 0, cost: 0.1 },
  ])
  const rates = { rolloutsPerSec: 5, ingestPerSec: 6, batchesPerSec: 1 }
  const frame = serveBatchFrame({ summary: batchSummary(batch), latencyMs: 12, counts, config, now: 1000, rates })
  t.match(frame, {
    type: 'batch',
    step: 1,
    ts: 1000,
    rollouts: 2,
    groups: 1,
    partialGroups: 0,
    objectives: { acc: 0.5 },
    fracZeroStd: { acc: 0, judge: 0, cost: 0 },
    counts,
    throughput: rates,
    latencyMs: 12,
  })
  t.same(frame.constraints.judge, {
    sense: '>=',
    threshold: 0.9,
    mean: 0.5,
    violation: 0.4,
    sampleViolationRate: 0.5,
    sampleThreshold: 0.5,
    count: 2,
    lambda: 0.2,
    lambdaBefore: 0,
  })
  t.equal(frame.constraints.judge.lambda, batch.lambda.judge.after)
  t.equal(frame.constraints.cost.sense, '<=')
  t.ok(Math.abs(frame.constraints.cost.mean! - 0.3) < 1e-12)
  t.equal(frame.advantage.mean, 0)
  t.ok(frame.advantage.std! > 0)
  t.notOk('learner' in frame, 'no training figures')

  // a batch that says nothing about a constraint, no value at all, and no latency
  const empty = batchOf([{ acc: null }, { acc: null }])
  const bare: ScoredBatch = { ...empty, constraints: {}, lambda: {} }
  const none = serveBatchFrame({ summary: batchSummary(bare), latencyMs: NaN, counts, config, now: 0, rates })
  t.same(none.constraints.judge, {
    sense: '>=',
    threshold: 0.9,
    mean: null,
    violation: null,
    sampleViolationRate: null,
    sampleThreshold: 0.5,
    count: 0,
    lambda: 0,
    lambdaBefore: 0,
  })
  t.same(none.objectives, { acc: null })
  t.equal(none.latencyMs, null)
  t.same(JSON.parse(JSON.stringify(none)), none, 'JSON says the same thing')
  t.end()
})

t.test('a training frame: learner and batch metrics, the sample only when given', (t) => {
  const batch = batchOf([
    { acc: 1, judge: 1, cost: 0 },
    { acc: 1, judge: 1, cost: 0 },
  ])
  const report = {
    step: 7,
    policyVersion: 7,
    batch,
    learner: { loss: 0.1, clipFraction: 0.2, meanRatio: 1, gradNorm: NaN },
    metrics: { accuracy: 1, inconsistencyRate: 0, grounding: Infinity },
    ms: 3.5,
  }
  const rates = { rolloutsPerSec: null, ingestPerSec: null, batchesPerSec: null }
  const frame = trainBatchFrame({ report, counts, config, now: 9, rates })
  t.match(frame, {
    type: 'batch',
    step: 7,
    policyVersion: 7,
    latencyMs: 3.5,
    learner: { loss: 0.1, clipFraction: 0.2, meanRatio: 1, gradNorm: null },
    metrics: { accuracy: 1, inconsistencyRate: 0, grounding: null },
  })
  t.notOk('sample' in frame)
  const sample = {
    grid: 4,
    objects: [],
    question: { a: 'red', b: 'blue', axis: 'x' as const, text: '?' },
    claims: [],
    answer: 'less' as const,
    correctAnswer: 'less' as const,
    judgement: { accuracy: 1, grounding: 1, consistency: 1 },
    text: '',
  }
  t.equal(trainBatchFrame({ report, counts, config, now: 9, rates, sample }).sample, sample)
  const partial = trainBatchFrame({ report: { ...report, learner: {} as never, metrics: {} as never }, counts, config, now: 9, rates })
  t.same(partial.learner, { loss: null, clipFraction: null, meanRatio: null, gradNorm: null }, 'missing figures are null')
  t.same(partial.metrics, { accuracy: null, inconsistencyRate: null, grounding: null })
  t.end()
})
