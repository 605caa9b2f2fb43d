import { Unpackr } from 'msgpackr'
import t from 'tap'
import { benchConfig } from '../../src/apps/bench/core.js'
import { RelayEngine } from '../../src/apps/bench/relayEngine.js'
import type { CommittedBatch } from '../../src/state/engine.js'
import { RawPayload } from '../../src/state/rawPayload.js'

const unpackr = new Unpackr({ useRecords: false, int64AsType: 'number' })
const rollout = (i: number, payload?: unknown) => ({ id: `r${i}`, promptId: `p${i % 3}`, rewards: { accuracy: 1 }, payload })

t.test('the relay acknowledges on arrival and sends every batchSize rollouts, in arrival order, payload bytes as they came', async (t) => {
  const engine = new RelayEngine(benchConfig, 4)
  const committed: CommittedBatch[] = []
  let completed = false
  engine.committed.subscribe({ next: (c) => committed.push(c), complete: () => (completed = true) })
  // a payload from the wire (a MessagePack map's bytes) and one that is a value
  const raw = new RawPayload(Uint8Array.of(0x81, 0xa1, 0x74, 0xc4, 0x02, 0x01, 0x02))
  t.same(await engine.ingest([rollout(0, raw), rollout(1), rollout(2)]), { acked: ['r0', 'r1', 'r2'], rejected: [], duplicates: 0 })
  t.equal(committed.length, 0, 'three rollouts are not a batch of four')
  t.match(engine.stats(), { step: 0, pendingRollouts: 3, outbox: 0, ingest: { ingested: 3 } })
  await engine.ingest([3, 4, 5, 6, 7, 8].map((i) => rollout(i, { n: i })))
  t.same(
    committed.map((c) => c.delivery.step),
    [1, 2],
  )
  const first = unpackr.unpack(committed[0].delivery.bytes) as { type: string; step: number; rollouts: { id: string; advantage: number; payload?: unknown }[] }
  t.match(first, { type: 'batch', step: 1 })
  t.same(
    first.rollouts.map((r) => r.id),
    ['r0', 'r1', 'r2', 'r3'],
  )
  t.same(first.rollouts[0].payload, { t: Uint8Array.of(1, 2) }, 'the wire payload spliced as it came')
  t.same(first.rollouts[3].payload, { n: 3 })
  t.ok(first.rollouts.every((r) => r.advantage === 0))
  t.match(committed[1].outbox, { step: 2, rollouts: [{ id: 'r4' }, { id: 'r5' }, { id: 'r6' }, { id: 'r7' }] })
  t.match(committed[1].summary, { step: 2, groups: 1, rollouts: 4 })
  t.match(engine.stats(), { step: 2, pendingRollouts: 1, outbox: 2, pipeline: { batches: 2, rolloutsInBatches: 8 }, nextSeq: 9 })
  t.same(
    engine.pendingDeliveries().map((d) => d.step),
    [1, 2],
  )
  t.equal(await engine.acknowledge(1), true)
  t.equal(await engine.acknowledge(1), false, 'a step acknowledged twice counts once')
  t.same(
    engine.pendingDeliveries().map((d) => d.step),
    [2],
  )
  await engine.close()
  t.ok(completed)
})

t.test('the relay keeps nothing and fails on nothing but an item without a string id', async (t) => {
  const engine = new RelayEngine(benchConfig, 128)
  await t.rejects(engine.ingest([rollout(0), { promptId: 'p' }]), /relay engine: item 1 has no string id/)
  await t.rejects(engine.ingest([null]), /item 0 has no string id/)
  t.same([...engine.store.summaries()], [])
  await engine.store.saveAuxiliary('history', { points: 1 })
  t.equal(engine.store.auxiliary('history'), undefined, 'no history is kept')
  t.equal(await engine.failureCause(), undefined)
  t.equal(engine.error, undefined)
  t.equal(engine.policyVersion, undefined)
})
