/**
 * The commit planning of the durable engine, without LMDB: a store is modelled as the map of
 * consumption records `EngineStore.commitBatch` keeps (put this step's seqs, then remove the
 * pruned steps, in one transaction), and the pipeline as the set of seqs inside it.
 */
import t from 'tap'
import { isDeepStrictEqual } from 'node:util'
import fc from 'fast-check'
import { parseConfig } from '../../src/core/config.js'
import type { DropEvent, Group, ScoredBatch } from '../../src/core/types.js'
import { initialDualState } from '../../src/math/dual.js'
import { stepBatch } from '../../src/math/score.js'
import { batchSummary } from '../../src/state/batchRecord.js'
import { wireUnpackr } from '../../src/state/codec.js'
import {
  consumedSeqsOf,
  countDrop,
  emptyPipelineCounters,
  planCommit,
  restoreBookkeeping,
  type EngineBookkeeping,
  type EngineMeta,
} from '../../src/state/commitPlan.js'
import type { OutboxBatch } from '../../src/state/engineStore.js'

const config = parseConfig({
  groupSize: 2,
  batchGroups: 2,
  objectives: [{ channel: 'accuracy' }],
  constraints: [{ channel: 'consistency', sense: '>=', threshold: 0.9, dual: { rule: 'sgd', lr: 0.5 } }],
})

/** A scored batch of the given seqs, one group per pair, as the pipeline would emit it at `step`. */
function scoredBatch(seqs: readonly number[], step: number, ts: (seq: number) => number): ScoredBatch {
  const groups: Group[] = []
  for (let i = 0; i < seqs.length; i += 2) {
    const rollouts = seqs.slice(i, i + 2).map((seq) => ({
      id: `r${seq}`,
      promptId: `p${seqs[i]}`,
      rewards: { accuracy: seq % 2, consistency: seq % 3 === 0 ? 0 : 1 },
      seq,
      ts: ts(seq),
    }))
    groups.push({ promptId: `p${seqs[i]}`, rollouts, partial: rollouts.length < 2, ts: ts(seqs[0]) })
  }
  const { figures } = stepBatch({ ...initialDualState(config.constraints), step: step - 1 }, groups, config)
  return { groups, ts: ts(seqs[seqs.length - 1]), reason: 'full', ...figures }
}

t.test('one commit: counters, meta, the consumption record, pruning, summary and bytes', (t) => {
  const book: EngineBookkeeping = {
    dualState: initialDualState(config.constraints),
    pipeline: { ...emptyPipelineCounters(), stale: 2 },
    consumption: [
      { step: 1, maxSeq: 3 },
      { step: 2, maxSeq: 9 },
    ],
  }
  const before = structuredClone(book)
  const batch = scoredBatch([10, 11, 12, 13], 3, (seq) => 100 + seq)
  const { plan, next } = planCommit(book, { batch, consumedSeqs: [10, 11, 12, 13, 5], lowWater: 6, now: 999 })
  t.same(book, before, 'the bookkeeping passed in is not modified')
  t.same(next.pipeline, { batches: 1, rolloutsInBatches: 4, stale: 2, incompleteGroups: 0, incompleteGroupRollouts: 0 })
  t.equal(next.dualState, batch.dualState)
  t.same(next.consumption, [
    { step: 2, maxSeq: 9 },
    { step: 3, maxSeq: 13 },
  ])
  const meta: EngineMeta = { dualState: batch.dualState, pipeline: next.pipeline, lowWater: 6 }
  t.same(plan.write.meta, meta)
  t.same(plan.write.prune, [1], 'step 1 lies wholly below the mark')
  t.same(plan.write.consumedSeqs, [10, 11, 12, 13, 5])
  t.same(plan.summary, batchSummary(batch))
  t.same(plan.write.summary, { ...batchSummary(batch), ts: 999 })
  t.equal(plan.newestTs, 113)
  t.equal(plan.write.delivery.step, 3)
  const outbox = wireUnpackr.unpack(plan.write.delivery.bytes) as OutboxBatch
  t.same(
    outbox.rollouts.map((r) => r.id),
    ['r10', 'r11', 'r12', 'r13'],
  )

  // a batch whose every seq is already below the mark writes its record and prunes it at once
  const last = planCommit(next, { batch: scoredBatch([14, 15], 4, () => 0), consumedSeqs: [14, 15], lowWater: 20, now: 0 })
  t.same(last.plan.write.prune, [2, 3, 4])
  t.same(last.next.consumption, [])
  t.end()
})

t.test('drops are counted by reason; the bookkeeping is restored from what a store holds', (t) => {
  const fresh = restoreBookkeeping(undefined, [], config.constraints)
  t.same(fresh, { dualState: initialDualState(config.constraints), pipeline: emptyPipelineCounters(), consumption: [] })
  const drop = (reason: DropEvent['reason'], count: number): DropEvent => ({ reason, rollouts: [], count })
  let book = fresh
  for (const event of [drop('stale', 1), drop('incomplete-group', 3), drop('stale', 2), drop('duplicate', 4), drop('invalid', 1)]) book = countDrop(book, event)
  t.same(book.pipeline, { batches: 0, rolloutsInBatches: 0, stale: 3, incompleteGroups: 1, incompleteGroupRollouts: 3 })
  t.same(fresh.pipeline, emptyPipelineCounters(), 'counting a drop makes new counters')
  const meta: EngineMeta = { dualState: { step: 4, constraints: {} }, pipeline: book.pipeline, lowWater: 7 }
  const stored = [{ step: 4, seqs: [9, 8], maxSeq: 9 }]
  t.same(restoreBookkeeping(meta, stored, config.constraints), { dualState: meta.dualState, pipeline: book.pipeline, consumption: [{ step: 4, maxSeq: 9 }] })
  t.same([...consumedSeqsOf([{ seqs: [1, 2] }, { seqs: [2, 5] }])], [1, 2, 5])
  t.end()
})

t.test('property: over any run, the stored records and the mark give a restart exactly the pipeline contents', (t) => {
  // one step of a run: records logged (rollouts or not), rollouts dropped from inside, then maybe a batch
  const event = fc.record({
    rollouts: fc.integer({ min: 0, max: 6 }),
    others: fc.integer({ min: 0, max: 2 }),
    dropped: fc.array(fc.nat(), { maxLength: 2 }),
    batch: fc.option(fc.array(fc.nat(), { minLength: 1, maxLength: 6 }), { freq: 3, nil: undefined }),
  })
  fc.assert(
    fc.property(fc.array(event, { minLength: 1, maxLength: 40 }), (events) => {
      // the pipeline
      const inside = new Set<number>()
      const rolloutSeqs = new Set<number>()
      let nextSeq = 0
      let departed: number[] = []
      // the store: step → seqs of its consumption record
      const stored = new Map<number, number[]>()
      let book = restoreBookkeeping(undefined, [], config.constraints)
      let step = 0
      let lastLowWater = 0
      let rolloutsInBatches = 0
      let droppedCount = 0
      const take = (picks: readonly number[]): number[] => {
        const taken: number[] = []
        for (const pick of picks) {
          if (inside.size === 0) break
          const seq = [...inside].sort((a, b) => a - b)[pick % inside.size]
          inside.delete(seq)
          taken.push(seq)
        }
        return taken
      }

      for (const e of events) {
        for (let k = 0; k < e.rollouts; k++) {
          inside.add(nextSeq)
          rolloutSeqs.add(nextSeq++)
        }
        nextSeq += e.others
        const dropped = take(e.dropped)
        departed.push(...dropped)
        for (const _ of dropped) book = countDrop(book, { reason: 'stale', rollouts: [], count: 1 })
        droppedCount += dropped.length
        if (e.batch === undefined) continue
        const seqs = take(e.batch)
        if (seqs.length === 0) continue
        const consumedSeqs = [...seqs, ...departed]
        departed = []
        const lowWater = Math.min(nextSeq, ...inside)
        const batch = scoredBatch(seqs, ++step, (seq) => seq * 10)
        const before = structuredClone(book)
        const { plan, next } = planCommit(book, { batch, consumedSeqs, lowWater, now: step })
        if (!isDeepStrictEqual(book, before)) return false

        // what EngineStore.commitBatch does with the plan, in one transaction
        stored.set(batch.step, plan.write.consumedSeqs)
        const pruned = plan.write.prune.map((s) => ({ step: s, seqs: stored.get(s)! }))
        for (const s of plan.write.prune) stored.delete(s)
        book = next

        // pruned records are never needed again: all of their seqs are below a mark that only rises
        if (lowWater < lastLowWater) return false
        lastLowWater = lowWater
        if (!pruned.every((r) => r.seqs !== undefined && r.seqs.every((seq) => seq < lowWater))) return false
        // and none is kept that the mark implies
        if (![...stored.values()].every((seqs) => Math.max(...seqs) >= lowWater)) return false
        // a restart reads rollouts from the mark and skips the stored records' seqs: exactly what is inside
        const skip = consumedSeqsOf([...stored.values()].map((seqs) => ({ seqs })))
        const refed = [...rolloutSeqs].filter((seq) => seq >= plan.write.meta.lowWater && !skip.has(seq))
        if (
          !isDeepStrictEqual(
            refed,
            [...inside].sort((a, b) => a - b),
          )
        )
          return false
        // the bookkeeping is what a restart restores from the store
        const restored = restoreBookkeeping(
          plan.write.meta,
          [...stored.entries()].sort(([a], [b]) => a - b).map(([s, seqs]) => ({ step: s, seqs, maxSeq: Math.max(...seqs) })),
          config.constraints,
        )
        if (!isDeepStrictEqual(restored, book)) return false
        // the counters add up
        rolloutsInBatches += seqs.length
        const counters = { batches: step, rolloutsInBatches, stale: droppedCount, incompleteGroups: 0, incompleteGroupRollouts: 0 }
        if (!isDeepStrictEqual(plan.write.meta.pipeline, counters) || plan.write.delivery.step !== step || plan.newestTs !== Math.max(...seqs) * 10)
          return false
      }
      return true
    }),
    { numRuns: 300 },
  )
  t.pass('held for 300 random runs')
  t.end()
})
