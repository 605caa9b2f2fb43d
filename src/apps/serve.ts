/**
 * `dualstream serve`: the durable engine (LMDB in `--data`) behind the WebSocket server, with
 * live telemetry (`/telemetry`, `/metrics`, the dashboard at `/`) — the engine composition of
 * DESIGN §1 (the one place in src/ that wires streams/ I/O).
 */
import { once } from 'node:events'
import { asyncScheduler, type SchedulerLike } from 'rxjs'
import type { Config } from '../core/config.js'
import { DurableEngine } from '../state/durableEngine.js'
import type { Engine, EngineStats } from '../state/engine.js'
import { formatBytes, type DiskState, type StatFs } from '../state/diskGuard.js'
import { createProgress, fixed } from './progress.js'
import { settleWithin } from '../core/settleWithin.js'
import { bindProblem, isLoopback, type RoleTokens } from '../../streams/auth.js'
import { EngineServer, type EngineServerOptions } from '../../streams/engineServer.js'
import type { TlsCredentials } from '../../streams/host/index.js'
import { RateMeter } from '../../streams/telemetry/frames.js'
import { EngineTelemetry, type TelemetryOptions } from '../../streams/telemetry/telemetry.js'
import { tlsProblem } from './tlsCredentials.js'

export interface ServeOptions extends Omit<EngineServerOptions, 'engine' | 'onFailure'> {
  config: Config
  /**
   * The PEM certificate and private key as contents (string or Buffer, what `node:https` takes;
   * the CLI reads them from `--tls-cert` and `--tls-key`): the server then speaks HTTPS and
   * `wss://` only. Checked before the engine opens (a `ServeError` says which part is wrong).
   */
  tls?: TlsCredentials
  dataDir: string
  host: string
  /** 0 = any free port (the line printed says which). */
  port: number
  tokens: RoleTokens
  /** Wall clock for the engine; injectable for tests. */
  now?: () => number
  /** Free bytes to keep on the data folder's disk (`auto`, the default: 2% of it, 256 MiB to 4 GiB; 0 = not watched) and where rollouts resume (default twice the reserve). */
  diskReserve?: number | 'auto'
  diskResume?: number
  /** How often the data folder's free space is read (ms, default 1000) and how (tests). */
  diskCheckMs?: number
  statfs?: StatFs
  /** After an engine failure, how long stopping waits for connections and LMDB (ms, default `FAILED_STOP_MS`). */
  failedStopMs?: number
  /** Telemetry queue and history sizes, process metrics (for tests and tuning). */
  telemetry?: TelemetryOptions
  /** Called once listening, with the parts (for embedding and tests). */
  onListening?: (parts: { engine: DurableEngine; server: EngineServer; telemetry: EngineTelemetry; port: number }) => void
}

/** The invocation cannot be served (a non-loopback host without tokens, a port in use…). */
export class ServeError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'ServeError'
  }
}

export interface ServeIO {
  stdout: NodeJS.WritableStream
  /** Where the progress line goes when it is a terminal. */
  stderr?: NodeJS.WritableStream
}

/** The server's base URL: `http(s)://host:port`, an IPv6 host in brackets. */
export const serverUrl = (host: string, port: number, secure = false): string =>
  `${secure ? 'https' : 'http'}://${host.includes(':') ? `[${host}]` : host}:${port}`

/** The line announcing the address (https:// with TLS), in a form tests and scripts can parse. */
export const listeningLine = (host: string, port: number, secure = false): string =>
  `dualstream serve: listening on ${serverUrl(host, port, secure)} (WebSocket /ingest, /batches, /telemetry; GET /healthz, /metrics, /history; dashboard at /)\n`

/** The line saying that a server other machines can reach takes tokens and rollouts in clear. */
export const cleartextWarning = (host: string): string =>
  `dualstream serve: warning: listening on ${host} without TLS: bearer tokens and rollouts travel in clear; pass --tls-cert and --tls-key\n`

/** How long a server stopping after an engine failure waits for its connections and LMDB (ms). */
export const FAILED_STOP_MS = 10_000

/** How often the serve progress line is refreshed (ms). */
export const SERVE_PROGRESS_MS = 250

/**
 * The progress line of a running server on a terminal: step, rates, each constraint's latest
 * mean and λ, what waits. Refreshed every `SERVE_PROGRESS_MS` on `scheduler` (not per batch;
 * its `now()` is the clock of the rates); a no-op when not a TTY.
 *
 * @example
 * const progress = serveProgress(engine, telemetry, process.stderr)
 * // … serve …
 * progress.stop()
 */
export function serveProgress(
  engine: Pick<Engine, 'stats'>,
  telemetry: Pick<EngineTelemetry, 'latest'>,
  stream: NodeJS.WritableStream | undefined,
  force = false,
  scheduler: SchedulerLike = asyncScheduler,
): { stop(): void } {
  const meter = new RateMeter()
  const figures = () => {
    const stats = engine.stats()
    const rates = meter.update(scheduler.now(), {
      rollouts: stats.pipeline.rolloutsInBatches,
      ingested: stats.ingest.ingested,
      batches: stats.pipeline.batches,
    })
    const latest = telemetry.latest
    const constraints =
      Object.entries(stats.lambda)
        .map(([channel, lambda]) => `${channel} J ${fixed(latest?.constraints[channel]?.mean ?? NaN)} λ ${fixed(lambda)}`)
        .join(', ') || 'no constraints'
    return {
      step: stats.step,
      rate: fixed(rates.ingestPerSec ?? NaN, 0),
      batched: fixed(rates.rolloutsPerSec ?? NaN, 0),
      constraints,
      pending: stats.pendingRollouts,
      outbox: stats.outbox,
    }
  }
  const bar = createProgress({
    format: 'serve | step {step} | {rate} rollouts/s in, {batched} in batches | {constraints} | pending {pending}, outbox {outbox}',
    total: 1,
    stream,
    force,
    payload: figures(),
    scheduler,
  })
  if (!bar.active) return { stop: () => {} }
  const update = () => bar.update(0, figures())
  const refreshes = scheduler.schedule(function () {
    update()
    this.schedule(undefined, SERVE_PROGRESS_MS)
  }, SERVE_PROGRESS_MS)
  return {
    stop: () => {
      refreshes.unsubscribe()
      update()
      bar.stop()
    },
  }
}

/**
 * Opens the engine, serves until `signal` aborts, then closes connections and the engine.
 * Resolves with 0 after a clean stop, 1 when the engine failed while serving.
 */
export async function serve(options: ServeOptions, io: ServeIO, signal: AbortSignal): Promise<number> {
  const problem = bindProblem(options.host, options.tokens) ?? (options.tls === undefined ? undefined : tlsProblem(options.tls))
  if (problem !== undefined) throw new ServeError(problem)
  const engine = await DurableEngine.open({
    config: options.config,
    dataDir: options.dataDir,
    now: options.now,
    diskReserveBytes: options.diskReserve ?? 'auto',
    diskResumeBytes: options.diskResume,
    diskCheckMs: options.diskCheckMs,
    statfs: options.statfs,
  })
  const diskLine = (state: DiskState): string =>
    state.full
      ? `dualstream serve: ${engine.disk!.problem()}; producers are answered "disk-full" and get no credit\n`
      : `dualstream serve: disk space back at ${state.path}: ${formatBytes(state.free)} free; taking rollouts again\n`
  engine.disk?.changes.subscribe((state) => io.stdout.write(diskLine(state)))
  return serveOn(engine, options, io, signal, {
    started: (stats) => {
      const lambda = Object.entries(stats.lambda)
        .map(([channel, value]) => ` ${channel}=${value.toPrecision(4)}`)
        .join('')
      io.stdout.write(
        `dualstream serve: data ${options.dataDir}: step ${stats.step}${lambda === '' ? '' : `, λ${lambda}`}, ${stats.ingest.ingested} rollouts logged, ${stats.pendingRollouts} pending, ${stats.outbox} batches unacknowledged\n`,
      )
    },
    listening: () => {
      if (engine.disk?.isFull === true) io.stdout.write(diskLine(engine.disk.state))
    },
    onListening: options.onListening,
  })
}

/** What differs between serving one node's engine and a cluster node's. */
export interface ServeHooks<E extends Engine> {
  /** Before the listening line: what the engine holds. */
  started(stats: EngineStats): void
  /** After the listening line. */
  listening?(): void
  /** Called once listening, with the parts. */
  onListening?: (parts: { engine: E; server: EngineServer; telemetry: EngineTelemetry; port: number }) => void
  /** Adds to the server before it listens (a cluster node's routes). */
  mount?(server: EngineServer, telemetry: EngineTelemetry): void
  /** Runs after the connections are closed and before the engine is (a cluster node's roles). */
  beforeEngineClose?(): Promise<void>
}

/**
 * Serves `engine` (opened by the caller) until `signal` aborts or the engine fails, then closes
 * the connections and the engine. Resolves with 0 after a clean stop, 1 after a failure.
 */
export async function serveOn<E extends Engine>(
  engine: E,
  options: Omit<ServeOptions, 'dataDir' | 'onListening'>,
  io: ServeIO,
  signal: AbortSignal,
  hooks: ServeHooks<E>,
): Promise<number> {
  let failure: unknown
  const failed = new AbortController()
  const server = new EngineServer({
    ...options,
    engine,
    onFailure: (error) => {
      failure = error
      failed.abort()
    },
  })
  const telemetry = new EngineTelemetry(engine, options.telemetry)
  telemetry.mount(server, options.tokens)
  telemetry.metrics.watchTrainers(() => server.health())
  telemetry.metrics.watchIngest(() => server.ingestFlow())
  hooks.mount?.(server, telemetry)
  let address: { host: string; port: number }
  try {
    address = await server.listen(options.port, options.host)
  } catch (error) {
    telemetry.close()
    await server.close()
    await hooks.beforeEngineClose?.()
    await engine.close()
    throw new ServeError(`cannot listen on ${options.host}:${options.port}: ${(error as Error).message}`)
  }
  hooks.started(engine.stats())
  io.stdout.write(listeningLine(address.host, address.port, options.tls !== undefined))
  if (options.tls === undefined && !isLoopback(options.host)) io.stdout.write(cleartextWarning(options.host))
  hooks.listening?.()
  hooks.onListening?.({ engine, server, telemetry, port: address.port })
  const progress = serveProgress(engine, telemetry, io.stderr)
  if (!signal.aborted) await Promise.race([once(signal, 'abort'), once(failed.signal, 'abort')])
  progress.stop()
  io.stdout.write(
    failure === undefined
      ? 'dualstream serve: shutting down\n'
      : `dualstream serve: engine failure, shutting down (restart to recover from the log): ${(await engine.failureCause()) ?? String(failure)}\n`,
  )
  // a clean stop saves the whole-run history, so the next start need not rebuild it
  if (failure === undefined) await telemetry.saveHistory()
  telemetry.close()
  const stopping = server
    .close()
    .then(() => hooks.beforeEngineClose?.())
    .then(() => engine.close())
  if (failure === undefined) await stopping
  // after a failure, connections and LMDB get a bounded time: the process must still say "stopped" and exit 1
  else {
    const bound = options.failedStopMs ?? FAILED_STOP_MS
    if (!(await settleWithin(stopping, bound))) io.stdout.write(`dualstream serve: gave up waiting for connections and LMDB after ${bound / 1000} s\n`)
  }
  io.stdout.write('dualstream serve: stopped\n')
  return failure === undefined ? 0 : 1
}
