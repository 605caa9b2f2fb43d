/**
 * The Python client package (examples/python/dualstream_client) against a live server: credit
 * kept, refused items raised with index/id/field/reason, 401s naming the token, payloads and
 * batch fields as sent, the trainer's state persisted before its ack and redeliveries skipped,
 * a second connection for a rank raising Replaced, and the blocking facade.
 */
import { join } from 'node:path'
import { readFileSync } from 'node:fs'
import t from 'tap'
import { startServer, tempDir } from '../serve/support.js'
import { promisify } from 'node:util'
import { execFile as execFileCallback } from 'node:child_process'
import { DiskFullError } from '../../src/state/durableEngine.js'
import { examples, missing, PYTHON, pythonEnv, scenario } from './support.js'

const execFile = promisify(execFileCallback)

t.test('credit: concurrent send() calls never go past it; overrunning it is what the server pauses', { skip: missing }, async (t) => {
  // an outbox this large never shrinks the credit: any pause is the producer's doing
  const served = await startServer({ credit: 50, maxOutbox: 100_000 })
  t.teardown(() => served.close())
  const result = await scenario(['credit', '--url', served.url('/ingest'), '--n', '200', '--calls', '3', '--frame', '30'])
  t.match(result, { acked: 600, credit: 50, connections: 1, resent: 0 })
  t.equal(served.server.health().pauses, 0, 'never more rollouts unanswered than the credit')
  t.equal(served.server.health().ingest.ingested, 600)

  // the control: the same producer told to ignore the credit overruns it (and still gets everything acknowledged)
  const overrun = await scenario(['credit', '--url', served.url('/ingest'), '--n', '200', '--calls', '1', '--frame', '200', '--ignore-credit'])
  t.match(overrun, { acked: 200 })
  t.ok(served.server.health().pauses > 0, 'the server paused the producer that ignored its credit')
})

t.test('refused items raise Rejected with index, id, field and reason; the rest is durable', { skip: missing }, async (t) => {
  const served = await startServer()
  t.teardown(() => served.close())
  const result = await scenario(['rejected', '--url', served.url('/ingest')])
  t.same(result.errors, [
    { index: 3, id: 'bad-nan', field: 'rewards.accuracy', reason: 'not a finite number (NaN)' },
    { index: 7, id: 'bad-type', field: 'rewards.accuracy', reason: 'must be a finite number or null, got the string "high"' },
  ])
  t.same([...result.acked].sort(), ['ok0', 'ok1', 'ok2', 'ok4', 'ok5', 'ok6', 'ok8', 'ok9'])
  t.match(result.message, /^2 rollout\(s\) refused \(8 acknowledged\): #3 'bad-nan' rewards\.accuracy: not a finite number \(NaN\)/)
  t.equal(result.clean, null, 'the concurrent clean send() returned normally')
  t.equal(result.isDualstreamError, true)
  t.equal(served.server.health().ingest.ingested, 14)
})

t.test('rollouts too large for a frame are refused as items (frames split in halves); disk-full frames are sent again', { skip: missing }, async (t) => {
  const served = await startServer({ limits: { maxFrameBytes: 4000 } })
  t.teardown(() => served.close())
  const result = await scenario(['too-large', '--url', served.url('/ingest'), '--big', '5000', '--huge', '9000'])
  t.match(result.refused.errors, [
    { index: 1, id: 's1', field: null, reason: /^too-large: / },
    { index: 3, id: 's3', field: null, reason: /^too-large: the server closed the connection \(1009, message too big\)/ },
  ])
  t.same(result.refused.acked, ['s0', 's2', 's4'])
  t.ok(result.connections >= 2, 'reconnected after each 1009 close')
  t.ok(result.errors.includes('too-large'))

  // the engine answers the 1st and 3rd frames `disk-full` (nothing logged): the CLI producer sends them again
  const original = served.engine.ingest.bind(served.engine)
  let calls = 0
  served.engine.ingest = (...args: Parameters<typeof original>) =>
    ++calls % 2 === 1 && calls < 4 ? Promise.reject(new DiskFullError('disk nearly full (test)')) : original(...args)
  const produced = await execFile(PYTHON, [join(examples, 'producer.py'), '--url', served.url('/ingest'), '--synthetic', '40', '--frame', '10'], {
    env: pythonEnv(),
  })
  const summary = JSON.parse(produced.stdout)
  t.match(summary, { rollouts: 40, acked: 40, unacknowledged: 0, rejected: [], reconnects: 0 })
  t.same(
    summary.errors.map((e: { code: string }) => e.code),
    ['disk-full', 'disk-full'],
  )
  t.equal(served.server.health().ingest.ingested, 3 + 40)
})

t.test('a wrong or missing token: Unauthorized with the server’s reason, for the producer and the trainer', { skip: missing }, async (t) => {
  const served = await startServer({ tokens: { producer: 'producer-secret', trainer: 'trainer-secret' } })
  t.teardown(() => served.close())
  const wrong = await scenario(['unauthorized', '--role', 'producer', '--url', served.url('/ingest'), '--token', 'nope'])
  t.match(wrong, { type: 'Unauthorized', status: 401, reason: 'wrong token for role producer' })
  t.match(wrong.message, /^401: wrong token for role producer \(ws:\/\/127\.0\.0\.1:\d+\/ingest\)$/)
  const other = await scenario(['unauthorized', '--role', 'trainer', '--url', served.url('/batches'), '--token', 'producer-secret'])
  t.match(other, { type: 'Unauthorized', status: 401 })
  t.match(other.message, /^401: a producer token cannot open this endpoint: the trainer token is required/)
  const none = await scenario(['unauthorized', '--role', 'trainer', '--url', served.url('/batches')], { DUALSTREAM_TRAINER_TOKEN: '' })
  t.match(none.message, /^401: missing token: the trainer token is required/)
  // the environment variable is the default token
  const fromEnv = await scenario(['unauthorized', '--role', 'trainer', '--url', served.url('/batches')], { DUALSTREAM_TRAINER_TOKEN: 'trainer-secret' })
  t.same(fromEnv, { opened: true })
  const notFound = await scenario(['unauthorized', '--role', 'producer', '--url', served.url('/nowhere'), '--token', 'producer-secret'])
  t.match(notFound, { type: 'ServerRefused', status: 404 })
})

t.test('trainer: payloads untouched, batch fields, state saved before the ack, restored and redeliveries skipped', { skip: missing }, async (t) => {
  const served = await startServer()
  t.teardown(() => served.close())
  const state = join(tempDir('dualstream-py-roundtrip-'), 'trainer.json')
  const result = await scenario(['roundtrip', '--ingest', served.url('/ingest'), '--batches', served.url('/batches'), '--state', state, '--n', '16'])
  t.same(result.first, { lastStep: 0, state: {}, policyVersion: null })
  t.same(
    result.seen.map((s: { step: number }) => s.step),
    [1, 2, 3],
  )
  const delivered = [...served.engine.store.summaries()].map((s) => s.summary as { lambda: Record<string, { after: number }> })
  for (const [i, seen] of result.seen.entries()) {
    t.match(seen, { payloadsIntact: true, binIsBytes: true, advantagesMatch: true, batchSize: 4, shard: null })
    t.equal(seen.advantagesType, result.numpy ? 'ndarray float64' : 'list', 'advantages: numpy float64 when numpy imports')
    t.same(seen.lambda, { consistency: delivered[i].lambda.consistency.after })
    t.same(seen.constraints, ['consistency'])
  }
  t.same(new Set(result.seen.flatMap((s: { ids: string[] }) => s.ids)).size, 12)
  t.same(result.restored, { lastStep: 4, state: { checkpoint: 'ckpt-4' }, policyVersion: 99 }, 'the state written before the (never sent) ack')
  t.equal(result.skipped, 1, 'step 4, redelivered after the restart, acknowledged and skipped')
  t.equal(result.following, 5)
  t.same(result.final, { lastStep: 5, policyVersion: 99, state: { checkpoint: 'ckpt-4' } }, 'an ack without state keeps the previous state')
  await served.server.close()
  t.equal(served.server.health().outbox, 0, 'every step acknowledged, the skipped one too')
  t.same(JSON.parse(readFileSync(state, 'utf8')).lastStep, 5)
})

t.test('a second connection for the same rank: the first raises Replaced instead of reconnecting', { skip: missing }, async (t) => {
  const served = await startServer()
  t.teardown(() => served.close())
  const result = await scenario(['replaced', '--batches', served.url('/batches')])
  t.match(result.raised, { type: 'Replaced', rank: 0, world_size: 1, close_code: 4001 })
  t.match(result.raised.message, /^rank 0 of 1: another trainer connection took this rank/)
})

t.test('the blocking facade: SyncProducer from two threads, Rejected through it, SyncTrainer', { skip: missing }, async (t) => {
  const served = await startServer()
  t.teardown(() => served.close())
  const state = join(tempDir('dualstream-py-sync-'), 'trainer.json')
  const result = await scenario(['sync', '--ingest', served.url('/ingest'), '--batches', served.url('/batches'), '--state', state, '--steps', '4'])
  t.match(result, { credit: 4096, acked: 19, steps: [1, 2, 3, 4], timedOut: null })
  t.same(result.refused, [{ index: 2, id: 's2-2', field: 'rewards.accuracy', reason: 'must be a finite number or null, got the string "high"' }])
  t.same(result.saved, { lastStep: 4, state: { checkpoint: 'ckpt-4' }, policyVersion: 4 })
  await served.server.close()
  t.equal(served.server.health().outbox, 0, 'every step acknowledged through the facade')
})
