import { createServer, type AddressInfo } from 'node:net'
import t from 'tap'
import WebSocket from 'ws'
import { benchFrames, type ClientReport } from '../../src/apps/bench/durable.js'
import { benchTelemetry, benchTelemetryIfAsked, openStuckClient, VARIANT_NAMES } from '../../src/apps/bench/telemetry.js'
import { pack } from '../serve/support.js'

/**
 * The bench's producer and trainer in this process (the bench itself runs them in a child
 * process: spawning one under the test loader takes seconds).
 */
async function inProcessClient(port: number, rollouts: number, frame: number): Promise<ClientReport> {
  const frames = benchFrames(rollouts, frame)
  const batches = Math.floor(rollouts / 128)
  const open = (path: string) =>
    new Promise<WebSocket>((resolve, reject) => {
      const ws = new WebSocket(`ws://127.0.0.1:${port}${path}`)
      ws.once('open', () => resolve(ws))
      ws.once('error', reject)
    })
  const trainer = await open('/batches')
  const started = performance.now()
  const done = new Promise<number>((resolve) => {
    let step = 0
    trainer.on('message', () => {
      trainer.send(pack({ type: 'ack', step: ++step }))
      if (step === batches) resolve(performance.now())
    })
  })
  const producer = await open('/ingest')
  // credit of the server default (4096) covers the small runs here: send everything
  for (const f of frames) producer.send(f)
  const finished = await done
  producer.close()
  trainer.close()
  return { rollouts: batches * 128, batches, elapsedMs: finished - started, latencyP50: 0, latencyP99: 0, beforeAck: 0 }
}

t.test('the telemetry bench: with and without a client that never reads, throughput and RSS of each', async (t) => {
  const collected: number[] = []
  const g = globalThis as { gc?: () => void }
  g.gc = () => collected.push(1)
  t.teardown(() => delete g.gc)
  const { results, runs } = await benchTelemetry({ rollouts: 2048, runs: 1, warmup: 1, variants: ['none', 'stuck'], queueLimit: 8, client: inProcessClient })
  t.equal(collected.length, 4, 'a collection before each run when gc is exposed')
  t.same(
    results.map((r) => r.name),
    [VARIANT_NAMES.none, VARIANT_NAMES.stuck],
  )
  for (const r of runs) {
    t.equal(r.rollouts, 2048, `${r.variant}: every rollout of the 16 batches delivered`)
    t.ok(r.rate > 0 && r.rssPeak >= r.rssStart && r.rssEnd > 0)
  }
  t.match(results[0].extra, { 'RSS start/peak/end MB': /^\d+\/\d+\/\d+$/ })
  t.notOk('rate vs none' in results[0].extra!, 'the reference is not compared with itself')
  t.match(results[1].extra, { 'rate vs none': /^-?\d+\.\d%$/, 'peak RSS vs none': /^-?\d+ MB$/, 'frames dropped': Number, 'max queued': /^\d+\/8$/ })
  const stuck = runs.find((r) => r.variant === 'stuck')!
  t.ok(stuck.maxQueued <= 8, 'the stuck client’s queue within its bound')
  t.equal(runs.find((r) => r.variant === 'none')!.queueLimit, 0)
})

t.test('npm run bench runs it with --telemetry-rollouts, with the real client process', async (t) => {
  t.same(await benchTelemetryIfAsked({ runs: 1 }), { results: [] }, 'not asked: nothing')
  t.same(await benchTelemetryIfAsked({ runs: 1, telemetryRollouts: 0 }), { results: [] })
  const all = await benchTelemetryIfAsked({ runs: 1, telemetryRollouts: 1024, telemetryClient: inProcessClient })
  t.same(
    all.results.map((r) => r.name),
    [VARIANT_NAMES.idle, VARIANT_NAMES.stuck, VARIANT_NAMES.none],
    'all three by default, compared with the idle telemetry',
  )
  t.match(all.results[1].extra, { 'rate vs idle': /%$/ })
  const asked = await benchTelemetryIfAsked({ runs: 3, telemetryRuns: 1, telemetryRollouts: 1024, telemetryVariants: ['idle'] })
  t.same(
    asked.results.map((r) => r.name),
    [VARIANT_NAMES.idle],
  )
  t.equal(asked.runs![0].rollouts, 1024)
  t.equal(asked.runs![0].queueLimit, 256)
})

t.test('the stuck client: refused upgrades and unreachable servers are errors', async (t) => {
  const closed = createServer()
  await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve))
  const port = (closed.address() as AddressInfo).port
  await new Promise((resolve) => closed.close(resolve))
  await t.rejects(openStuckClient(port, '/telemetry'), { code: 'ECONNREFUSED' })
  const talker = createServer((socket) => socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n'))
  await new Promise<void>((resolve) => talker.listen(0, '127.0.0.1', resolve))
  t.teardown(() => talker.close())
  await t.rejects(openStuckClient((talker.address() as AddressInfo).port, '/telemetry'), /upgrade refused: HTTP\/1\.1 404 Not Found/)
  // an answer in pieces is read to its end
  const slow = createServer((socket) => {
    socket.write('HTTP/1.1 404 Not')
    setTimeout(() => socket.end(' Found\r\n\r\n'), 20)
  })
  await new Promise<void>((resolve) => slow.listen(0, '127.0.0.1', resolve))
  t.teardown(() => slow.close())
  await t.rejects(openStuckClient((slow.address() as AddressInfo).port, '/telemetry'), /upgrade refused: HTTP\/1\.1 404 Not Found/)
})
