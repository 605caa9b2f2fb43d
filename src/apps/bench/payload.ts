/**
 * The payload bench (issue 12): LLM-sized rollouts — a payload of B bytes, `{ tokens, logprobs }`
 * as two MessagePack bins — through the durable path, beside the floors of the same disk,
 * measured in the same run, for every (payload bytes, frame) cell:
 *
 *   npm run bench -- --payload-bytes 128,16384,65536 --frame 64,1000
 *
 * - durable: a producer process (every frame packed before the clock starts; frames sent
 *   within credit; each frame's ack timed) → `/ingest` → this process (`EngineServer` +
 *   `DurableEngine`, the server's defaults) → `/batches` → a trainer process acknowledging
 *   every batch. Rollouts/s and MB/s of frames end to end (first frame sent → last batch
 *   received), ack latency per frame, ack → batch latency per rollout (the two processes'
 *   wall clocks, µs resolution: `wallClock`), this process's RSS sampled every 50 ms, its
 *   CPU and event-loop utilisation, the clients' CPU.
 * - relay (the network floor): the same, with `RelayEngine` behind the server — rollouts
 *   acknowledged on arrival and relayed to the trainer in batches, nothing stored or computed.
 *   Run alternately with the durable runs.
 * - the floors (`payloadFloors.ts`, in a process of their own): the same frames appended to an
 *   LMDB log (opened as the engine opens its own) with one put per frame awaited to `flushed`,
 *   one frame at a time and with as many frames in flight as the producer's credit allows
 *   (that one also with the engine's frame decode); and appended to a plain file with
 *   `fdatasync` after each frame. No network, no pipeline.
 *
 * MB are 10^6 bytes of frames (the producer's MessagePack, payloads and all).
 */
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, extname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { DurableEngine } from '../../state/durableEngine.js'
import type { Engine } from '../../state/engine.js'
import { EngineServer, SERVER_DEFAULTS } from '../../../streams/engineServer.js'
import { DEFAULT_WIRE_LIMITS } from '../../../streams/wire.js'
import { collector } from './collect.js'
import { benchConfig } from './core.js'
import { latencyQuantiles } from './durable.js'
import { formatRate, median, textTable } from './measure.js'
import type { ClientTask, ProducerReport, TrainerReport } from './payloadClient.js'
import { FLOORS, type FloorKind, type FloorsReport } from './payloadFloors.js'
import { RelayEngine } from './relayEngine.js'

export { FLOORS, type FloorKind }

export interface PayloadBenchOptions {
  /** Rollouts per run of every cell. */
  rollouts: number
  runs: number
  warmup: number
  /** Payload bytes per rollout: a row of cells each. */
  payloadBytes: readonly number[]
  /** Rollouts per frame: a cell of each row each. */
  frames: readonly number[]
  log: (line: string) => void
}

/** Median and range of the measured runs. */
export interface Spread {
  median: number
  min: number
  max: number
}

/** One run of the durable path. Times in ms, rates per second, bytes as bytes. */
export interface DurablePayloadRun {
  /** Distinct rollouts the trainer received (the full batches'), received again, with other payload bytes. */
  delivered: number
  duplicates: number
  payloadMismatches: number
  /** Rollouts the engine acknowledged to the producer. */
  acked: number
  /** First frame sent → last batch received. */
  elapsedMs: number
  rate: number
  mbPerSec: number
  /** Per frame: sent → ack. */
  ackP50: number
  ackP99: number
  /** Per rollout: its frame's ack at the producer → its batch at the trainer (a batch ahead of its ack counts 0). */
  ackToBatchP50: number
  ackToBatchP99: number
  beforeAck: number
  /** This process (the server) before the start signal, and the largest sample (every 50 ms) until the end. */
  rssBase: number
  rssPeak: number
  /** Peak minus base: what the run added. */
  rssGrowth: number
  /** The server's event loop busy (0..1) and CPU (cores) over the run; each client's CPU (cores). */
  serverEventLoop: number
  serverCpu: number
  producerCpu: number
  trainerCpu: number
}

/** The durable figures summarised: every numeric field of the runs as median and range. */
export type DurableSummary = { [K in keyof DurablePayloadRun]: Spread }

export interface FloorSummary {
  label: string
  rate: Spread
  mbPerSec: Spread
}

export interface PayloadCell {
  payloadBytes: number
  frame: number
  rollouts: number
  /** Frames per run, their bytes in all, bytes per rollout. */
  frames: number
  frameBytes: number
  bytesPerRollout: number
  /** The server's frame limit (`serve --max-frame-bytes`): the default or, for larger frames, what fits them. */
  maxFrameBytes: number
  /** Frames in flight at most (the producer's credit in frames): the window of the `lmdbWindow` floors. */
  window: number
  durable: DurableSummary
  /**
   * The network floor: the same server, producer and trainer with an engine that stores and
   * computes nothing (`RelayEngine`): what is left when the engine costs nothing.
   */
  relay: DurableSummary
  floors: Record<FloorKind, FloorSummary>
  /** The durable path's median rate as % of each floor's. */
  percentOfFloor: Record<FloorKind, number>
  /** The durable path's median rate as % of the relay's: what the engine leaves of the network floor. */
  percentOfRelay: number
  /** Every measured run of the durable path. */
  runs: DurablePayloadRun[]
}

const FLOOR_KINDS = Object.keys(FLOORS) as FloorKind[]
const BATCH_SIZE = benchConfig.groupSize * benchConfig.batchGroups
const MB = 1e6

export function spread(values: readonly number[]): Spread {
  return { median: median(values), min: Math.min(...values), max: Math.max(...values) }
}

// the clients run as TypeScript under the test loader, as JavaScript from dist/: same extension as this file
const here = fileURLToPath(import.meta.url)
const clientScript = join(dirname(here), `payloadClient${extname(here)}`)

/**
 * Runs a client process for each task; once all are ready (a producer: connected, frames
 * packed, credit received; a trainer: connected) calls `starting` and signals them to start.
 * Resolves with their reports; rejects when one exits without a report (the others are killed).
 */
export async function runClients(tasks: readonly ClientTask[], starting: () => void): Promise<unknown[]> {
  let waiting = tasks.length
  // typed arrays cross IPC as they are with the advanced serialization
  const children = tasks.map(() =>
    spawn(process.execPath, [...process.execArgv, clientScript], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], serialization: 'advanced' }),
  )
  const reports = children.map(
    (child, k) =>
      new Promise<unknown>((resolve, reject) => {
        child.on('message', (message: { kind: 'ready' | 'report'; report?: unknown }) => {
          if (message.kind === 'report') resolve(message.report)
          else if (--waiting === 0) {
            starting()
            for (const c of children) c.send('start')
          }
        })
        // after a report this is a no-op
        child.once('exit', (code, signal) =>
          reject(new Error(`payload bench ${tasks[k].role} process exited (code ${code}, signal ${signal}) without a report`)),
        )
        child.send(tasks[k])
      }),
  )
  try {
    return await Promise.all(reports)
  } finally {
    for (const child of children) child.kill()
  }
}

/** An engine for one run of the bench, and how to close it (and whatever it stands on). */
export interface BenchEngine {
  engine: Engine
  close(): Promise<void>
}

/** A fresh durable engine (LMDB in a temporary folder, removed at close). */
export async function openDurableBenchEngine(): Promise<BenchEngine> {
  const dataDir = mkdtempSync(join(tmpdir(), 'dualstream-bench-payload-'))
  const engine = await DurableEngine.open({ config: benchConfig, dataDir, watermarkIntervalMs: 0 })
  return {
    engine,
    close: async () => {
      await engine.close()
      rmSync(dataDir, { recursive: true, force: true })
    },
  }
}

/** A relay engine for one run of the bench (`relayEngine.ts`): the network floor. */
export async function openRelayBenchEngine(): Promise<BenchEngine> {
  const engine = new RelayEngine(benchConfig, BATCH_SIZE)
  return { engine, close: () => engine.close() }
}

/** One run of the durable path: a fresh engine (`open`) and server here, a producer and a trainer process. */
export async function durableRun(
  rollouts: number,
  payloadBytes: number,
  frame: number,
  maxFrameBytes: number,
  open: () => Promise<BenchEngine> = openDurableBenchEngine,
): Promise<DurablePayloadRun> {
  const gc = collector()
  const { engine, close } = await open()
  // the server's defaults (credit, outbox bound) as `dualstream serve` runs, a frame limit that fits the frames
  const server = new EngineServer({ engine, heartbeatMs: 0, limits: { maxFrameBytes } })
  let sampler: NodeJS.Timeout | undefined
  try {
    const { port } = await server.listen(0, '127.0.0.1')
    let rssBase = 0
    let rssPeak = 0
    let eventLoop = performance.eventLoopUtilization()
    let cpu = process.cpuUsage()
    let started = 0
    const [trainer, producer] = (await runClients(
      [
        { role: 'trainer', port, rollouts, payloadBytes, batchSize: BATCH_SIZE },
        { role: 'producer', port, rollouts, payloadBytes, frame },
      ],
      () => {
        gc()
        rssBase = rssPeak = process.memoryUsage.rss()
        sampler = setInterval(() => (rssPeak = Math.max(rssPeak, process.memoryUsage.rss())), 50)
        eventLoop = performance.eventLoopUtilization()
        cpu = process.cpuUsage()
        started = performance.now()
      },
    )) as [TrainerReport, ProducerReport]
    const serverMs = performance.now() - started
    const { user, system } = process.cpuUsage(cpu)
    rssPeak = Math.max(rssPeak, process.memoryUsage.rss())
    const ackLatency = producer.ackAt.map((at, f) => at - producer.sentAt[f])
    const toBatch = new Float64Array(trainer.delivered)
    let beforeAck = 0
    for (let k = 0; k < trainer.delivered; k++) {
      const i = trainer.order[k]
      const latency = trainer.arrivedAt[i] - producer.ackAt[Math.floor(i / frame)]
      beforeAck += Number(latency < 0)
      toBatch[k] = Math.max(0, latency)
    }
    const ack = latencyQuantiles(ackLatency)
    const ackToBatch = latencyQuantiles(toBatch)
    const elapsedMs = trainer.finishedAt - producer.startedAt
    const rate = trainer.delivered / (elapsedMs / 1000)
    return {
      delivered: trainer.delivered,
      duplicates: trainer.duplicates,
      payloadMismatches: trainer.payloadMismatches,
      acked: producer.acked,
      elapsedMs,
      rate,
      mbPerSec: (rate * producer.frameBytes) / rollouts / MB,
      ackP50: ack.p50,
      ackP99: ack.p99,
      ackToBatchP50: ackToBatch.p50,
      ackToBatchP99: ackToBatch.p99,
      beforeAck,
      rssBase,
      rssPeak,
      rssGrowth: rssPeak - rssBase,
      serverEventLoop: performance.eventLoopUtilization(eventLoop).utilization,
      serverCpu: (user + system) / 1000 / serverMs,
      producerCpu: producer.cpuMs / (producer.finishedAt - producer.startedAt),
      trainerCpu: trainer.cpuMs / elapsedMs,
    }
  } finally {
    clearInterval(sampler)
    await server.close()
    await close()
  }
}

/** Every numeric field of the runs as median and range. */
function summarise(runs: readonly DurablePayloadRun[]): DurableSummary {
  return Object.fromEntries(Object.keys(runs[0]).map((key) => [key, spread(runs.map((run) => run[key as keyof DurablePayloadRun]))])) as DurableSummary
}

/** One cell: the durable and relay runs, then the floors (in a process of their own). */
async function benchCell(options: PayloadBenchOptions, payloadBytes: number, frame: number): Promise<PayloadCell> {
  const { rollouts, runs, warmup } = options
  // room for the largest frame: its payloads and a generous allowance for each rollout's other fields
  const maxFrameBytes = Math.max(DEFAULT_WIRE_LIMITS.maxFrameBytes, frame * (payloadBytes + 1024))
  const window = Math.floor(SERVER_DEFAULTS.credit / frame)
  // the durable and relay runs alternate, so that the host's drift falls on both alike
  const durableAll: DurablePayloadRun[] = []
  const relayAll: DurablePayloadRun[] = []
  for (let i = 0; i < warmup + runs; i++) {
    durableAll.push(await durableRun(rollouts, payloadBytes, frame, maxFrameBytes))
    relayAll.push(await durableRun(rollouts, payloadBytes, frame, maxFrameBytes, openRelayBenchEngine))
  }
  const measured = durableAll.slice(warmup)
  const [{ frames, frameBytes, rounds }] = (await runClients([{ role: 'floors', rollouts, payloadBytes, frame, window, warmup, runs }], () => {})) as [
    FloorsReport,
  ]
  const durable = summarise(measured)
  const relay = summarise(relayAll.slice(warmup))
  const floors = {} as Record<FloorKind, FloorSummary>
  const percentOfFloor = {} as Record<FloorKind, number>
  for (const kind of FLOOR_KINDS) {
    const rates = rounds.map((round) => rollouts / (round[kind] / 1000))
    floors[kind] = { label: FLOORS[kind], rate: spread(rates), mbPerSec: spread(rates.map((r) => (r * frameBytes) / rollouts / MB)) }
    percentOfFloor[kind] = (100 * durable.rate.median) / floors[kind].rate.median
  }
  return {
    payloadBytes,
    frame,
    rollouts,
    frames,
    frameBytes,
    bytesPerRollout: frameBytes / rollouts,
    maxFrameBytes,
    window,
    durable,
    relay,
    floors,
    percentOfFloor,
    percentOfRelay: (100 * durable.rate.median) / relay.rate.median,
    runs: measured,
  }
}

const fixed = (digits: number) => (value: number) => value.toFixed(digits)
const withRange = (s: Spread, format: (value: number) => string) => `${format(s.median)} (${format(s.min)}–${format(s.max)})`
const mbytes = (bytes: number) => (bytes / MB).toFixed(0)

/** The cells as two plain-text tables: throughput beside the floors, then latency, memory and CPU. */
export function formatPayloadTables(cells: readonly PayloadCell[]): string {
  const name = (cell: PayloadCell) => `${cell.payloadBytes} B × ${cell.frame}`
  const throughputRows = cells.map((cell) => [
    name(cell),
    cell.rollouts.toLocaleString('en-US'),
    `${(cell.frameBytes / cell.frames / 1000).toFixed(1)} kB`,
    `${formatRate(cell.durable.rate.median)} (${formatRate(cell.durable.rate.min)} – ${formatRate(cell.durable.rate.max)})`,
    withRange(cell.durable.mbPerSec, fixed(1)),
    ...FLOOR_KINDS.map((kind) => withRange(cell.floors[kind].mbPerSec, fixed(1))),
    FLOOR_KINDS.map((kind) => `${cell.percentOfFloor[kind].toFixed(0)}%`).join(' / '),
    withRange(cell.relay.mbPerSec, fixed(1)),
    `${cell.percentOfRelay.toFixed(0)}%`,
  ])
  const detailRows = cells.map((cell) => {
    const d = cell.durable
    return [
      name(cell),
      `${withRange(d.ackP50, fixed(1))} / ${withRange(d.ackP99, fixed(1))}`,
      `${withRange(d.ackToBatchP50, fixed(1))} / ${withRange(d.ackToBatchP99, fixed(1))}`,
      `${mbytes(d.rssBase.median)} → ${withRange(d.rssPeak, mbytes)}, +${withRange(d.rssGrowth, mbytes)}`,
      `${d.serverCpu.median.toFixed(2)} / ${d.serverEventLoop.median.toFixed(2)}`,
      `${d.producerCpu.median.toFixed(2)} / ${d.trainerCpu.median.toFixed(2)}`,
      `${d.delivered.min} (${d.duplicates.max} dup, ${d.payloadMismatches.max} bad payload), ${d.beforeAck.median} before ack`,
      `${cell.relay.serverCpu.median.toFixed(2)} / ${cell.relay.serverEventLoop.median.toFixed(2)}`,
    ]
  })
  return [
    'payload bench: durable path vs floors, MB/s = 10^6 frame bytes/s, median (min–max); floors: ' +
      FLOOR_KINDS.map((kind, i) => `[${i + 1}] ${FLOORS[kind]}`).join('; ') +
      '; relay: the same server, producer and trainer with an engine that stores and computes nothing (the network floor)',
    textTable(
      [
        'payload × frame',
        'rollouts',
        'frame',
        'durable rollouts/s',
        'durable MB/s',
        '[1] MB/s',
        '[2] MB/s',
        '[3] MB/s',
        '[4] MB/s',
        'durable % of [1]/[2]/[3]/[4]',
        'relay MB/s',
        'durable % of relay',
      ],
      throughputRows,
    ),
    '',
    'payload bench: latency (ms), the server process (this one: RSS sampled every 50 ms, CPU in cores, event loop busy 0–1), the clients (CPU in cores)',
    textTable(
      [
        'payload × frame',
        'ack p50 / p99',
        'ack→batch p50 / p99',
        'server RSS MB base → peak, growth',
        'server CPU / loop',
        'producer / trainer CPU',
        'delivered',
        'relay server CPU / loop',
      ],
      detailRows,
    ),
  ].join('\n')
}

/** Checks what cannot run: a frame the producer's credit never covers, fewer rollouts than one batch. */
export function checkPayloadOptions(options: Pick<PayloadBenchOptions, 'rollouts' | 'frames'>): void {
  for (const frame of options.frames)
    if (frame > SERVER_DEFAULTS.credit)
      throw new Error(`payload bench: --frame ${frame} exceeds the server's credit of ${SERVER_DEFAULTS.credit} rollouts: a producer could never send it`)
  if (options.rollouts < BATCH_SIZE) throw new Error(`payload bench: --rollouts ${options.rollouts} is less than one batch (${BATCH_SIZE} rollouts)`)
}

/** Runs every (payload bytes, frame) cell, prints the tables through `log`, returns the cells. */
export async function benchPayload(options: PayloadBenchOptions): Promise<PayloadCell[]> {
  checkPayloadOptions(options)
  const cells: PayloadCell[] = []
  for (const payloadBytes of options.payloadBytes) for (const frame of options.frames) cells.push(await benchCell(options, payloadBytes, frame))
  options.log(formatPayloadTables(cells))
  return cells
}
