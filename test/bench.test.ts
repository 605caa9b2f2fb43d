import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Unpackr } from 'msgpackr'
import t from 'tap'
import { WebSocketServer } from 'ws'
import { runBenchmarks } from '../src/apps/bench/run.js'
import { benchHistoryIfAsked } from '../src/apps/bench/history.js'
import { formatRate, median, quantile, throughput } from '../src/apps/bench/measure.js'
import { checkPayloadOptions, FLOORS } from '../src/apps/bench/payload.js'
import { produce, train, wallClock } from '../src/apps/bench/payloadClient.js'
import { payloadFrames, payloadPool, rolloutPayload } from '../src/apps/bench/payloadFrames.js'
import { fileFloor, lmdbFloor, runFloors } from '../src/apps/bench/payloadFloors.js'
import { benchConfig } from '../src/apps/bench/core.js'
import { DurableEngine } from '../src/state/durableEngine.js'
import { EngineServer } from '../streams/engineServer.js'
import { pack } from './serve/support.js'

t.test('the benchmarks run at small size, print a table and write JSON', async (t) => {
  const json = join(mkdtempSync(join(tmpdir(), 'dualstream-bench-')), 'bench.json')
  const lines: string[] = []
  const report = await runBenchmarks({ rollouts: 2048, runs: 1, warmup: 0, json, historySteps: 5000, historyRestartSteps: 300, log: (l) => lines.push(l) })
  t.same(
    report.results.map((r) => r.name),
    [
      'core math (measure + dual + advantages)',
      'operator chain: fgrpo (groups → batches → λ → advantages)',
      'operator chain with in-memory dedup (Set of every id)',
      'replay end to end (JSONL file → validate → dedup → fgrpo → JSONL)',
      'durable floor: msgpack decode + LMDB log append + flush (no network)',
      'durable: producer process → WS → LMDB log → fgrpo → batches → trainer acks',
    ],
  )
  for (const r of report.results.slice(0, 5)) {
    t.equal(r.units, 2048, `${r.name}: every rollout processed`)
    t.ok(r.median > 0 && Number.isFinite(r.median))
  }
  const durable = report.results[5]
  t.equal(durable.units, 2048, 'the durable path: every rollout of the 16 full batches delivered')
  t.ok(durable.median > 0 && Number.isFinite(durable.median))
  t.match(durable.extra, { 'ack→batch p50 ms': /^\d+\.\d$/, 'p99 ms': /^\d+\.\d$/, 'of floor': /^\d+%$/, frame: 1000 })
  t.match(lines.join('\n'), /benchmark +per run +median +range/)
  t.same(JSON.parse(readFileSync(json, 'utf8')).results.length, 6)
  // the whole-run history: bounded points a series, the hello's overview, a rebuild from LMDB
  t.match(report.history, { steps: 5000, maxPoints: 2000, restartSteps: 300, retainedBytes: Number, helloBytes: Number })
  t.ok(report.history!.series >= 20, `${report.history!.series} series of a training run`)
  t.match(
    lines.join('\n'),
    /history: 5,000 steps × \d+ series → [\d.]+ MiB retained \(≤ 2000 points a series\), [\d.]+ µs a step; hello overview [\d.]+ MiB JSON in \d+ ms; serve start rebuilds 300 steps in \d+ ms/,
  )
})

t.test('the payload matrix: one small cell, producer and trainer processes, beside the floors', async (t) => {
  const lines: string[] = []
  const report = await runBenchmarks({ rollouts: 2048, runs: 1, warmup: 0, payloadBytes: [256], frame: [64], log: (l) => lines.push(l) })
  t.notOk(
    report.results.some((r) => r.name.startsWith('durable')),
    'the payload matrix replaces the payload-less durable rows',
  )
  t.equal(report.payload?.length, 1)
  const cell = report.payload![0]
  t.match(cell, { payloadBytes: 256, frame: 64, rollouts: 2048, frames: 32, window: 64, maxFrameBytes: 16 * 1024 * 1024 })
  t.ok(cell.bytesPerRollout > 256 && cell.frameBytes === cell.bytesPerRollout * 2048, `${cell.bytesPerRollout} frame bytes a rollout`)
  const [run] = cell.runs
  t.match(run, { delivered: 2048, duplicates: 0, payloadMismatches: 0, acked: 2048 }, 'every rollout delivered once, with the bytes sent')
  for (const [key, value] of Object.entries(run)) t.ok(Number.isFinite(value) && value >= 0, `${key} ${value}`)
  t.ok(run.rssPeak >= run.rssBase && run.rate > 0 && run.mbPerSec > 0 && run.ackP99 >= run.ackP50 && run.ackToBatchP99 >= run.ackToBatchP50)
  for (const [key, s] of Object.entries(cell.durable))
    t.same(s, { median: run[key as keyof typeof run], min: run[key as keyof typeof run], max: run[key as keyof typeof run] })
  t.match(cell.relay.delivered, { median: 2048 }, 'the relay (network floor) delivers every rollout too')
  t.same(cell.relay.payloadMismatches, { median: 0, min: 0, max: 0 }, 'with the bytes sent')
  t.ok(cell.relay.rate.median > 0 && cell.relay.mbPerSec.median > 0)
  t.equal(cell.percentOfRelay, (100 * run.rate) / cell.relay.rate.median)
  t.same(Object.keys(cell.floors), Object.keys(FLOORS))
  for (const [kind, floor] of Object.entries(cell.floors)) {
    t.equal(floor.label, FLOORS[kind as keyof typeof FLOORS])
    t.ok(floor.rate.median > 0 && Number.isFinite(floor.mbPerSec.median), `${kind}: ${floor.mbPerSec.median} MB/s`)
    t.equal(cell.percentOfFloor[kind as keyof typeof FLOORS], (100 * run.rate) / floor.rate.median)
  }
  const printed = lines.join('\n')
  t.match(printed, /payload × frame +rollouts +frame +durable rollouts\/s.*relay MB\/s +durable % of relay/)
  t.match(printed, /relay: the same server, producer and trainer with an engine that stores and computes nothing/)
  t.match(printed, /256 B × 64 +2,048 +[\d.]+ kB +[\d.]+ k?\/s/)
  t.match(printed, /ack p50 \/ p99 +ack→batch p50 \/ p99 +server RSS MB base → peak/)
  t.match(printed, /2048 \(0 dup, 0 bad payload\)/)
})

t.test('the payload matrix refuses what cannot run', async (t) => {
  t.throws(() => checkPayloadOptions({ rollouts: 1000, frames: [64, 5000] }), /--frame 5000 exceeds the server's credit of 4096 rollouts/)
  t.throws(() => checkPayloadOptions({ rollouts: 100, frames: [64] }), /--rollouts 100 is less than one batch \(128 rollouts\)/)
  t.doesNotThrow(() => checkPayloadOptions({ rollouts: 128, frames: [4096] }))
})

t.test('payload frames: plain MessagePack, tokens and logprobs as bins of half the bytes each', async (t) => {
  const frames = payloadFrames(10, 33, 4)
  t.equal(frames.length, 3)
  const first = new Unpackr({ useRecords: false }).unpack(frames[0]) as {
    type: string
    rollouts: { id: string; payload: { tokens: Uint8Array; logprobs: Uint8Array } }[]
  }
  t.equal(first.type, 'rollouts')
  t.same(
    first.rollouts.map((r) => r.id),
    ['r0', 'r1', 'r2', 'r3'],
  )
  const pool = payloadPool(33)
  t.same(
    first.rollouts.map((r) => [r.payload.tokens.length, r.payload.logprobs.length]),
    Array(4).fill([16, 17]),
  )
  t.same(Buffer.from(first.rollouts[3].payload.logprobs), rolloutPayload(pool, 3, 33).logprobs)
  t.ok(frames[0].includes(Buffer.from([0xc4, 16])), 'bin 8 headers: raw bytes, not arrays of numbers')
  t.same(payloadPool(33), pool, 'the same bytes in every process')
  t.ok(Math.abs(wallClock() - Date.now()) < 50, 'the wall clock is the epoch time')
})

t.test('the floors: LMDB one frame at a time, in a window, with decode; a file with fdatasync per frame', async (t) => {
  const report = await runFloors({ role: 'floors', rollouts: 256, payloadBytes: 64, frame: 64, window: 2, warmup: 1, runs: 2 })
  t.equal(report.frames, 4)
  t.ok(report.frameBytes > 256 * 64, `${report.frameBytes} bytes of frames`)
  t.equal(report.rounds.length, 2, 'the warm-up round not reported')
  for (const round of report.rounds) {
    t.same(Object.keys(round), Object.keys(FLOORS))
    t.ok(Object.values(round).every((ms) => ms > 0 && Number.isFinite(ms)))
  }
  const frames = payloadFrames(10, 8, 3)
  t.ok((await lmdbFloor(frames, 1, false)) > 0 && (await lmdbFloor(frames, 4, true)) > 0 && (await fileFloor(frames)) > 0)
})

t.test('the payload clients in this process: every frame acked, every rollout delivered once with its bytes', async (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), 'dualstream-bench-payload-test-'))
  const engine = await DurableEngine.open({ config: benchConfig, dataDir, watermarkIntervalMs: 0 })
  const server = new EngineServer({ engine, heartbeatMs: 0 })
  t.teardown(async () => {
    await server.close()
    await engine.close()
    rmSync(dataDir, { recursive: true, force: true })
  })
  const { port } = await server.listen(0, '127.0.0.1')
  let waiting = 2
  let go!: () => void
  const both = new Promise<void>((resolve) => (go = resolve))
  const start = () => {
    if (--waiting === 0) go()
    return both
  }
  const [trainer, producer] = await Promise.all([
    train({ role: 'trainer', port, rollouts: 1000, payloadBytes: 64, batchSize: 128 }, start),
    produce({ role: 'producer', port, rollouts: 1000, payloadBytes: 64, frame: 100 }, start),
  ])
  t.match(producer, { acked: 1000 })
  t.equal(producer.ackAt.length, 10)
  t.ok(producer.ackAt.every((at, f) => at >= producer.sentAt[f] && at <= producer.finishedAt && producer.sentAt[f] >= producer.startedAt))
  t.ok(producer.frameBytes > 64_000 && producer.largestFrame * 10 >= producer.frameBytes && producer.cpuMs >= 0)
  t.match(trainer, { delivered: 896, duplicates: 0, payloadMismatches: 0, batches: 7 }, 'the 7 full batches, each rollout once, its payload the bytes sent')
  t.same(
    [...trainer.order.subarray(0, 896)].sort((a, b) => a - b),
    [...Array(896).keys()],
  )
  t.ok(trainer.finishedAt >= producer.startedAt && trainer.arrivedAt[0] > 0 && trainer.arrivedAt[999] === 0)
})

t.test('the payload clients fail on an answer they do not expect, and on no server', async (t) => {
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' })
  await new Promise((resolve) => wss.once('listening', resolve))
  t.teardown(() => wss.close())
  wss.on('connection', (ws) => {
    ws.send(pack({ type: 'credit', credit: 4096 }))
    ws.once('message', () => ws.send(pack({ type: 'rejected', errors: [{ index: 0, reason: 'no' }] })))
  })
  const port = (wss.address() as AddressInfo).port
  const start = () => Promise.resolve()
  await t.rejects(
    produce({ role: 'producer', port, rollouts: 10, payloadBytes: 8, frame: 5 }, start),
    /bench producer: the engine answered frame 0 with \{"type":"rejected"/,
  )
  wss.close()
  await t.rejects(produce({ role: 'producer', port, rollouts: 10, payloadBytes: 8, frame: 5 }, start), { code: 'ECONNREFUSED' })
  await t.rejects(train({ role: 'trainer', port, rollouts: 10, payloadBytes: 8, batchSize: 128 }, start), { code: 'ECONNREFUSED' })
})

t.test('the history bench runs only when asked', async (t) => {
  t.equal(await benchHistoryIfAsked({ log: () => {} }), undefined)
  t.equal(await benchHistoryIfAsked({ historySteps: 0, log: () => {} }), undefined)
  t.match(await benchHistoryIfAsked({ historySteps: 10, log: () => {} }), { steps: 10, restartSteps: 100_000 })
})

t.test('measure helpers', (t) => {
  t.equal(median([3, 1, 2]), 2)
  t.equal(median([4, 1, 2, 3]), 2.5)
  t.equal(quantile([5, 1, 4, 2, 3], 0.5), 3)
  t.equal(quantile([5, 1, 4, 2, 3], 0.99), 5)
  t.equal(quantile([5, 1], 0), 1)
  t.equal(formatRate(5_310_000), '5.31 M/s')
  t.equal(formatRate(812_400), '812.4 k/s')
  t.equal(formatRate(12), '12.0 /s')
  t.end()
})

t.test('throughput runs the warm-up unmeasured', async (t) => {
  let calls = 0
  const result = await throughput('x', 'items', () => ++calls && 10, { runs: 2, warmup: 1 })
  t.equal(calls, 3)
  t.match(result, { name: 'x', unit: 'items', units: 10, runs: 2 })
})
