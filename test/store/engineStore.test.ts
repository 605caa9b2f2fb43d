import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { wirePackr } from '../../src/codec.js'
import { EngineStore, entryRecords, type FrameEntry } from '../../src/store/engineStore.js'

const counters = { ingested: 0, rejected: {}, duplicate: 0 }
const open = () => EngineStore.open(mkdtempSync(join(tmpdir(), 'dualstream-store-')))

t.test('entries are appended at the next seq only; ids are claimed once', async (t) => {
  const store = open()
  t.equal(store.nextSeq, 0)
  t.equal(store.lastTs(), 0)
  await store.transact((tx) => {
    t.equal(tx.claim('a'), true)
    t.equal(tx.claim('a'), false, 'a second claim of the same id is a duplicate')
    tx.append([{ kind: 'rollout', seq: 0, rollout: { id: 'a', promptId: 'p', rewards: {}, seq: 0, ts: 7 } }])
    t.throws(() => tx.append([{ kind: 'watermark', seq: 5, ts: 8 }]), /log entry at seq 5, the next seq is 1/)
    return counters
  })
  t.equal(store.nextSeq, 1)
  t.equal(store.lastTs(), 7)
  await store.transact((tx) => (t.equal(tx.claim('a'), false, 'also in a later transaction'), counters))
  await store.close()
})

t.test('a frame entry whose item no longer reads as a rollout names the seq, the item and the field', (t) => {
  const bytes = wirePackr.pack({ type: 'rollouts', rollouts: [{ id: 'ok', promptId: 'p', rewards: {} }, { id: 'x', promptId: 'p', rewards: { a: 'no' } }] })
  const entry: FrameEntry = { kind: 'frame', seq: 40, count: 2, ts: 1, format: 'msgpack', bytes }
  t.throws(() => entryRecords(entry), /log entry at seq 40: item 1 no longer reads as a rollout: rollout "x": rewards\.a: must be a finite number or null/)
  const selected = entryRecords({ ...entry, count: 1, accepted: new Uint8Array(Uint32Array.of(0).buffer) })
  t.same(selected, [{ kind: 'rollout', seq: 40, rollout: { id: 'ok', promptId: 'p', rewards: {}, seq: 40, ts: 1 } }])
  t.end()
})
