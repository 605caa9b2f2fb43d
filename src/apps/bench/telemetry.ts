/**
 * Benchmark of telemetry under a client that never reads (issue #4): the durable path of
 * `durable.ts` (a producer process over loopback WebSocket → `/ingest` → LMDB → fgrpo →
 * `/batches` → trainer acks), run without telemetry, with telemetry mounted and no viewer,
 * and with a `/telemetry` client that completes the handshake and then stops reading (its
 * socket paused: the kernel buffers fill, then the engine's socket buffer, then its queue).
 * Reports ingest throughput and the engine process's RSS (sampled: start, peak, end) for
 * each, with the stuck client's dropped frames and its longest queue.
 */
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { connect, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, extname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { DurableEngine } from '../../state/durableEngine.js'
import { EngineServer } from '../../../streams/engineServer.js'
import { EngineTelemetry } from '../../../streams/telemetry/telemetry.js'
import { benchConfig } from './core.js'
import type { ClientReport } from './durable.js'
import { median, type Throughput } from './measure.js'

/** With telemetry or not, and with a client that never reads or not. */
export type TelemetryVariant = 'none' | 'idle' | 'stuck'

export const VARIANT_NAMES: Record<TelemetryVariant, string> = {
  none: 'telemetry bench: durable path, no telemetry',
  idle: 'telemetry bench: durable path + telemetry, no viewer',
  stuck: 'telemetry bench: durable path + a /telemetry client that never reads',
}

export interface TelemetryBenchOptions {
  rollouts: number
  /** Measured runs of each variant (interleaved). */
  runs: number
  /** Unmeasured runs of each variant first. */
  warmup?: number
  /** Rollouts per frame (default 1000). */
  frame?: number
  /** Which runs, in this order (default idle, stuck, none); the first is the one the others are compared with. */
  variants?: TelemetryVariant[]
  /** RSS sampling period (default 20 ms). */
  sampleMs?: number
  /** The stuck client's queue bound (the server default when not set). */
  queueLimit?: number
  /** Runs the producer and trainer against a port (default: the durable bench's client process). */
  client?: ClientRunner
}

/** Produces `rollouts` in frames of `frame` to the engine on `port` and acknowledges every batch; reports when the last batch arrived. */
export type ClientRunner = (port: number, rollouts: number, frame: number) => Promise<ClientReport>

export interface TelemetryRunReport {
  variant: TelemetryVariant
  rollouts: number
  elapsedMs: number
  /** Rollouts per second, first frame sent to last batch received. */
  rate: number
  /** Engine process RSS (bytes): before the producer starts, the highest sampled, at the end. */
  rssStart: number
  rssPeak: number
  rssEnd: number
  /** Frames the stuck client lost, and the longest its queue was (0 without one). */
  droppedFrames: number
  maxQueued: number
  queueLimit: number
}

/**
 * Opens a WebSocket to `path` by hand, completes the handshake, then stops reading: the
 * client that never reads. Resolves once the server has answered 101.
 */
export function openStuckClient(port: number, path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1')
    let head = ''
    socket.once('error', reject)
    socket.on('connect', () => {
      socket.write(
        `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      )
    })
    const onData = (chunk: Buffer) => {
      head += chunk.toString('latin1')
      const end = head.indexOf('\r\n\r\n')
      if (end < 0) return
      socket.off('data', onData)
      // never read again: what the server sends piles up in the kernel, then in the server
      socket.pause()
      if (!head.startsWith('HTTP/1.1 101')) {
        socket.destroy()
        return reject(new Error(`upgrade refused: ${head.slice(0, head.indexOf('\r\n'))}`))
      }
      resolve(socket)
    }
    socket.on('data', onData)
  })
}

// the client runs as TypeScript under the test loader, as JavaScript from dist/: same extension as this file
const here = fileURLToPath(import.meta.url)
const clientScript = join(dirname(here), `durableClient${extname(here)}`)

/** The durable bench's client process (producer + trainer) against `port`. */
export function runClientProcess(port: number, rollouts: number, frame: number): Promise<ClientReport> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...process.execArgv, clientScript], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
    child.once('message', (report) => resolve(report as ClientReport))
    child.once('exit', (code) => reject(new Error(`bench client exited with ${code} without a report`)))
    child.send({ port, rollouts, frame, batchSize: benchConfig.groupSize * benchConfig.batchGroups })
  })
}

/** One run of a variant: a fresh engine and server, one client process. */
export async function telemetryRun(
  variant: TelemetryVariant,
  rollouts: number,
  frame: number,
  options: { sampleMs?: number; queueLimit?: number; client?: ClientRunner } = {},
): Promise<TelemetryRunReport> {
  const { sampleMs = 20, queueLimit, client: runClient = runClientProcess } = options
  // from a collected heap when the process allows it (`npm run bench` runs node with --expose-gc)
  ;(globalThis as { gc?: () => void }).gc?.()
  const dataDir = mkdtempSync(join(tmpdir(), 'dualstream-bench-telemetry-'))
  const engine = await DurableEngine.open({ config: benchConfig, dataDir, watermarkIntervalMs: 0 })
  const server = new EngineServer({ engine, heartbeatMs: 0 })
  const telemetry = variant === 'none' ? undefined : new EngineTelemetry(engine, { processMetrics: false, queueLimit })
  telemetry?.mount(server)
  let stuck: Socket | undefined
  let timer: NodeJS.Timeout | undefined
  try {
    const { port } = await server.listen(0, '127.0.0.1')
    if (variant === 'stuck') stuck = await openStuckClient(port, '/telemetry')
    const rssStart = process.memoryUsage.rss()
    let rssPeak = rssStart
    timer = setInterval(() => (rssPeak = Math.max(rssPeak, process.memoryUsage.rss())), sampleMs)
    const report = await runClient(port, rollouts, frame)
    const rssEnd = process.memoryUsage.rss()
    rssPeak = Math.max(rssPeak, rssEnd)
    const viewer = telemetry?.hub.clientInfo()[0]
    return {
      variant,
      rollouts: report.rollouts,
      elapsedMs: report.elapsedMs,
      rate: report.rollouts / (report.elapsedMs / 1000),
      rssStart,
      rssPeak,
      rssEnd,
      droppedFrames: viewer?.dropped ?? 0,
      maxQueued: viewer?.maxQueued ?? 0,
      queueLimit: telemetry?.hub.limits.queue ?? 0,
    }
  } finally {
    clearInterval(timer)
    stuck?.destroy()
    telemetry?.close()
    await server.close()
    await engine.close()
    rmSync(dataDir, { recursive: true, force: true })
  }
}

const MB = 1024 * 1024
const mb = (bytes: number) => (bytes / MB).toFixed(0)

/** Runs every variant `runs` times, interleaved (so drift in the machine's load hits all alike); one row per variant. */
export async function benchTelemetry(options: TelemetryBenchOptions): Promise<{ results: Throughput[]; runs: TelemetryRunReport[] }> {
  const frame = options.frame ?? 1000
  const variants = options.variants ?? ['idle', 'stuck', 'none']
  for (let i = 0; i < (options.warmup ?? 0); i++) for (const v of variants) await telemetryRun(v, options.rollouts, frame, options)
  const all: TelemetryRunReport[] = []
  for (let i = 0; i < options.runs; i++) for (const v of variants) all.push(await telemetryRun(v, options.rollouts, frame, options))
  const of = (v: TelemetryVariant) => all.filter((r) => r.variant === v)
  const reference = variants[0]
  const referenceRate = median(of(reference).map((r) => r.rate))
  const referencePeak = median(of(reference).map((r) => r.rssPeak))
  const results = variants.map((v): Throughput => {
    const runs = of(v)
    const rates = runs.map((r) => r.rate)
    const extra: Record<string, string | number> = {
      'RSS start/peak/end MB': `${mb(median(runs.map((r) => r.rssStart)))}/${mb(median(runs.map((r) => r.rssPeak)))}/${mb(median(runs.map((r) => r.rssEnd)))}`,
    }
    if (v !== reference) {
      extra[`rate vs ${reference}`] = `${((100 * median(rates)) / referenceRate - 100).toFixed(1)}%`
      extra[`peak RSS vs ${reference}`] = `${((median(runs.map((r) => r.rssPeak)) - referencePeak) / MB).toFixed(0)} MB`
    }
    if (v === 'stuck') {
      extra['frames dropped'] = median(runs.map((r) => r.droppedFrames))
      extra['max queued'] = `${Math.max(...runs.map((r) => r.maxQueued))}/${runs[0].queueLimit}`
    }
    return {
      name: VARIANT_NAMES[v],
      unit: 'rollouts',
      units: runs[0].rollouts,
      runs: runs.length,
      median: median(rates),
      min: Math.min(...rates),
      max: Math.max(...rates),
      extra,
    }
  })
  return { results, runs: all }
}

/** What `npm run bench` asks of the telemetry bench. */
export interface TelemetryBenchRequest {
  runs: number
  frame?: number
  /** Rollouts per run; 0 or unset = skip the telemetry bench. */
  telemetryRollouts?: number
  /** Measured runs of each variant (default `runs`). */
  telemetryRuns?: number
  /** Unmeasured rounds of every variant first (default 0). */
  telemetryWarmup?: number
  telemetryVariants?: TelemetryVariant[]
  telemetryClient?: ClientRunner
}

/** Runs the telemetry bench when asked (`--telemetry-rollouts` > 0); no rows and no runs otherwise. */
export async function benchTelemetryIfAsked(request: TelemetryBenchRequest): Promise<{ results: Throughput[]; runs?: TelemetryRunReport[] }> {
  if ((request.telemetryRollouts ?? 0) <= 0) return { results: [] }
  return benchTelemetry({
    rollouts: request.telemetryRollouts!,
    runs: request.telemetryRuns ?? request.runs,
    warmup: request.telemetryWarmup,
    frame: request.frame,
    variants: request.telemetryVariants,
    client: request.telemetryClient,
  })
}
