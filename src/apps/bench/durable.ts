/**
 * Benchmark of the durable path (issue #3): a separate producer process sends MessagePack
 * frames over loopback WebSocket (respecting credit) → `/ingest` → LMDB log → fgrpo → batch
 * commits → `/batches` → a trainer connection (in the same client process) acknowledging
 * each batch. Reports rollouts/s end to end and the latency from a rollout's ingest ack at
 * the producer to its batch's delivery at the trainer; and, in the same run, the floor: the
 * same frames decoded and appended to an LMDB log with flush, no network, no pipeline.
 */
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, extname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Packr } from 'msgpackr'
import { DurableEngine } from '../../state/durableEngine.js'
import { EngineStore } from '../../state/engineStore.js'
import type { Rollout } from '../../core/types.js'
import { EngineServer } from '../../../streams/engineServer.js'
import { decodeFrame } from '../../../streams/wire.js'
import { benchConfig, syntheticRollouts } from './core.js'
import { median, quantile, throughput, type Throughput } from './measure.js'

export interface DurableBenchOptions {
  rollouts: number
  runs: number
  warmup: number
  /** Rollouts per frame. */
  frame: number
}

/** What the client process reports after a run. */
export interface ClientReport {
  rollouts: number
  batches: number
  /** From the first frame sent to the last batch received (ms). */
  elapsedMs: number
  /** Per rollout: batch delivery at the trainer minus ingest ack at the producer (ms), sorted. */
  latencyP50: number
  latencyP99: number
  /** Rollouts whose batch arrived before their ack (latency counted as 0). */
  beforeAck: number
}

/** The bench's frames: synthetic FGRPO rollouts (no `ts`: the engine stamps it), `frame` per MessagePack frame. */
export function benchFrames(rollouts: number, frame: number): Buffer[] {
  const packr = new Packr({ useRecords: false })
  const items = syntheticRollouts(rollouts).map(({ ts: _ts, ...rollout }) => rollout)
  const frames: Buffer[] = []
  for (let i = 0; i < items.length; i += frame) frames.push(packr.pack({ type: 'rollouts', rollouts: items.slice(i, i + frame) }))
  return frames
}

// the client runs as TypeScript under the test loader, as JavaScript from dist/: same extension as this file
const here = fileURLToPath(import.meta.url)
const clientScript = join(dirname(here), `durableClient${extname(here)}`)

/** Runs the client process against a server on `port`; resolves with its report. */
function runClient(port: number, rollouts: number, frame: number): Promise<ClientReport> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...process.execArgv, clientScript], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
    child.once('message', (report) => resolve(report as ClientReport))
    // after a report this is a no-op
    child.once('exit', (code) => reject(new Error(`bench client exited with ${code} without a report`)))
    child.send({ port, rollouts, frame, batchSize: benchConfig.groupSize * benchConfig.batchGroups })
  })
}

/** One durable run: a fresh engine and server, one client process; returns its report. */
async function durableRun(rollouts: number, frame: number): Promise<ClientReport> {
  const dataDir = mkdtempSync(join(tmpdir(), 'dualstream-bench-durable-'))
  const engine = await DurableEngine.open({ config: benchConfig, dataDir, watermarkIntervalMs: 0 })
  // the server's defaults (credit, outbox bound), as `dualstream serve` runs
  const server = new EngineServer({ engine, heartbeatMs: 0 })
  try {
    const { port } = await server.listen(0, '127.0.0.1')
    return await runClient(port, rollouts, frame)
  } finally {
    await server.close()
    await engine.close()
    rmSync(dataDir, { recursive: true, force: true })
  }
}

/**
 * The floor: what ingest cannot avoid — decode the same frames (with the wire's checks) and
 * log them as the engine does (the frame's bytes, an id claim per rollout with the hashes
 * stored beside the entry, flush), pipelined; no validation, no pipeline, no network.
 */
async function floorRun(frames: Buffer[]): Promise<number> {
  const dataDir = mkdtempSync(join(tmpdir(), 'dualstream-bench-floor-'))
  const store = EngineStore.open(dataDir)
  try {
    let seq = 0
    const writes: Promise<void>[] = []
    for (const data of frames) {
      const items = (decodeFrame(data, true) as { frame: unknown } as { frame: { rollouts: Rollout[] } }).frame.rollouts
      writes.push(
        store.transact((tx) => {
          for (const rollout of items) tx.claim(rollout.id)
          tx.append({ kind: 'frame', seq: tx.nextSeq, count: items.length, ts: 0, format: 'msgpack', bytes: data })
          seq += items.length
          return { ingested: seq, rejected: {}, duplicate: 0 }
        }),
      )
    }
    await Promise.all(writes)
    return seq
  } finally {
    await store.close()
    rmSync(dataDir, { recursive: true, force: true })
  }
}

export async function benchDurable(options: DurableBenchOptions): Promise<Throughput[]> {
  const { frame } = options
  const frames = benchFrames(options.rollouts, frame)
  const floor = await throughput('durable floor: msgpack decode + LMDB log append + flush (no network)', 'rollouts', () => floorRun(frames), options)
  const all: ClientReport[] = []
  for (let i = 0; i < options.warmup + options.runs; i++) all.push(await durableRun(options.rollouts, frame))
  const reports = all.slice(options.warmup)
  const rates = reports.map((r) => r.rollouts / (r.elapsedMs / 1000))
  const durable: Throughput = {
    name: 'durable: producer process → WS → LMDB log → fgrpo → batches → trainer acks',
    unit: 'rollouts',
    units: reports[0].rollouts,
    runs: options.runs,
    median: median(rates),
    min: Math.min(...rates),
    max: Math.max(...rates),
    extra: {
      'ack→batch p50 ms': median(reports.map((r) => r.latencyP50)).toFixed(1),
      'p99 ms': median(reports.map((r) => r.latencyP99)).toFixed(1),
      'of floor': `${((100 * median(rates)) / floor.median).toFixed(0)}%`,
      frame,
    },
  }
  return [floor, durable]
}

/** p50 and p99 of latencies (ms). */
export function latencyQuantiles(latencies: Float64Array): { p50: number; p99: number } {
  const values = Array.from(latencies)
  return { p50: quantile(values, 0.5), p99: quantile(values, 0.99) }
}
