import t from 'tap'
import { open } from 'lmdb'
import { Adam, OnnxPolicy, SNAPSHOT_VERSION, recordToSnapshot, snapshotToRecord, type PolicySnapshot } from '../src/models/policy/index.js'
import { CheckpointStore } from '../src/models/policy/checkpoint.js'

async function trainedSnapshot(): Promise<PolicySnapshot> {
  const policy = await OnnxPolicy.create({ inputDim: 3, vocab: 2, hidden: [4], seed: 5 })
  const adam = new Adam(policy.specs, { lr: 0.01 })
  const { grads } = await policy.nllGradients({
    rows: 1,
    features: Float32Array.of(1, 0, -1),
    mask: Float32Array.of(0, 0),
    actions: [1],
    weights: Float32Array.of(1),
  })
  adam.step(policy.params, grads)
  await policy.release()
  return { network: policy.network, params: policy.params, adam: adam.state(), meta: { step: 1, lambda: [0.5, 0] } }
}

t.test('snapshot records round-trip and are validated', async (t) => {
  const snap = await trainedSnapshot()
  const rec = snapshotToRecord(snap)
  t.equal(rec.version, SNAPSHOT_VERSION)
  t.ok(rec.params.W0 instanceof Uint8Array, 'parameters stored as bytes')
  t.same(recordToSnapshot(rec), snap)
  const bare = recordToSnapshot(snapshotToRecord({ network: snap.network, params: snap.params }))
  t.same(bare, { network: snap.network, params: snap.params })
  t.throws(() => snapshotToRecord({ network: snap.network, params: {} }), /snapshot params: parameter 'W0' is missing/)
  t.throws(() => recordToSnapshot(null), /expected an object, got null/)
  t.throws(() => recordToSnapshot(7), /expected an object, got number/)
  t.throws(() => recordToSnapshot({ ...rec, version: 99 }), /unsupported version 99 \(this build reads 1\)/)
  t.throws(() => recordToSnapshot({ ...rec, network: undefined }), /network is missing/)
  t.throws(() => recordToSnapshot({ ...rec, params: undefined }), /params is missing/)
  t.throws(
    () => recordToSnapshot({ ...rec, network: { ...rec.network, hidden: [5] } }),
    /policy snapshot params: parameter 'W0' has 12 values, shape \[3, 5\] needs 15/,
  )
  t.throws(() => recordToSnapshot({ ...rec, adam: { t: 1 } }), /adam must be \{ t, m, v \}/)
  t.throws(() => recordToSnapshot({ ...rec, adam: { ...rec.adam, m: {} } }), /adam\.m: parameter 'W0' is missing/)
  t.throws(() => recordToSnapshot({ ...rec, adam: { ...rec.adam, v: { ...rec.adam!.v, b1: new Uint8Array(4) } } }), /adam\.v: parameter 'b1' has 1 values/)
})

t.test('LMDB checkpoint store: save, load, resume', async (t) => {
  const dir = t.testdir()
  const snap = await trainedSnapshot()
  let store = CheckpointStore.open(`${dir}/ckpt`)
  t.equal(store.load('latest'), undefined)
  await store.save('latest', snap)
  await store.save('step/00000001', snap)
  await store.close()

  store = CheckpointStore.open(`${dir}/ckpt`)
  t.teardown(() => store.close())
  t.same(store.keys().sort(), ['latest', 'step/00000001'])
  const loaded = store.load('latest')!
  t.same(loaded, snap, 'parameters, Adam moments and meta survive a reopen')
  const resumed = await OnnxPolicy.create({ inputDim: 3, vocab: 2, hidden: loaded.network.hidden, params: loaded.params })
  const fresh = await OnnxPolicy.create({ inputDim: 3, vocab: 2, hidden: snap.network.hidden, params: snap.params })
  const X = Float32Array.of(0.3, -1, 2)
  const M = Float32Array.of(0, 0)
  t.same(await resumed.logProbs(X, M, 1), await fresh.logProbs(X, M, 1))
  await Promise.all([resumed.release(), fresh.release()])
  const adam = new Adam(resumed.specs, { lr: 0.01 }, loaded.adam)
  t.equal(adam.steps, 1)

  // a record written by an incompatible build
  const raw = open<unknown, string>({ path: `${dir}/ckpt` })
  await raw.put('broken', { version: 0 })
  await raw.close()
  t.throws(() => store.load('broken'), /checkpoint 'broken': policy snapshot: unsupported version 0/)
})
