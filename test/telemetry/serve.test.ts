import { PassThrough } from 'node:stream'
import { VirtualClock } from '../support/virtualTime.js'
import t from 'tap'
import { parseConfig } from '../../src/core/config.js'
import type { DurableEngine } from '../../src/state/durableEngine.js'
import { serve, serveProgress, SERVE_PROGRESS_MS } from '../../src/apps/serve.js'
import type { EngineTelemetry } from '../../streams/telemetry/telemetry.js'
import { bindProblem } from '../../streams/auth.js'
import { baseConfig, Client, produce, prompts, tempDir, upgradeStatus } from '../serve/support.js'
import { ackingTrainer } from './browser.js'

/** `serve` in-process on a free port. */
async function startServe(tokens: Record<string, string> = {}, telemetry = {}) {
  const stop = new AbortController()
  let out = ''
  const stdout = new PassThrough()
  stdout.on('data', (c: Buffer) => (out += c.toString()))
  let ready!: (parts: { engine: DurableEngine; telemetry: EngineTelemetry; port: number }) => void
  const listening = new Promise<{ engine: DurableEngine; telemetry: EngineTelemetry; port: number }>((resolve) => (ready = resolve))
  const exit = serve(
    {
      config: parseConfig(baseConfig),
      dataDir: tempDir(),
      host: '127.0.0.1',
      port: 0,
      tokens,
      heartbeatMs: 0,
      telemetry: { processMetrics: false, ...telemetry },
      onListening: ready,
    },
    { stdout },
    stop.signal,
  )
  const parts = await listening
  return {
    ...parts,
    output: () => out,
    ws: (path: string, query = '') => `ws://127.0.0.1:${parts.port}${path}${query}`,
    http: (path: string) => `http://127.0.0.1:${parts.port}${path}`,
    stop: async () => {
      stop.abort()
      return exit
    },
  }
}

const metric = (text: string, series: string): number | undefined => {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `))
  return line === undefined ? undefined : Number(line.slice(series.length + 1))
}

t.test('serve: /telemetry streams a hello then one frame per committed batch; /metrics and / alongside', async (t) => {
  const served = await startServe()
  t.teardown(served.stop)
  t.match(served.output(), '(WebSocket /ingest, /batches, /telemetry; GET /healthz, /metrics, /history; dashboard at /)')
  const viewer = await Client.open(served.ws('/telemetry', '?format=json'))
  const hello = await viewer.nth('hello')
  t.match(hello, { type: 'hello', source: 'serve', step: 0, lambda: { consistency: 0 }, history: [], sample: null, counts: { ingested: 0 } })
  t.same(hello.config.constraints, [{ channel: 'consistency', sense: '>=', threshold: 0.9, sampleThreshold: 0.5, rule: 'sgd', lr: 0.5, max: 5 }])
  const trainer = await ackingTrainer(served.ws('/batches'))
  const producer = await Client.open(served.ws('/ingest'))
  producer.send({ type: 'rollouts', rollouts: [{ id: 'bad', promptId: 'p', rewards: { accuracy: 'high' } }] })
  await produce(producer, prompts('a', 10), 4)
  await viewer.until(() => viewer.count('batch') === 5)
  const frames = viewer.of('batch')
  t.same(
    frames.map((f) => f.step),
    [1, 2, 3, 4, 5],
  )
  const last = frames[4]
  const stats = served.engine.stats()
  t.equal(last.constraints.consistency.lambda, stats.lambda.consistency)
  t.match(last, { rollouts: 4, groups: 2, counts: { ingested: 20, rejected: 1, rejectedByReason: { rewards: 1 }, batches: 5, rolloutsInBatches: 20 } })
  t.type(last.latencyMs, 'number')
  t.equal(served.telemetry.latest?.step, 5)

  // a page opened now gets the history at once
  const late = await Client.open(served.ws('/telemetry'))
  t.same(
    (await late.nth('hello')).history.map((f: { step: number }) => f.step),
    [1, 2, 3, 4, 5],
  )
  const text = await (await fetch(served.http('/metrics'))).text()
  t.equal(metric(text, 'dualstream_lambda{constraint="consistency"}'), stats.lambda.consistency)
  t.equal(metric(text, 'dualstream_constraint_mean{constraint="consistency"}'), last.constraints.consistency.mean)
  t.equal(metric(text, 'dualstream_constraint_violation{constraint="consistency"}'), last.constraints.consistency.violation)
  t.equal(metric(text, 'dualstream_rollouts_ingested_total'), 20)
  t.equal(metric(text, 'dualstream_rollouts_rejected_total{reason="rewards"}'), 1)
  t.equal(metric(text, 'dualstream_batches_total'), 5)
  t.equal(metric(text, 'dualstream_telemetry_dropped_frames_total'), 0)
  t.equal(metric(text, 'dualstream_telemetry_clients'), 2)
  t.equal(metric(text, 'dualstream_batch_latency_seconds_count'), 5)
  const page = await fetch(served.http('/'))
  t.equal(page.status, 200)
  t.match(await page.text(), '<title>dualstream — live telemetry</title>')
  t.equal((await fetch(served.http('/telemetry/auth'))).status, 204)
  trainer.close()
  await Promise.all([viewer.close(), late.close(), producer.close()])
  t.equal(await served.stop(), 0)
  t.match(served.output(), /shutting down\ndualstream serve: stopped\n$/)
})

t.test('serve with a viewer token: /telemetry refuses without it; the page itself is public', async (t) => {
  const served = await startServe({ viewer: 'V', producer: 'P' })
  t.teardown(served.stop)
  const refused = await upgradeStatus(served.ws('/telemetry'))
  t.equal(refused.status, 401)
  t.match(refused.body, 'missing token: the viewer token is required')
  t.equal((await upgradeStatus(served.ws('/telemetry', '?token=P'))).status, 401, 'not with a producer token')
  t.equal((await upgradeStatus(served.ws('/telemetry', '?token=V'))).status, 101)
  t.equal((await fetch(served.http('/'))).status, 200)
  t.equal((await fetch(served.http('/telemetry/auth'))).status, 401)
  t.equal((await fetch(served.http('/telemetry/auth'), { headers: { Authorization: 'Bearer V' } })).status, 204)
})

t.test('serving beyond loopback needs a viewer token too', (t) => {
  t.equal(bindProblem('0.0.0.0', { producer: 'p', trainer: 't' }), 'refusing to listen on 0.0.0.0 (not loopback) without tokens: set DUALSTREAM_VIEWER_TOKEN')
  t.equal(
    bindProblem('0.0.0.0', {}),
    'refusing to listen on 0.0.0.0 (not loopback) without tokens: set DUALSTREAM_PRODUCER_TOKEN, DUALSTREAM_TRAINER_TOKEN and DUALSTREAM_VIEWER_TOKEN',
  )
  t.equal(bindProblem('0.0.0.0', { producer: 'p', trainer: 't', viewer: 'v' }), undefined)
  t.end()
})

t.test('the serve progress line: step, rates, constraint figures; quiet when not a terminal', async (t) => {
  const served = await startServe({}, { queueLimit: 4 })
  t.teardown(served.stop)
  const quiet = serveProgress(served.engine, served.telemetry, new PassThrough())
  quiet.stop()
  const stream = new PassThrough()
  let text = ''
  stream.on('data', (c: Buffer) => (text += c.toString()))
  const clock = new VirtualClock(Date.now())
  const progress = serveProgress(served.engine, served.telemetry, stream, true, clock)
  t.match(text, /serve \| step 0 \| – rollouts\/s in, – in batches \| consistency J – λ 0\.000 \| pending 0, outbox 0/)
  const trainer = await ackingTrainer(served.ws('/batches'))
  const producer = await Client.open(served.ws('/ingest'))
  await produce(producer, prompts('b', 4), 4)
  await served.engine.settled()
  // two refreshes of the line in virtual time, the rollouts having arrived within them
  clock.advance(2 * SERVE_PROGRESS_MS)
  progress.stop()
  t.match(text, /step 2 \| \d+ rollouts\/s in, \d+ in batches \| consistency J \d\.\d{3} λ \d\.\d{3}/)
  trainer.close()
  await producer.close()
})

t.test('a config without constraints says so on the progress line', async (t) => {
  const stop = new AbortController()
  let ready!: (parts: { engine: DurableEngine; telemetry: EngineTelemetry }) => void
  const listening = new Promise<{ engine: DurableEngine; telemetry: EngineTelemetry }>((resolve) => (ready = resolve))
  const exit = serve(
    {
      config: parseConfig({ groupSize: 2, batchGroups: 1, objectives: [{ channel: 'accuracy' }] }),
      dataDir: tempDir(),
      host: '127.0.0.1',
      port: 0,
      tokens: {},
      onListening: ready,
    },
    { stdout: new PassThrough(), stderr: new PassThrough() },
    stop.signal,
  )
  const { engine, telemetry } = await listening
  const stream = new PassThrough()
  let text = ''
  stream.on('data', (c: Buffer) => (text += c.toString()))
  serveProgress(engine, telemetry, stream, true).stop()
  t.match(text, '| no constraints |')
  stop.abort()
  t.equal(await exit, 0)
})
