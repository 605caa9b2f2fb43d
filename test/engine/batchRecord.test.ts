import t from 'tap'
import { parseConfig } from '../../src/core/config.js'
import { batchRecord, batchSummary, finiteOrNull } from '../../src/state/batchRecord.js'
import { initialDualState } from '../../src/math/dual.js'
import { scoreGroups, summarizeAdvantages } from '../../src/math/score.js'
import type { Group, ScoredBatch } from '../../src/core/types.js'

const config = parseConfig({
  groupSize: 2,
  batchGroups: 1,
  objectives: [{ channel: 'acc' }],
  constraints: [{ channel: 'judge', sense: '>=', threshold: 0.9, dual: { rule: 'sgd', lr: 0.1 } }],
})

t.test('a channel nobody scored is null in the record, not NaN', (t) => {
  const groups: Group[] = [
    {
      promptId: 'p',
      partial: true,
      ts: 5,
      rollouts: [
        { id: 'a', promptId: 'p', rewards: { acc: 1 } },
        { id: 'b', promptId: 'p', rewards: { acc: 0 } },
      ],
    },
  ]
  const step = scoreGroups(groups, config, initialDualState(config.constraints))
  const batch: ScoredBatch = { groups, ts: 5, reason: 'flush', columns: { offsets: Int32Array.of(0, 2), columns: {} }, windows: {}, ...step }
  const record = batchRecord(batch)
  t.same(record.constraints.judge, { mean: null, violation: null, sampleViolationRate: null, count: 0 })
  t.equal(record.partialGroups, 1)
  t.same(Object.keys(record.advantages), ['a', 'b'])
  t.equal(batchSummary(batch).advantageMean, 0)
  t.equal(finiteOrNull(Infinity), null)
  t.end()
})

t.test('objective means of a channel missing from the columns are NaN; an empty sum-then-normalize batch is fine', (t) => {
  const summary = summarizeAdvantages({ offsets: Int32Array.of(0), columns: {} }, { ...config, aggregation: 'sum-then-normalize' }, {})
  t.ok(Number.isNaN(summary.objectiveMeans.acc))
  t.same(summary.fracZeroStd, { acc: 0, judge: 0 })
  t.end()
})
