/**
 * The durable engine at the edge of its disk (src/state/durableEngine.ts): with disk
 * watermarks, a frame that does not fit is refused with a `DiskFullError` and nothing is
 * logged; what is written is counted against the free space. A write that fails stops the
 * engine in good order: `failed` resolves, nothing more is written (no ingest, no commit, no
 * acknowledgement, no watermark), the cause is described, and closing does not hang on LMDB.
 * Store writes are made to fail by replacing methods of `engine.store`.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { parseConfig, type ConfigInput } from '../../src/core/config.js'
import { wirePackr } from '../../src/state/codec.js'
import { defaultDiskReserve, type DiskSpace } from '../../src/state/diskGuard.js'
import { DiskFullError, DurableEngine, type CommittedBatch, type DurableEngineOptions } from '../../src/state/durableEngine.js'
import { VirtualClock } from '../support/virtualTime.js'

const MiB = 1024 ** 2
const base: ConfigInput = {
  groupSize: 2,
  batchGroups: 2,
  objectives: [{ channel: 'accuracy' }],
  constraints: [{ channel: 'consistency', sense: '>=', threshold: 0.9, sampleThreshold: 0.5, dual: { rule: 'sgd', lr: 0.5, max: 5 } }],
}
const rollout = (id: string, promptId: string, accuracy = 1, consistency = 1) => ({ id, promptId, rewards: { accuracy, consistency } })
/** Prompts `from`…`to - 1`, two rollouts each (two prompts make a batch). */
const prompts = (prefix: string, from: number, to: number) => {
  const out = []
  for (let p = from; p < to; p++) for (let i = 0; i < 2; i++) out.push(rollout(`${prefix}${p}-${i}`, `${prefix}${p}`, (p + i) % 2, 1))
  return out
}

/** A filesystem whose free space the test sets. */
function fakeDisk(free: number, total = 1024 * MiB) {
  const disk = {
    free,
    total,
    reads: 0,
    statfs: async (): Promise<DiskSpace> => {
      disk.reads++
      return { free: disk.free, total: disk.total }
    },
  }
  return disk
}

async function openEngine(t: Test, options: Partial<DurableEngineOptions> = {}) {
  const dataDir = mkdtempSync(join(tmpdir(), 'dualstream-failure-'))
  const clock = new VirtualClock(1000)
  const engine = await DurableEngine.open({ config: parseConfig(base), dataDir, scheduler: clock, watermarkIntervalMs: 0, ...options })
  const committed: CommittedBatch[] = []
  engine.committed.subscribe((c) => committed.push(c))
  t.teardown(async () => {
    await engine.close()
    rmSync(dataDir, { recursive: true, force: true })
  })
  return { engine, committed, clock, dataDir }
}

/** Counts calls of a store method (still calling it). */
function countCalls<K extends 'transact' | 'commitBatch' | 'acknowledge'>(engine: DurableEngine, method: K): { calls: number } {
  const store = engine.store
  const original = (store[method] as (...args: unknown[]) => Promise<void>).bind(store)
  const counter = { calls: 0 }
  ;(store as unknown as Record<K, unknown>)[method] = (...args: unknown[]) => {
    counter.calls++
    return original(...args)
  }
  return counter
}

/** Makes the next call of a store method fail with `error` (later calls go through). */
function failNext(engine: DurableEngine, method: 'transact' | 'commitBatch' | 'acknowledge', error: unknown): void {
  const store = engine.store as unknown as Record<string, unknown>
  const original = store[method]
  store[method] = () => {
    store[method] = original
    return Promise.reject(error)
  }
}

t.test('disk watermarks are opened for a reserve in bytes or "auto", not for 0 or none', async (t) => {
  const disk = fakeDisk(800 * MiB)
  const sized = await openEngine(t, { diskReserveBytes: 64 * MiB, diskResumeBytes: 100 * MiB, diskCheckMs: 500, statfs: disk.statfs })
  t.match(sized.engine.disk?.state, { path: sized.dataDir, full: false, free: 800 * MiB, total: 1024 * MiB, reserve: 64 * MiB, resume: 100 * MiB })
  sized.clock.advance(500)
  t.equal(disk.reads, 2, 'read on the engine’s scheduler, every diskCheckMs')

  const auto = await openEngine(t, { diskReserveBytes: 'auto', statfs: fakeDisk(800 * MiB).statfs })
  t.equal(auto.engine.disk?.state.reserve, defaultDiskReserve(1024 * MiB))
  t.equal(auto.engine.disk?.state.resume, 2 * defaultDiskReserve(1024 * MiB))

  t.equal((await openEngine(t, { diskReserveBytes: 0 })).engine.disk, undefined, '0: not watched')
  t.equal((await openEngine(t)).engine.disk, undefined, 'none: not watched')
})

t.test('a frame that does not fit above the reserve is refused with a DiskFullError, and nothing is logged', async (t) => {
  const disk = fakeDisk(20 * MiB)
  const { engine } = await openEngine(t, { diskReserveBytes: 10 * MiB, diskResumeBytes: 30 * MiB, statfs: disk.statfs })
  const before = engine.stats()
  // 10 MiB − 8 KiB of values and overhead fit, one byte more does not
  const raw = { bytes: new Uint8Array(10 * MiB - 8192 + 1), format: 'msgpack' as const }
  const refused = engine.ingest([rollout('big', 'p')], raw)
  await t.rejects(refused, { name: 'DiskFullError', code: 'disk-full' })
  const error = await refused.catch((e: unknown) => e)
  t.ok(error instanceof DiskFullError)
  t.equal(
    (error as Error).message,
    'disk nearly full at ' +
      engine.disk!.state.path +
      ': 20.0 MiB free of 1.0 GiB, 10.0 MiB must stay free (--disk-reserve) and this frame needs 10.0 MiB; rollouts are taken again once 30.0 MiB are free',
  )
  t.equal(engine.disk!.isFull, true, 'the refusal turned the guard full')
  t.same(engine.stats(), before, 'nothing logged or counted')
  t.equal(engine.store.nextSeq, before.nextSeq)
  await t.rejects(engine.ingest([rollout('small', 'p')]), DiskFullError, 'while full, even a small frame is refused')
  t.equal(engine.error, undefined, 'a full disk is not a failure')

  // a reading at the resume mark clears it; the same frame is taken then
  disk.free = 40 * MiB
  await engine.disk!.check()
  t.same(await engine.ingest([rollout('small', 'p')]), { acked: ['small'], rejected: [], duplicates: 0 })
})

t.test('what the engine writes is counted against the free space: frames, batches, policy records', async (t) => {
  const disk = fakeDisk(500 * MiB)
  const { engine, committed } = await openEngine(t, { diskReserveBytes: 10 * MiB, statfs: disk.statfs })
  const free = () => engine.disk!.state.free
  await engine.ingest([rollout('a0', 'a'), rollout('a1', 'a')])
  t.equal(free(), 500 * MiB - (2 * 64 + 8192), 'items given as objects: 64 bytes each, plus a transaction')
  const items = [rollout('b0', 'b'), rollout('b1', 'b')]
  const raw = { bytes: wirePackr.pack({ type: 'rollouts', rollouts: items }), format: 'msgpack' as const }
  let last = free()
  await engine.ingest(items, raw)
  await engine.settled()
  t.equal(committed.length, 1, 'two prompts made a batch')
  const batch = committed[0]
  t.equal(
    last - free(),
    raw.bytes.length + 8192 + (batch.delivery.bytes.length + 4 * 8 + 8192),
    'the frame as it arrived, then the batch, its consumption and a transaction',
  )
  last = free()
  t.equal(await engine.acknowledge(1, 3), true)
  t.equal(last - free(), 8192, 'the policy record')
  t.equal(disk.reads, 1, 'far above the reserve: no extra reading')
})

t.test('a failed ingest write stops the engine: failed, failureCause, and nothing more is written', async (t) => {
  const clock = new VirtualClock(1000)
  const { engine, committed, dataDir } = await openEngine(t, {
    scheduler: clock,
    watermarkIntervalMs: 100,
    diskReserveBytes: 10 * MiB,
    statfs: fakeDisk(500 * MiB).statfs,
  })
  t.equal(await engine.failureCause(), undefined, 'no failure, no cause')
  let failedWith: unknown = 'not yet'
  void engine.failed.then((error) => (failedWith = error))
  await engine.ingest(prompts('a', 0, 2))
  await engine.ingest([rollout('w0', 'w')]) // a group left waiting: watermarks are due
  await engine.settled()
  t.equal(committed.length, 1)
  const transacts = countCalls(engine, 'transact')
  clock.advance(100)
  t.equal(transacts.calls, 1, 'before the failure, a watermark is logged on the timer')
  await engine.settled()

  const commits = countCalls(engine, 'commitBatch')
  const acks = countCalls(engine, 'acknowledge')
  const failure = Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28 })
  failNext(engine, 'transact', failure)
  const lost = engine.ingest([rollout('x0', 'x')])
  // logged after the failed frame: it is fed, completes a batch, and that batch is not committed
  const logged = engine.ingest(prompts('b', 0, 2))
  await t.rejects(lost, failure)
  t.equal(await engine.failed, failure, '`failed` resolves with the first failure')
  t.equal(engine.error, failure)
  t.equal(failedWith, failure)
  t.same((await logged).acked.length, 4, 'a frame already on its way to disk is still acknowledged')
  await engine.settled()
  t.equal(commits.calls, 0, 'the batch it completed is not committed')
  t.equal(committed.length, 1)
  t.equal(engine.stats().step, 1)

  await t.rejects(engine.ingest([rollout('y0', 'y')]), failure, 'nothing more is taken')
  t.equal(await engine.acknowledge(1), true, 'a pending step is still known')
  t.equal(acks.calls, 0, 'but its removal is not written')
  await t.rejects(engine.acknowledge(1, 5), failure, 'a policy version cannot be logged')
  const calls = transacts.calls
  clock.advance(1000)
  t.equal(transacts.calls, calls, 'no watermark after the failure')

  const cause = await engine.failureCause()
  t.match(cause, `ENOSPC: no space left on device, write (errno 28); data folder ${dataDir}: `)
  t.match(cause, /, reserve 10\.0 MiB$/, 'with the disk reserve')
})

t.test('failed batch commits, acknowledgements and watermarks stop the engine too; lmdb-js’s commitError is handled', async (t) => {
  await t.test('a batch commit with the cause in commitError', async (t) => {
    const { engine } = await openEngine(t)
    let causeRejected!: (reason: unknown) => void
    const commitError = new Promise((_resolve, reject) => (causeRejected = reject))
    const failure = Object.assign(new Error('Commit failed (see commitError for details)'), { commitError })
    failNext(engine, 'commitBatch', failure)
    await engine.ingest(prompts('a', 0, 2))
    await engine.settled()
    t.equal(await engine.failed, failure)
    // the cause arrives later: handled by the engine (no unhandled rejection), read by failureCause
    causeRejected(Object.assign(new Error('No space left on device'), { code: 28 }))
    t.match(await engine.failureCause(), /^Commit failed \(see commitError for details\): No space left on device \(ENOSPC, errno 28\); data folder /)
  })

  await t.test('an acknowledgement whose removal fails', async (t) => {
    const { engine } = await openEngine(t)
    await engine.ingest(prompts('a', 0, 2))
    await engine.settled()
    const failure = new Error('EIO: i/o error')
    failNext(engine, 'acknowledge', failure)
    t.equal(await engine.acknowledge(1), true)
    t.equal(await engine.failed, failure, 'not an unhandled rejection: the engine stops')
  })

  await t.test('a watermark whose write fails', async (t) => {
    const clock = new VirtualClock(1000)
    const { engine } = await openEngine(t, { scheduler: clock, watermarkIntervalMs: 100 })
    await engine.ingest([rollout('w0', 'w')])
    await engine.settled()
    const failure = new Error('EIO: i/o error')
    failNext(engine, 'transact', failure)
    clock.advance(100)
    t.equal(await engine.failed, failure)
  })
})

t.test('a write lmdb-js never settles after a failure: its caller hears of the failure a second later, not never', async (t) => {
  const { engine, clock } = await openEngine(t)
  const store = engine.store as unknown as { transact: () => Promise<void> }
  const transact = store.transact
  store.transact = () => new Promise(() => {})
  const stranded = engine.ingest([rollout('x0', 'x')])
  let outcome = 'pending'
  stranded.then(
    () => (outcome = 'acked'),
    () => (outcome = 'failed'),
  )
  store.transact = transact
  const failure = new Error('EIO: i/o error')
  failNext(engine, 'transact', failure)
  await t.rejects(engine.ingest([rollout('y0', 'y')]), failure)
  await engine.failed
  clock.advance(999)
  await new Promise((resolve) => setImmediate(resolve))
  t.equal(outcome, 'pending', 'a write in flight may still settle for a while')
  clock.advance(1)
  await t.rejects(stranded, failure, 'then its frame is answered with the failure')
})

t.test('closing a failed engine does not wait for LMDB beyond a bound', async (t) => {
  await t.test('the LMDB environment of a failed engine is left to the process exit', async (t) => {
    const { engine } = await openEngine(t)
    failNext(engine, 'transact', new Error('EIO: i/o error'))
    await t.rejects(engine.ingest([rollout('x0', 'x')]))
    await engine.failed
    const close = engine.store.close.bind(engine.store)
    let closes = 0
    engine.store.close = async () => {
      closes++
    }
    await engine.close()
    t.equal(closes, 0, 'not closed after the failure')
    await engine.close()
    t.pass('closing again does nothing')
    await close()
  })

  await t.test('a write that never settles', async (t) => {
    const { engine } = await openEngine(t)
    const store = engine.store as unknown as { transact: () => Promise<void> }
    const transact = store.transact
    store.transact = () => new Promise(() => {}) // lmdb-js after a failed commit may never answer
    void engine.ingest([rollout('x0', 'x')])
    store.transact = transact
    failNext(engine, 'transact', new Error('EIO: i/o error'))
    await t.rejects(engine.ingest([rollout('y0', 'y')]))
    await engine.failed
    const started = Date.now()
    await engine.close()
    const waited = Date.now() - started
    t.ok(waited >= 1900 && waited < 5000, `closed after the 2 s bound (${waited} ms)`)
  })
})
