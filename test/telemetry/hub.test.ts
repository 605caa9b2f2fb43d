import type { Socket } from 'node:net'
import { setImmediate as tick } from 'node:timers/promises'
import t from 'tap'
import { RunHistory } from '../../streams/telemetry/runHistory.js'
import WebSocket from 'ws'
import { parseConfig } from '../../src/core/config.js'
import { openStuckClient } from '../../src/apps/bench/telemetry.js'
import { telemetryConfig, type BatchFrame } from '../../streams/telemetry/frames.js'
import { Telemetry } from '../../streams/telemetry/telemetry.js'
import { RingQueue, TelemetryHub, type HubOptions } from '../../streams/telemetry/hub.js'
import { TelemetryServer } from '../../streams/telemetry/telemetryServer.js'
import { Client } from '../serve/support.js'

t.test('a ring queue: FIFO, and a full one evicts its oldest', (t) => {
  t.throws(() => new RingQueue(0), /queue capacity must be an integer >= 1, got 0/)
  const q = new RingQueue<number>(3)
  t.equal(q.shift(), undefined)
  t.equal(q.push(1), undefined)
  q.push(2)
  q.push(3)
  t.equal(q.push(4), 1, 'the oldest makes room')
  t.same(q.toArray(), [2, 3, 4])
  t.equal(q.shift(), 2)
  q.push(5)
  q.push(6)
  t.same(q.toArray(), [4, 5, 6])
  t.equal(q.length, 3)
  t.end()
})

const config = parseConfig({ groupSize: 2, batchGroups: 1, objectives: [{ channel: 'acc' }] })

/** A batch frame of `step`, `padding` bytes of filler (to fill socket buffers quickly). */
function frame(step: number, padding = 0, sample?: BatchFrame['sample']): BatchFrame {
  const f = {
    type: 'batch',
    step,
    ts: step,
    rollouts: 2,
    groups: 1,
    partialGroups: 0,
    objectives: { acc: 0.5 },
    constraints: {},
    fracZeroStd: {},
    advantage: { mean: 0, std: 1 },
    counts: {
      ingested: 0,
      rejected: 0,
      rejectedByReason: {},
      duplicate: 0,
      stale: 0,
      droppedGroups: 0,
      droppedGroupRollouts: 0,
      batches: step,
      rolloutsInBatches: 0,
      pending: 0,
      outbox: 0,
    },
    throughput: { rolloutsPerSec: null, ingestPerSec: null, batchesPerSec: null },
    latencyMs: 1,
    ...(padding > 0 ? { padding: 'x'.repeat(padding) } : {}),
  } as BatchFrame
  if (sample !== undefined) f.sample = sample
  return f
}

/** A hub behind a telemetry server on a free port. */
async function hubServer(options: Partial<HubOptions> = {}) {
  let dropped = 0
  const hub = new TelemetryHub({
    hello: () => ({ source: 'serve', config: telemetryConfig(config), step: 0, lambda: {}, counts: null, overview: new RunHistory().overview() }),
    onDropped: () => dropped++,
    ...options,
  })
  const server = new TelemetryServer({ heartbeatMs: 0 })
  server.addWebSocketEndpoint('/telemetry', { role: 'viewer', connect: (ws, format) => hub.connect(ws, format) })
  const { port } = await server.listen(0, '127.0.0.1')
  return {
    hub,
    port,
    dropped: () => dropped,
    url: (query = '') => `ws://127.0.0.1:${port}/telemetry${query}`,
    close: async () => {
      hub.close()
      await server.close()
    },
  }
}

const sample = {
  grid: 4,
  objects: [],
  question: { a: 'red', b: 'blue', axis: 'x' as const, text: '?' },
  claims: [],
  answer: 'less' as const,
  correctAnswer: 'less' as const,
  judgement: { accuracy: 1, grounding: 1, consistency: 1 },
  text: 's',
}

t.test('hello with the recent history (samples kept apart), then every frame, in either format', async (t) => {
  const served = await hubServer({ historyLimit: 3 })
  t.teardown(served.close)
  t.same(served.hub.limits, { queue: 256, history: 3, highWaterBytes: 256 * 1024 })
  served.hub.publish(frame(1))
  served.hub.publish(frame(2, 0, sample))
  served.hub.publish(frame(3))
  served.hub.publish(frame(4))
  const packed = await Client.open(served.url())
  const json = await Client.open(served.url('?format=json'))
  const hello = await json.nth('hello')
  t.same(
    hello.history.map((f: BatchFrame) => f.step),
    [2, 3, 4],
    'the last historyLimit frames',
  )
  t.notOk('sample' in hello.history[0], 'history frames travel without their samples')
  t.same(hello.sample, sample, 'the latest sample on its own')
  t.match(hello, { type: 'hello', version: 1, source: 'serve', step: 0, limits: { queue: 256, history: 3 } })
  t.same(await packed.nth('hello'), hello, 'MessagePack says the same')
  t.equal(json.ws.protocol, '')
  served.hub.publish({ type: 'status', phase: 'RL' })
  served.hub.publish(frame(5, 0, sample))
  t.same((await json.nth('batch')).sample, sample, 'live frames keep their sample')
  t.same((await packed.nth('batch')).step, 5)
  t.same(json.of('status'), [{ type: 'status', phase: 'RL' }])
  t.same(
    served.hub.clientInfo().map((c) => [c.format, c.queued, c.dropped]),
    [
      ['msgpack', 0, 0],
      ['json', 0, 0],
    ],
  )
  await json.close()
  await packed.close()
  await t.resolves(async () => {
    while (served.hub.clientInfo().length > 0) await tick()
  }, 'closed clients leave')
})

t.test('a client that never reads loses its oldest frames, counted; its queue stays within bound; readers are not slowed', async (t) => {
  const served = await hubServer({ queueLimit: 16, highWaterBytes: 64 * 1024 })
  t.teardown(served.close)
  const stuck: Socket = await openStuckClient(served.port, '/telemetry')
  t.teardown(() => stuck.destroy())
  const reader = await Client.open(served.url())
  const frames = 600
  let maxQueued = 0
  for (let step = 1; step <= frames; step++) {
    served.hub.publish(frame(step, 32 * 1024))
    maxQueued = Math.max(maxQueued, served.hub.clientInfo().find((c) => c.id === 1)!.queued)
    await tick()
  }
  await reader.until(() => reader.count('batch') === frames, 20_000, 'every frame at the reader')
  const [stuckInfo, readerInfo] = served.hub.clientInfo()
  t.ok(stuckInfo.dropped > 0, `the stuck client lost frames (${stuckInfo.dropped} of ${frames})`)
  t.equal(stuckInfo.queued, 16, 'its queue is full, not growing')
  t.equal(stuckInfo.maxQueued, 16)
  t.equal(maxQueued, 16, 'never beyond its bound, checked after every frame')
  t.equal(readerInfo.dropped, 0, 'the reader lost nothing')
  t.same(
    reader.of('batch').map((f) => f.step),
    Array.from({ length: frames }, (_, i) => i + 1),
    'in order',
  )
  t.equal(served.hub.dropped, stuckInfo.dropped, 'the total counts it')
  t.equal(served.dropped(), stuckInfo.dropped, 'and each drop is reported')
  // the drops keep counting while it stays stuck
  for (let step = frames + 1; step <= frames + 10; step++) served.hub.publish(frame(step, 32 * 1024))
  t.equal(served.hub.clientInfo()[0].dropped, stuckInfo.dropped + 10)
  await reader.close()
})

t.test('a client that stalls then reads again catches up and is told how many frames it lost', async (t) => {
  const served = await hubServer({ queueLimit: 4, highWaterBytes: 16 * 1024 })
  t.teardown(served.close)
  const client = await Client.open(served.url('?format=json'))
  await client.nth('hello')
  const socket = (client.ws as unknown as { _socket: Socket })._socket
  socket.pause()
  let step = 0
  while (served.hub.clientInfo()[0].dropped < 5) {
    served.hub.publish(frame(++step, 64 * 1024))
    if (step > 5000) throw new Error('no drops')
  }
  const lost = served.hub.clientInfo()[0].dropped
  socket.resume()
  const notice = await client.nth('dropped', 1, 20_000)
  t.same(notice, { type: 'dropped', frames: lost })
  t.equal(client.count('batch'), step - lost, 'every frame not dropped arrived')
  const steps = client.of('batch').map((f) => f.step)
  t.same(steps.slice(-4), [step - 3, step - 2, step - 1, step], 'the newest frames survive')
  // later frames flow again, without another notice
  served.hub.publish(frame(++step))
  await client.until(() => client.of('batch').at(-1)?.step === step)
  t.equal(client.count('dropped'), 1)
  await client.close()
})

t.test('closing the hub closes its clients (1001) and refuses new ones', async (t) => {
  const served = await hubServer()
  t.teardown(served.close)
  const client = await Client.open(served.url())
  await client.nth('hello')
  served.hub.close()
  await client.until(() => client.closed !== undefined)
  t.same(client.closed, { code: 1001, reason: 'telemetry is shutting down' })
  const late = await Client.open(served.url())
  await late.until(() => late.closed !== undefined)
  t.equal(late.closed!.code, 1001)
  t.equal(late.count('hello'), 0)
  // publishing to a hub without clients keeps the history only
  served.hub.publish(frame(1))
  t.equal(served.hub.hello().history.length, 1)
})

t.test('a client whose socket closes with frames queued just goes', async (t) => {
  const served = await hubServer({ queueLimit: 2, highWaterBytes: 1 })
  t.teardown(served.close)
  const ws = new WebSocket(served.url())
  await new Promise((resolve) => ws.once('message', resolve))
  const socket = (ws as unknown as { _socket: Socket })._socket
  socket.pause()
  for (let step = 1; step <= 200; step++) served.hub.publish(frame(step, 64 * 1024))
  t.ok(served.hub.clientInfo()[0].dropped > 0)
  ws.terminate()
  await t.resolves(async () => {
    while (served.hub.clientInfo().length > 0) await tick()
  })
})

t.test('a run’s telemetry counts the frames its slow viewers lose in /metrics', async (t) => {
  const telemetry = new Telemetry('serve', config, () => ({ step: 0, lambda: {}, counts: null }), { queueLimit: 1, highWaterBytes: 1, processMetrics: false })
  const server = new TelemetryServer({ heartbeatMs: 0 })
  telemetry.mount(server)
  const { port } = await server.listen(0, '127.0.0.1')
  t.teardown(async () => {
    telemetry.close()
    await server.close()
  })
  const stuck = await openStuckClient(port, '/telemetry')
  t.teardown(() => stuck.destroy())
  let step = 0
  while (telemetry.hub.dropped < 3) {
    telemetry.publish(frame(++step, 64 * 1024))
    if (step > 5000) throw new Error('no drops')
  }
  const text = await telemetry.metrics.text()
  t.match(text, /^dualstream_telemetry_dropped_frames_total 3$/m)
  t.match(text, /^dualstream_telemetry_client_dropped_frames\{client="1"\} 3$/m)
  t.match(text, /^dualstream_telemetry_client_queued_frames\{client="1"\} 1$/m)
  t.match(text, /^dualstream_rollouts_ingested_total 0$/m, 'no counts yet: zeros')
  t.equal(telemetry.latest?.step, step)
})
