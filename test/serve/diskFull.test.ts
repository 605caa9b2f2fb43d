/**
 * The server at the edge of its disk and after an engine failure (streams/engineServer.ts,
 * streams/ingestEndpoint.ts): while the data folder is at its reserve producers get no credit,
 * a frame that does not fit is answered `disk-full` in its turn and nothing is logged,
 * `/healthz` says `disk-full` (503) with the watermarks, and credit comes back by itself once a
 * reading shows space at the resume mark. After an engine failure: credit 0, `/healthz` says
 * `failed`, and closing answers every frame received before closing the connections with 1011.
 * The disk is a fake `statfs` read on a virtual clock.
 */
import t, { type Test } from 'tap'
import { parseConfig } from '../../src/core/config.js'
import type { DiskSpace } from '../../src/state/diskGuard.js'
import { DurableEngine, type IngestOutcome } from '../../src/state/durableEngine.js'
import { EngineServer, type EngineServerOptions } from '../../streams/engineServer.js'
import { VirtualClock } from '../support/virtualTime.js'
import { baseConfig, Client, pack, prompts, tempDir } from './support.js'

const MiB = 1024 ** 2
const RESERVE = 10 * MiB

/** A filesystem whose free space the test sets. */
function fakeDisk(free: number, total = 1024 * MiB) {
  const disk = { free, total, statfs: async (): Promise<DiskSpace> => ({ free: disk.free, total: disk.total }) }
  return disk
}

/** An engine watching a fake disk (read every second of `clock`) behind a server on a free port. */
async function serveOnDisk(t: Test, free: number, options: Partial<Omit<EngineServerOptions, 'engine'>> = {}) {
  const clock = new VirtualClock(1000)
  const disk = fakeDisk(free)
  const engine = await DurableEngine.open({
    config: parseConfig(baseConfig),
    dataDir: tempDir(),
    watermarkIntervalMs: 0,
    scheduler: clock,
    diskReserveBytes: RESERVE,
    diskCheckMs: 1000,
    statfs: disk.statfs,
  })
  const server = new EngineServer({ engine, heartbeatMs: 0, ...options })
  const { port } = await server.listen(0, '127.0.0.1')
  t.teardown(async () => {
    await server.close()
    await engine.close()
  })
  const health = async () => {
    const response = await fetch(`http://127.0.0.1:${port}/healthz`)
    return { status: response.status, body: (await response.json()) as Record<string, any> } // eslint-disable-line @typescript-eslint/no-explicit-any
  }
  return { engine, server, clock, disk, health, url: (path: string) => `ws://127.0.0.1:${port}${path}` }
}

/** A deferred outcome for a wrapped `engine.ingest` call. */
interface Held {
  resolve(): void
  reject(error: unknown): void
}

/**
 * Wraps `engine.ingest`: the calls numbered in `hold` (1-based) are made at once but their
 * outcome is released by the test (`held(n)`, which waits for the call); `never` leaves them
 * unsettled for good.
 */
function holdIngests(engine: DurableEngine, hold: number[], never = false): { held(n: number): Promise<Held> } {
  const original = engine.ingest.bind(engine)
  const calls: ((held: Held) => void)[] = []
  const held = hold.map((n) => new Promise<Held>((resolve) => (calls[n] = resolve)))
  let count = 0
  engine.ingest = (...args: Parameters<DurableEngine['ingest']>): Promise<IngestOutcome> => {
    const n = ++count
    if (!hold.includes(n)) return original(...args)
    if (never) {
      calls[n]({ resolve: () => {}, reject: () => {} })
      return new Promise(() => {})
    }
    const written = original(...args)
    // the write's own failure is reported by the engine: here only what the producer hears is held
    written.catch(() => {})
    return new Promise<IngestOutcome>((resolve, reject) => calls[n]({ resolve: () => resolve(written), reject }))
  }
  return { held: (n) => held[hold.indexOf(n)] }
}

const answers = (client: Client) =>
  client.frames.filter((f) => f.type !== 'credit').map((f) => (f.type === 'ack' ? `ack ${f.ids.length}` : `${f.type} ${f.code}`))

t.test('a full disk: disk-full answered in frame order, credit 0, /healthz 503 disk-full; credit back once space is back', async (t) => {
  // room above the reserve for the small frame (and 8 KiB of transaction overhead), not for the larger one
  const small = prompts('a', 1)
  const large = prompts('b', 5)
  const served = await serveOnDisk(t, RESERVE + 8192 + pack({ type: 'rollouts', rollouts: small }).length + 100)
  const { held } = holdIngests(served.engine, [1])
  const producer = await Client.open(served.url('/ingest'))
  t.equal((await producer.nth('credit')).credit, 4096)
  t.match((await served.health()).body, { status: 'ok', disk: { full: false, reserve: RESERVE, resume: 2 * RESERVE } })

  producer.send({ type: 'rollouts', rollouts: small })
  producer.send({ type: 'rollouts', rollouts: large })
  await producer.until(() => producer.credit === 0, 10_000, 'credit 0')
  t.same(answers(producer), [], 'the refused frame waits for the answer of the frame before it')
  ;(await held(1)).resolve()
  await producer.until(() => producer.count('error') === 1, 10_000, 'the disk-full answer')
  t.same(answers(producer), ['ack 2', 'error disk-full'], 'answers in frame order')
  t.match(
    producer.of('error')[0].reason,
    /^disk nearly full at .+: .+ free of 1\.0 GiB, 10\.0 MiB must stay free \(--disk-reserve\) and this frame needs .+; rollouts/,
  )
  t.equal(served.engine.stats().ingest.ingested, 2, 'the refused frame was not logged')

  const health = await served.health()
  t.equal(health.status, 503)
  t.match(health.body, { status: 'disk-full', credit: 0, frameErrors: { 'disk-full': 1 }, disk: { full: true, reserve: RESERVE, resume: 2 * RESERVE } })
  t.notOk('error' in health.body)

  const late = await Client.open(served.url('/ingest'))
  t.equal((await late.nth('credit')).credit, 0, 'a producer connecting while the disk is full gets no credit')

  // space comes back: the next reading clears the guard and every producer hears of it
  served.disk.free = 100 * MiB
  served.clock.advance(1000)
  await producer.until(() => producer.credit === 4096, 10_000, 'credit back')
  await late.until(() => late.credit === 4096, 10_000, 'credit back for the other producer')
  producer.send({ type: 'rollouts', rollouts: large })
  await producer.until(() => producer.count('ack') === 2, 10_000, 'the frame sent again is acknowledged')
  t.equal(producer.of('ack')[1].ids.length, 10)
  t.match(await served.health(), { status: 200, body: { status: 'ok', disk: { full: false } } })
  await late.close()
  await producer.close()
})

t.test('a disk that fills up as batches are written: the producers are told at once', async (t) => {
  // a small frame fits; the batch it completes is written past the reserve
  const served = await serveOnDisk(t, RESERVE + 8192 + 2000)
  const producer = await Client.open(served.url('/ingest'))
  await producer.nth('credit')
  producer.send({ type: 'rollouts', rollouts: prompts('a', 2) })
  await producer.nth('ack')
  await producer.until(() => producer.credit === 0, 10_000, 'credit 0')
  t.equal(served.engine.disk?.isFull, true)
  t.equal(served.engine.stats().step, 1, 'the batch was committed (it was past the reserve, not past the disk)')
  await producer.close()
})

t.test('after an engine failure: credit 0, /healthz failed; closing answers every frame first, then closes with 1011', async (t) => {
  const failures: unknown[] = []
  const served = await serveOnDisk(t, 500 * MiB, { onFailure: (error) => failures.push(error) })
  const failure = new Error('Commit failed (see commitError for details)')
  const store = served.engine.store as unknown as { commitBatch: () => Promise<void> }
  store.commitBatch = () => Promise.reject(failure)
  const { held } = holdIngests(served.engine, [2])
  const writer = await Client.open(served.url('/ingest'))
  const waiting = await Client.open(served.url('/ingest'))
  await writer.nth('credit')
  await waiting.nth('credit')
  // the writer's frame completes a batch whose commit fails; the other's frame is still on its way
  writer.send({ type: 'rollouts', rollouts: prompts('w', 2) })
  await writer.nth('ack')
  waiting.send({ type: 'rollouts', rollouts: prompts('h', 1) })
  const waitingFrame = await held(2)
  t.equal(await served.engine.failed, failure)
  await writer.until(() => writer.credit === 0, 10_000, 'credit 0 for the writer')
  await waiting.until(() => waiting.credit === 0, 10_000, 'credit 0 for the waiting producer')
  t.same(failures, [failure], 'onFailure once')
  const health = await served.health()
  t.equal(health.status, 503)
  t.match(health.body, { status: 'failed', error: String(failure), credit: 0, disk: { full: false } })

  const late = await Client.open(served.url('/ingest'))
  t.equal((await late.nth('credit')).credit, 0, 'no credit for a producer connecting after the failure')

  let closed = false
  const closing = served.server.close().then(() => (closed = true))
  // a few turns of the event loop: closing cannot finish before the frame is answered
  for (let turn = 0; turn < 20; turn++) await new Promise((resolve) => setImmediate(resolve))
  t.notOk(closed, 'closing waits for the unanswered frame')
  t.equal(writer.closed, undefined, 'no connection is closed before every frame is answered')
  waitingFrame.reject(failure)
  await closing
  await waiting.until(() => waiting.closed !== undefined, 10_000, 'the close')
  t.same(answers(waiting), ['error engine'], 'the waiting frame got its answer')
  t.same(waiting.closed, { code: 1011, reason: 'engine failure' })
  await writer.until(() => writer.closed !== undefined, 10_000, 'the close')
  t.same(writer.closed, { code: 1011, reason: 'engine failure' })
  await late.until(() => late.closed !== undefined, 10_000, 'the close')
  t.equal(late.closed!.code, 1011)
})

t.test('after an engine failure, closing does not wait for an answer forever', async (t) => {
  const served = await serveOnDisk(t, 500 * MiB, { closeTimeoutMs: 100 })
  const store = served.engine.store as unknown as { commitBatch: () => Promise<void> }
  store.commitBatch = () => Promise.reject(new Error('EIO'))
  const { held } = holdIngests(served.engine, [2], true)
  const writer = await Client.open(served.url('/ingest'))
  const stuck = await Client.open(served.url('/ingest'))
  await writer.nth('credit')
  await stuck.nth('credit')
  writer.send({ type: 'rollouts', rollouts: prompts('w', 2) })
  await writer.nth('ack')
  stuck.send({ type: 'rollouts', rollouts: prompts('s', 1) })
  await held(2)
  await served.engine.failed
  await stuck.until(() => stuck.credit === 0, 10_000, 'credit 0')
  const started = Date.now()
  await served.server.close()
  const waited = Date.now() - started
  t.ok(waited >= 1900 && waited < 5000, `closed after the 2 s bound (${waited} ms)`)
  await writer.until(() => writer.closed !== undefined, 10_000, 'the close')
  t.equal(writer.closed!.code, 1011)
  await stuck.until(() => stuck.closed !== undefined, 10_000, 'the close')
  t.equal(stuck.closed!.code, 1011, 'the unanswered producer is closed too')
  t.same(answers(stuck), [], 'its frame was never answered')
})
