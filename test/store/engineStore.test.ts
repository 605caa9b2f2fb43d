import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { wirePackr } from '../../src/state/codec.js'
import { EngineStore, entryRecords, type FrameEntry, type LogRecord } from '../../src/state/engineStore.js'
import { IdHasher } from '../../src/state/idHashes.js'
import { RawPayload } from '../../src/state/rawPayload.js'

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
  const bytes = wirePackr.pack({
    type: 'rollouts',
    rollouts: [
      { id: 'ok', promptId: 'p', rewards: {} },
      { id: 'x', promptId: 'p', rewards: { a: 'no' } },
    ],
  })
  const entry: FrameEntry = { kind: 'frame', seq: 40, count: 2, ts: 1, format: 'msgpack', bytes }
  t.throws(() => entryRecords(entry), /log entry at seq 40: item 1 no longer reads as a rollout: rollout "x": rewards\.a: must be a finite number or null/)
  const selected = entryRecords({ ...entry, count: 1, accepted: new Uint8Array(Uint32Array.of(0).buffer) })
  t.same(selected, [{ kind: 'rollout', seq: 40, rollout: { id: 'ok', promptId: 'p', rewards: {}, seq: 40, ts: 1 } }])
  t.end()
})

/** A hasher under which every id collides: every claim after the first must be settled against the ids themselves. */
class CollidingHasher extends IdHasher {
  override hash(): void {
    this.hi = 7
    this.lo = 7
  }
}

const rolloutEntry = (seq: number, ids: string[]): LogRecord[] =>
  ids.map((id, k) => ({ kind: 'rollout', seq: seq + k, rollout: { id, promptId: 'p', rewards: {}, seq: seq + k, ts: 1 } }))

/** Claims `ids` in one transaction and appends the new ones; resolves to which were new. */
async function ingest(store: EngineStore, ids: string[]): Promise<boolean[]> {
  let claimed: boolean[] = []
  await store.transact((tx) => {
    claimed = ids.map((id) => tx.claim(id))
    const fresh = ids.filter((_, k) => claimed[k])
    if (fresh.length > 0) tx.append(rolloutEntry(tx.nextSeq, fresh))
    return counters
  })
  return claimed
}

t.test('with every hash colliding, duplicates are still found exactly: in the transaction, on the way to disk, on disk, after a restart', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dualstream-store-'))
  let store = EngineStore.open(dir, { idHasher: new CollidingHasher(0, 0) })
  t.same(await ingest(store, ['a', 'b', 'a', 'c']), [true, true, false, true], 'a repeat inside one frame')
  // two frames in flight at once: the second sees the first before it is on disk
  const [first, second] = await Promise.all([ingest(store, ['d', 'e']), ingest(store, ['e', 'f', 'b'])])
  t.same(first, [true, true])
  t.same(second, [false, true, false], 'e was on its way to disk; b was on disk')
  // more entries than the decoded-entry cache holds, then ids from the oldest
  for (const id of ['g', 'h', 'i', 'j', 'k']) await ingest(store, [id])
  t.same(await ingest(store, ['a', 'z', 'k']), [false, true, false])
  await store.close()
  store = EngineStore.open(dir, { idHasher: new CollidingHasher(0, 0) })
  t.same(await ingest(store, ['c', 'new', 'f']), [false, true, false], 'the index is back after a restart')
  t.same(await ingest(store, ['a', 'b', 'c']), [false, false, false], 'the first frame, resent whole')
  t.equal(store.nextSeq, 13)
  await store.close()
})

t.test("the index survives a restart with the store's own seed, and is rebuilt for a log written without it", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dualstream-store-'))
  let store = EngineStore.open(dir)
  const seed = store.meta.get('idHashSeed')
  await ingest(store, ['a', 'b'])
  await store.transact((tx) => (tx.append([{ kind: 'watermark', seq: tx.nextSeq, ts: 5 }]), counters))
  await store.close()
  store = EngineStore.open(dir)
  t.same(store.meta.get('idHashSeed'), seed, 'the seed is kept')
  t.same(await ingest(store, ['b', 'c']), [false, true])
  // a store from before the hash index: its log has entries the index does not cover
  store.idHashes.clearSync()
  await store.close()
  store = EngineStore.open(dir)
  t.equal([...store.idHashes.getKeys()].length, 2, 'the two rollout entries are hashed again at open')
  t.same(await ingest(store, ['a', 'c', 'd']), [false, false, true])
  await store.close()
  // read-only: nothing claimed, nothing written (not even a seed for a store that has none)
  const readOnly = EngineStore.open(dir, { readOnly: true })
  t.equal(readOnly.nextSeq, 5)
  await readOnly.close()
  const unseeded = EngineStore.open(mkdtempSync(join(tmpdir(), 'dualstream-store-')))
  unseeded.meta.removeSync('idHashSeed')
  await unseeded.close()
  const reader = EngineStore.open(unseeded.path, { readOnly: true })
  t.equal(reader.meta.get('idHashSeed'), undefined)
  await reader.close()
  t.end()
})

t.test('a transaction that misuses claims writes nothing and says what was wrong', async (t) => {
  const store = open()
  await t.rejects(
    store.transact((tx) => (tx.claim('a'), tx.claim('b'), tx.append(rolloutEntry(0, ['a'])), counters)),
    /log entry at seq 0 holds 1 rollouts, 2 ids were claimed for it/,
  )
  await t.rejects(
    store.transact((tx) => (tx.claim('c'), counters)),
    /1 claimed ids were not appended/,
  )
  t.equal(store.nextSeq, 0, 'no seq was used')
  t.same(await ingest(store, ['a', 'c']), [true, true], 'claims of a transaction that wrote nothing do not count')
  await store.close()
})

t.test('a frame’s bytes are stored apart from its entry and read by reference; frames logged inline (before that) still read', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dualstream-store-'))
  const store = EngineStore.open(dir)
  const bytes = Buffer.from(
    wirePackr.pack({ type: 'rollouts', rollouts: [{ id: 'a', promptId: 'p', rewards: {}, payload: { tokens: Buffer.from([1, 2, 3]) } }] }),
  )
  await store.transact((tx) => {
    tx.claim('a')
    tx.append({ kind: 'frame', seq: 0, count: 1, ts: 5, format: 'msgpack', bytes })
    return counters
  })
  t.notOk('bytes' in (store.log.get(0) as object), 'the entry holds no bytes')
  t.same(store.frames.getBinary(0), bytes, 'they are in `frames`')
  t.same(store.frameBytes(0), bytes)
  const [record] = [...store.records()] as (LogRecord & { kind: 'rollout' })[]
  const payload = record.rollout.payload as RawPayload
  t.ok(payload instanceof RawPayload)
  t.match(payload, { entry: 0, bytes: undefined }, 'a replayed payload points at its frame and holds no bytes')
  t.same(Buffer.from(store.frameBytes(0).subarray(payload.offset, payload.offset + payload.length)), wirePackr.pack({ tokens: Buffer.from([1, 2, 3]) }))

  // a frame logged with its bytes inline, as before they were stored apart
  const legacy = Buffer.from(wirePackr.pack({ type: 'rollouts', rollouts: [{ id: 'b', promptId: 'p', rewards: {} }] }))
  await store.log.put(1, { kind: 'frame', seq: 1, count: 1, ts: 6, format: 'msgpack', bytes: legacy })
  t.same(store.frameBytes(1), legacy)
  t.same(
    [...store.records(1)].map((r) => (r as { rollout: { id: string } }).rollout.id),
    ['b'],
  )
  // a batch whose payload is in that frame is assembled from it too
  // an outbox record of one reference (position 1, entry 1, offset 2, length 3) into the template [0xa0, 0xa1]
  const outboxRecord = Uint8Array.of(
    0xc1,
    0,
    0,
    0,
    1,
    0,
    0,
    0,
    1,
    ...new Uint8Array(new Float64Array([1]).buffer).reverse(),
    0,
    0,
    0,
    2,
    0,
    0,
    0,
    3,
    0xa0,
    0xa1,
  )
  t.same([...store.assemble(outboxRecord)], [0xa0, ...legacy.subarray(2, 5), 0xa1], 'a reference into a frame logged inline')
  t.throws(() => store.frameBytes(9), /no logged frame at seq 9/)
  await store.log.put(2, [{ kind: 'watermark', seq: 2, ts: 7 }])
  t.throws(() => store.frameBytes(2), /no logged frame at seq 2/, 'an entry of records is no frame')
  await store.close()
})

t.test('a data.mdb that is not an LMDB file is refused with what it is, instead of crashing lmdb', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dualstream-store-'))
  writeFileSync(join(dir, 'data.mdb'), 'not a database, but some text someone left here')
  t.throws(() => EngineStore.open(dir), {
    message: `${join(dir, 'data.mdb')} is not an LMDB data file (no LMDB magic number at its start): not a dualstream data folder, or a damaged one`,
  })
  t.throws(() => EngineStore.open(dir, { readOnly: true }), /is not an LMDB data file/)
  const empty = mkdtempSync(join(tmpdir(), 'dualstream-store-'))
  writeFileSync(join(empty, 'data.mdb'), '')
  const store = EngineStore.open(empty)
  t.equal(store.nextSeq, 0, 'an empty file is a new environment')
  await store.close()
  const reopened = EngineStore.open(empty)
  t.pass('and a real one opens again')
  await reopened.close()
})
