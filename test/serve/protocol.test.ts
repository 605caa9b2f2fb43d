import { once } from 'node:events'
import { request } from 'node:http'
import t from 'tap'
import { replayLog } from '../../src/state/logReplay.js'
import { parseConfig } from '../../src/core/config.js'
import { DurableEngine } from '../../src/state/durableEngine.js'
import { EngineServer } from '../../streams/engineServer.js'
import { VirtualClock } from '../support/virtualTime.js'
import { baseConfig, Client, prompts, rollout, startServer, tempDir } from './support.js'

const httpGet = (port: number, path: string): Promise<{ status: number; body: string }> =>
  new Promise((resolve, reject) => {
    request({ host: '127.0.0.1', port, path }, (res) => {
      let body = ''
      res.on('data', (c: Buffer) => (body += c.toString()))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
    })
      .on('error', reject)
      .end()
  })

t.test('round trip: rollouts in, acks once durable, item errors beside, batches out in step order, acks back', async (t) => {
  const served = await startServer()
  t.teardown(() => served.close())
  const producer = await Client.open(served.url('/ingest'))
  t.same(await producer.nth('credit'), { type: 'credit', credit: 4096 }, 'the credit comes first')
  producer.send({
    type: 'rollouts',
    rollouts: [
      rollout('a', 'p', 1, 1),
      { id: 'r9', promptId: 'p', rewards: { accuracy: NaN } },
      rollout('c', 'p', 0, 0, { payload: { tokens: [1, 2] } }),
      rollout('a', 'p', 1, 1),
      7,
    ],
  })
  const rejected = await producer.nth('rejected')
  t.same(rejected, {
    type: 'rejected',
    errors: [
      { index: 1, id: 'r9', field: 'rewards.accuracy', reason: 'not a finite number (NaN)' },
      { index: 4, field: '(rollout)', reason: 'must be an object, got 7' },
    ],
  })
  t.same(await producer.nth('ack'), { type: 'ack', ids: ['a', 'c', 'a'] }, 'valid items of the same frame are accepted; a duplicate is acked')
  t.equal(producer.frames.indexOf(rejected) + 1, producer.frames.indexOf(producer.of('ack')[0]), 'rejected comes right before the ack of its frame')
  producer.send({ type: 'rollouts', rollouts: prompts('q', 3) })
  await producer.nth('ack', 2)

  const trainer = await Client.open(served.url('/batches'))
  const first = await trainer.nth('batch', 1)
  const second = await trainer.nth('batch', 2)
  t.same([first.step, second.step], [1, 2])
  t.match(first, { type: 'batch', lambda: { consistency: { before: 0 } }, constraints: { consistency: { count: 4 } } })
  t.same(
    first.rollouts.map((r: { id: string; promptId: string }) => [r.id, r.promptId]),
    [
      ['a', 'p'],
      ['c', 'p'],
      ['q0-0', 'q0'],
      ['q0-1', 'q0'],
    ],
  )
  t.same(first.rollouts[1].payload, { tokens: [1, 2] }, 'the payload passes through untouched')
  t.type(first.rollouts[0].advantage, 'number')
  trainer.send({ type: 'ack', step: 1, policyVersion: 3 })
  trainer.send({ type: 'ack', step: 2 })
  // frames are handled in order: once a later frame is answered, the acks before it were received
  trainer.send({ type: 'nonsense' })
  await trainer.nth('error')
  await served.server.acknowledgementsApplied()
  const health = await httpGet(served.port, '/healthz')
  t.equal(health.status, 200)
  t.match(JSON.parse(health.body), {
    status: 'ok',
    step: 2,
    outbox: 0,
    pendingRollouts: 0,
    ingest: { ingested: 8, duplicate: 1, rejected: { rewards: 1, shape: 1 } },
    pipeline: { batches: 2, rolloutsInBatches: 8 },
    credit: 4096,
    producers: 1,
    trainer: true,
    delivered: 2,
  })
  const live = served.engine.stats().lambda
  await producer.close()
  await trainer.close()
  await served.close()
  const replayed: number[] = []
  await replayLog(parseConfig(baseConfig), served.dataDir, (b) => replayed.push(b.lambda.consistency.after))
  t.same(replayed.at(-1), live.consistency, 'the log replays to the same λ')
  t.equal((await served.engine.stats()).step, 2)
})

t.test('JSON in text frames, and ?format=json answers in JSON', async (t) => {
  const served = await startServer()
  t.teardown(() => served.close())
  const producer = await Client.open(served.url('/ingest', 'format=json'))
  producer.ws.send(JSON.stringify({ type: 'rollouts', rollouts: prompts('j', 2) }))
  t.same(await producer.nth('ack'), { type: 'ack', ids: ['j0-0', 'j0-1', 'j1-0', 'j1-1'] })
  t.ok(producer.frames.length >= 2)
  const trainer = await Client.open(served.url('/batches', 'format=json'))
  const batch = await trainer.nth('batch')
  t.equal(batch.step, 1)
  trainer.ws.send(JSON.stringify({ type: 'ack', step: 1 }))
  const raw = await new Promise<{ data: Buffer; isBinary: boolean }>((resolve) => {
    producer.ws.once('message', (data: Buffer, isBinary) => resolve({ data, isBinary }))
    producer.ws.send('{"type":"nope"}')
  })
  t.equal(raw.isBinary, false, 'a JSON connection gets text frames')
  t.match(JSON.parse(raw.data.toString()), { type: 'error', code: 'unknown-type' })
  await producer.close()
  await trainer.close()
})

t.test('frame-level errors carry a code and a reason, and the connection goes on', async (t) => {
  const served = await startServer({ maxRolloutsPerFrame: 3, maxErrorsPerFrame: 2 })
  t.teardown(() => served.close())
  const producer = await Client.open(served.url('/ingest'))
  const errors: [unknown, object][] = [
    [
      { type: 'ack', step: 1 },
      { code: 'unknown-type', reason: 'unknown frame type "ack" on /ingest (expected "rollouts")' },
    ],
    [
      { type: 'rollouts', rollouts: 'many' },
      { code: 'bad-frame', reason: 'rollouts: must be an array of rollouts, got the string "many"' },
    ],
    [{ type: 'rollouts' }, { code: 'bad-frame', reason: 'rollouts: must be an array of rollouts, got nothing' }],
    [
      { type: 'rollouts', rollouts: [1, 2, 3, 4] },
      { code: 'too-many-rollouts', reason: 'rollouts: 4 items in one frame, at most 3 are accepted (split the frame)' },
    ],
    [[1, 2], { code: 'bad-frame', reason: 'a frame must be a map with a string "type", got an array' }],
  ]
  for (const [frame] of errors) producer.send(frame)
  producer.ws.send(Buffer.from([0x92, 0x01]))
  await producer.until(() => producer.of('error').length === errors.length + 1)
  t.same(
    producer.of('error').slice(0, errors.length),
    errors.map(([, e]) => ({ type: 'error', ...e })),
  )
  t.match(producer.of('error').at(-1), { code: 'decode', reason: 'not valid MessagePack: byte 0: declares 2 elements but only 1 bytes follow' })
  producer.send({ type: 'rollouts', rollouts: [{ id: 'x' }, { id: 'y' }, { id: 'z', promptId: 'p', rewards: [] }] })
  const rejected = await producer.nth('rejected')
  t.equal(rejected.errors.length, 2, 'at most maxErrorsPerFrame errors')
  t.equal(rejected.truncated, 3, 'the rest are counted')
  t.same(await producer.nth('ack'), { type: 'ack', ids: [] })

  const trainer = await Client.open(served.url('/batches'))
  const bad: [unknown, RegExp][] = [
    [{ type: 'rollouts', rollouts: [] }, /unknown frame type "rollouts" on \/batches \(expected "ack"\)/],
    [{ type: 'ack' }, /^step: must be an integer >= 1, got nothing$/],
    [{ type: 'ack', step: 0 }, /^step: must be an integer >= 1, got 0$/],
    [{ type: 'ack', step: 1.5 }, /got 1.5/],
    [{ type: 'ack', step: 7 }, /^step: 7 has not been delivered \(the last committed step is 0\)$/],
  ]
  for (const [frame] of bad) trainer.send(frame)
  trainer.ws.send('{"type":')
  bad.push([undefined, /^not valid JSON: /])
  await trainer.until(() => trainer.of('error').length === bad.length)
  bad.forEach(([, reason], i) => t.match(trainer.of('error')[i].reason, reason))
  t.match(trainer.of('error')[1], { code: 'bad-ack' })
  producer.send({ type: 'rollouts', rollouts: prompts('k', 1) })
  producer.send({ type: 'rollouts', rollouts: prompts('l', 1) })
  await trainer.nth('batch')
  trainer.send({ type: 'ack', step: 1, policyVersion: -1 })
  await trainer.until(() => trainer.of('error').length === bad.length + 1)
  t.match(trainer.of('error').at(-1), { code: 'bad-ack', reason: 'policyVersion: must be an integer >= 0, got -1' })
  trainer.send({ type: 'ack', step: 1, policyVersion: null })
  trainer.send({ type: 'ack', step: 1 })
  // a frame answered after them proves the acks were received; then they are applied
  trainer.send({ type: 'nonsense' })
  await trainer.until(() => trainer.of('error').length === bad.length + 2)
  await served.server.acknowledgementsApplied()
  t.equal(served.server.health().outbox, 0, 'a step acknowledged twice counts once')
  t.equal(trainer.of('error').at(-2)?.code, 'bad-ack', 'a repeated ack is harmless and not an error')
  t.match(served.server.health().frameErrors, { 'unknown-type': 3, 'bad-frame': 3, 'too-many-rollouts': 1, decode: 2, 'bad-ack': 5 })
  await producer.close()
  await trainer.close()
})

t.test('frames over the size limit: an error frame; far over it, ws closes with 1009', async (t) => {
  const served = await startServer({ limits: { maxFrameBytes: 1024 } })
  t.teardown(() => served.close())
  const producer = await Client.open(served.url('/ingest'))
  producer.send({ type: 'rollouts', rollouts: [], pad: 'x'.repeat(1500) })
  t.match(await producer.nth('error'), { code: 'too-large', reason: /^frame of 15\d\d bytes exceeds the limit of 1024 bytes$/ })
  producer.send({ type: 'rollouts', rollouts: prompts('s', 1) })
  t.same((await producer.nth('ack')).ids, ['s0-0', 's0-1'], 'the connection goes on')
  const huge = await Client.open(served.url('/ingest'))
  huge.send({ type: 'rollouts', pad: 'x'.repeat(4096) })
  await huge.until(() => huge.closed !== undefined)
  t.equal(huge.closed!.code, 1009, 'message too big')
  // a frame with a reserved opcode is a protocol error: ws closes with 1002
  const rogue = await Client.open(served.url('/ingest'))
  ;(rogue.ws as unknown as { _socket: { write(b: Buffer): void } })._socket.write(Buffer.from([0x83, 0x80, 0, 0, 0, 0]))
  await rogue.until(() => rogue.closed !== undefined)
  t.equal(rogue.closed!.code, 1002)
  t.match(served.server.health().frameErrors, { 'too-large': 2, protocol: 1 })
  producer.send({ type: 'rollouts', rollouts: prompts('s', 2) })
  await producer.nth('ack', 2)
  t.equal(served.server.health().ingest.ingested, 4, 'the other producer was not affected')
  await producer.close()
})

t.test('HTTP: /healthz, WebSocket endpoints without an upgrade, unknown paths', async (t) => {
  const served = await startServer()
  t.teardown(() => served.close())
  const health = await httpGet(served.port, '/healthz')
  t.equal(health.status, 200)
  t.match(JSON.parse(health.body), { status: 'ok', step: 0, lambda: { consistency: 0 }, ingest: { ingested: 0 } })
  const ingest = await httpGet(served.port, '/ingest')
  t.equal(ingest.status, 426)
  t.match(ingest.body, /\/ingest is a WebSocket endpoint/)
  const nope = await httpGet(served.port, '/nope')
  t.equal(nope.status, 404)
  t.match(nope.body, /no such endpoint: \/nope \(try \/healthz, or WebSocket \/ingest, \/batches\)/)
  const bad = await httpGet(served.port, 'http://[')
  t.equal(bad.status, 400)
})

t.test('credit: a producer past its credit is paused until acks free it', async (t) => {
  const served = await startServer({ credit: 4 })
  t.teardown(() => served.close())
  const producer = await Client.open(served.url('/ingest'))
  t.equal((await producer.nth('credit')).credit, 4)
  // ignore the credit: 20 rollouts in 10 frames at once
  const all = prompts('c', 10)
  for (let i = 0; i < all.length; i += 2) producer.send({ type: 'rollouts', rollouts: all.slice(i, i + 2) })
  await producer.until(() => producer.of('ack').length === 10)
  t.same(
    producer.of('ack').flatMap((a) => a.ids),
    all.map((r) => r.id),
    'nothing lost, answered in order',
  )
  t.ok(served.server.health().pauses >= 1, `paused ${served.server.health().pauses} times`)
  await producer.close()
  t.ok(served.server.health().pauses >= 1, 'pauses of closed connections still counted')
})

t.test('maxIngestBytes: above it no producer is read; every frame still answered, in order, and the bytes released', async (t) => {
  const served = await startServer({ credit: 10_000, maxIngestBytes: 4096 })
  t.teardown(() => served.close())
  t.same(served.server.health().ingestBytes, { held: 0, max: 4096, holds: 0 })
  const producers = await Promise.all([Client.open(served.url('/ingest')), Client.open(served.url('/ingest'))])
  // frames of ~3 KiB from both producers at once, well within credit: the bytes are the bound
  const payload = { tokens: Buffer.alloc(1500, 1) }
  const frames = [0, 1].map((p) => Array.from({ length: 8 }, (_, f) => prompts(`b${p}-${f}`, 1).map((r) => ({ ...r, payload }))))
  for (let f = 0; f < 8; f++) for (const p of [0, 1]) producers[p].send({ type: 'rollouts', rollouts: frames[p][f] })
  await Promise.all(producers.map((producer) => producer.until(() => producer.of('ack').length === 8)))
  for (const p of [0, 1])
    t.same(
      producers[p].of('ack').flatMap((a) => a.ids),
      frames[p].flat().map((r) => r.id),
      `producer ${p}: nothing lost, answered in order`,
    )
  const { ingestBytes, pauses } = served.server.health()
  t.ok(ingestBytes.holds >= 1, `reading stopped ${ingestBytes.holds} times`)
  t.equal(ingestBytes.held, 0, 'every answered frame released')
  t.equal(pauses, 0, 'no producer went past its credit')
  await Promise.all(producers.map((producer) => producer.close()))
})

t.test('credit shrinks while the trainer outbox grows, down to 0, and comes back as the trainer acks', async (t) => {
  const served = await startServer({ credit: 8, maxOutbox: 4 })
  t.teardown(() => served.close())
  const producer = await Client.open(served.url('/ingest'))
  t.equal((await producer.nth('credit')).credit, 8)
  // 4 rollouts per batch: outbox 2 (half) keeps the full credit, 3 gives 4 (half of it), 4 gives 0
  producer.send({ type: 'rollouts', rollouts: prompts('o', 4) })
  await producer.nth('ack')
  t.equal(producer.credit, 8)
  producer.send({ type: 'rollouts', rollouts: prompts('o', 6).slice(8) })
  await producer.until(() => producer.credit === 4, 5000, 'credit 4')
  producer.send({ type: 'rollouts', rollouts: prompts('o', 8).slice(12) })
  await producer.until(() => producer.credit === 0, 5000, 'credit 0')
  t.equal(served.server.health().credit, 0)
  // past a zero credit: the socket is paused until the frame is answered
  producer.send({ type: 'rollouts', rollouts: prompts('o', 9).slice(16) })
  await producer.nth('ack', 4)
  const trainer = await Client.open(served.url('/batches'))
  await trainer.nth('batch', 4)
  t.same(
    trainer.of('batch').map((b) => b.step),
    [1, 2, 3, 4],
    'the outbox comes in step order',
  )
  for (const step of [1, 2, 3, 4]) trainer.send({ type: 'ack', step })
  await producer.until(() => producer.credit === 8, 5000, 'credit back to 8')
  t.same(
    producer.of('credit').map((c) => c.credit),
    [8, 4, 0, 4, 8],
  )
  await producer.close()
  await trainer.close()
})

t.test('a trainer gets every unacknowledged batch again on reconnect; a new trainer replaces the old', async (t) => {
  const served = await startServer({ trainerHighWaterBytes: 1 })
  t.teardown(() => served.close())
  const producer = await Client.open(served.url('/ingest'))
  producer.send({ type: 'rollouts', rollouts: prompts('t', 6) })
  await producer.nth('ack')
  const first = await Client.open(served.url('/batches'))
  await first.nth('batch', 3)
  first.send({ type: 'ack', step: 1 })
  first.send({ type: 'nonsense' })
  await first.nth('error')
  await served.server.acknowledgementsApplied()
  await first.close()
  const second = await Client.open(served.url('/batches'))
  await second.nth('batch', 2)
  t.same(
    second.of('batch').map((b) => b.step),
    [2, 3],
    'redelivered in step order',
  )
  t.same(second.of('batch')[0], first.of('batch')[1], 'the same batch')
  // a third connection replaces the second, which is told why
  const third = await Client.open(served.url('/batches'))
  await second.until(() => second.closed !== undefined)
  t.same(second.closed, { code: 4001, reason: 'replaced by a newer trainer connection' })
  await third.nth('batch', 2)
  producer.send({ type: 'rollouts', rollouts: prompts('u', 2) })
  await third.nth('batch', 3)
  t.same(
    third.of('batch').map((b) => b.step),
    [2, 3, 4],
    'pending first, then new batches',
  )
  // a commit announced after the connection already took it from the outbox is not sent twice
  const ranks = (served.server as unknown as { trainers: { enqueue(b: object): void } }).trainers
  ranks.enqueue(third.of('batch')[0])
  producer.send({ type: 'rollouts', rollouts: prompts('w', 2) })
  await third.nth('batch', 4)
  t.same(
    third.of('batch').map((b) => b.step),
    [2, 3, 4, 5],
  )
  t.equal(served.server.health().trainer, true)
  await third.close()
  t.equal(served.server.health().trainer, false)
  t.equal(served.server.health().delivered, 3 + 2 + 4)
  await producer.close()
})

t.test('the heartbeat terminates peers that stop answering pings (virtual time)', async (t) => {
  const clock = new VirtualClock()
  const served = await startServer({ heartbeatMs: 200, scheduler: clock })
  t.teardown(() => served.close())
  const healthy = await Client.open(served.url('/ingest'))
  const silent = await Client.open(served.url('/batches'), { autoPong: false })
  const [healthyOnServer] = served.server.host.connections
  clock.advance(200)
  await once(healthyOnServer, 'pong')
  clock.advance(200)
  await silent.until(() => silent.closed !== undefined, 5000, 'termination')
  t.equal(silent.closed!.code, 1006, 'terminated without a closing handshake')
  t.equal(healthy.closed, undefined, 'a peer answering pings stays')
  t.equal(healthyOnServer.readyState, healthyOnServer.OPEN)
  await healthy.close()
})

t.test('an engine failure: error frame, close 1011, /healthz 503, onFailure', async (t) => {
  const failures: unknown[] = []
  const served = await startServer({ onFailure: (error) => failures.push(error) })
  const producer = await Client.open(served.url('/ingest'))
  const trainer = await Client.open(served.url('/batches'))
  producer.send({ type: 'rollouts', rollouts: prompts('f', 2) })
  await trainer.nth('batch')
  await served.engine.store.env.close()
  trainer.send({ type: 'ack', step: 1 })
  producer.send({ type: 'rollouts', rollouts: prompts('g', 1) })
  t.match(await producer.nth('error'), { code: 'engine', reason: /^the engine could not log this frame: / })
  await producer.until(() => producer.closed !== undefined)
  t.same(producer.closed, { code: 1011, reason: 'engine failure' })
  t.equal(failures.length, 1, 'reported once')
  const health = await httpGet(served.port, '/healthz')
  t.equal(health.status, 503)
  t.match(JSON.parse(health.body), { status: 'failed', error: /./ })
  t.match(served.server.health().frameErrors, { engine: 1 })
  await trainer.close()
  await served.server.close()
})

t.test('server defaults, and an outbox-free server keeps full credit', async (t) => {
  const served = await startServer({ credit: undefined, heartbeatMs: 0 })
  t.teardown(() => served.close())
  t.equal(served.server.credit(), 4096)
  const other = await startServer({ credit: 10, maxOutbox: 1 })
  t.teardown(() => other.close())
  t.equal(other.server.credit(), 10)
  t.end()
})

t.test('listen fails cleanly on a port in use', async (t) => {
  const served = await startServer()
  t.teardown(() => served.close())
  const engine = await DurableEngine.open({ config: parseConfig(baseConfig), dataDir: tempDir(), watermarkIntervalMs: 0 })
  const server = new EngineServer({ engine })
  await t.rejects(server.listen(served.port, '127.0.0.1'), { code: 'EADDRINUSE' })
  await server.close()
  await engine.close()
})

t.test('shutdown cuts off peers that do not complete the closing handshake (virtual time)', async (t) => {
  const clock = new VirtualClock()
  const served = await startServer({ closeTimeoutMs: 100, scheduler: clock })
  const deaf = await Client.open(served.url('/ingest'))
  // the client stops reading: it never sees the close frame
  ;(deaf.ws as unknown as { _socket: { pause(): void } })._socket.pause()
  const [onServer] = served.server.host.connections
  const socket = (onServer as unknown as { _socket: { destroyed: boolean } })._socket
  const closing = served.close()
  clock.advance(99)
  t.equal(socket.destroyed, false, 'still waiting for the closing handshake')
  clock.advance(1)
  t.equal(socket.destroyed, true, 'cut off once the timeout is over')
  await closing
  ;(deaf.ws as unknown as { _socket: { resume(): void } })._socket.resume()
  await deaf.until(() => deaf.closed !== undefined)
  t.ok([1001, 1006].includes(deaf.closed!.code), `cut off (the 1001 frame sent before may still be read: ${deaf.closed!.code})`)
})
