/**
 * The store's write promises (src/state/engineStore.ts): lmdb-js rejects every write of a
 * failed batch as well as the batch itself; those rejections are handled (the batch's own
 * promise reports the failure), and an acknowledgement's removal is a promise the engine holds.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { EngineStore } from '../../src/state/engineStore.js'

const counters = { ingested: 0, rejected: {}, duplicate: 0 }

function open(t: Test): EngineStore {
  const dir = mkdtempSync(join(tmpdir(), 'dualstream-store-'))
  const store = EngineStore.open(dir)
  t.teardown(async () => {
    await store.close()
    rmSync(dir, { recursive: true, force: true })
  })
  return store
}

/** Rejections nobody handled while `body` ran (and one turn of the event loop after it). */
async function unhandledDuring(body: () => Promise<void>): Promise<unknown[]> {
  const unhandled: unknown[] = []
  const listener = (reason: unknown) => unhandled.push(reason)
  process.on('unhandledRejection', listener)
  try {
    await body()
    await new Promise((resolve) => setImmediate(resolve))
  } finally {
    process.off('unhandledRejection', listener)
  }
  return unhandled
}

t.test('a write inside a batch that rejects on its own is handled: the batch reports the outcome', async (t) => {
  const store = open(t)
  const put = store.meta.put.bind(store.meta)
  let failedWrites = 0
  // as lmdb-js does for each write of a failed commit
  store.meta.put = ((...args: Parameters<typeof put>) => {
    void put(...args)
    failedWrites++
    return Promise.reject(new Error('Commit failed (see commitError for details)'))
  }) as typeof store.meta.put
  const unhandled = await unhandledDuring(() =>
    store.transact((tx) => {
      tx.append([{ kind: 'watermark', seq: tx.nextSeq, ts: 5 }])
      return counters
    }),
  )
  t.equal(failedWrites, 1, 'the counters were written in the batch')
  t.same(unhandled, [], 'no unhandled rejection')
  t.equal(store.nextSeq, 1)
})

t.test('acknowledge resolves once the removal is done; an unknown step writes nothing; a failed removal rejects', async (t) => {
  const store = open(t)
  await store.outbox.put(1, new Uint8Array([1, 2, 3]))
  await store.outbox.put(2, new Uint8Array([4]))
  const ack = store.acknowledge(1)
  t.type(ack, Promise)
  await ack
  t.equal(store.outbox.doesExist(1), false, 'removed when the promise resolves')
  t.same(
    store.pendingDeliveries().map((d) => d.step),
    [2],
  )
  let removals = 0
  const remove = store.outbox.remove.bind(store.outbox)
  store.outbox.remove = ((...args: Parameters<typeof remove>) => {
    removals++
    return remove(...args)
  }) as typeof store.outbox.remove
  await store.acknowledge(7)
  t.equal(removals, 0, 'nothing to remove for a step not in the outbox')
  store.outbox.remove = (() => Promise.reject(new Error('EIO: i/o error'))) as typeof store.outbox.remove
  await t.rejects(store.acknowledge(2), /EIO/, 'the engine hears of a removal that failed')
})
