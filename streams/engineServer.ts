/**
 * The engine's network surface (DESIGN §6): WebSocket endpoints `/ingest` (producers) and
 * `/batches` (the trainer), `GET /healthz`, on the shared HTTP host (host/: tokens checked
 * at the upgrade, heartbeat, error answers, graceful close). This file holds what is the
 * engine's own: flow control, the trainer connection, health and the error counts.
 *
 * Flow control: each producer may have `credit` rollouts unanswered. While the trainer
 * outbox (unacknowledged batches) holds more than half of `maxOutbox` the credit shrinks in
 * eighths, down to 0 at `maxOutbox`, so producers pause when the trainer lags. Credit counts
 * rollouts, not memory: the bytes of frames read and not yet answered, across producers, are
 * bounded too (`maxIngestBytes`, ingestBytes.ts); above it no producer is read until answers
 * bring them back, so the server's memory is set by configuration whatever the payload size.
 *
 * One trainer connection per rank (a single trainer is rank 0 of world 1; see trainerRanks.ts):
 * a new one replaces the old (closed with 4001), so a trainer that reconnects after a network
 * failure is not locked out by its own ghost, and it first receives every unacknowledged batch.
 */
import type { Server } from 'node:http'
import type { SchedulerLike, Subscription } from 'rxjs'
import type { WebSocket } from 'ws'
import type { CommittedBatch } from '../src/state/durableEngine.js'
import type { Engine } from '../src/state/engine.js'
import type { DiskState } from '../src/state/diskGuard.js'
import type { IngestCounters, PipelineCounters } from '../src/state/engineStore.js'
import type { RoleTokens } from './auth.js'
import { HttpHost, sendJson, type Endpoint, type HttpRoute, type ListenResult, type Mountable, type TlsCredentials } from './host/index.js'
import { IngestBytes } from './ingestBytes.js'
import { ProducerConnection } from './ingestEndpoint.js'
import { settleWithin } from '../src/core/settleWithin.js'
import { TrainerRanks } from './trainerRanks.js'
import { DEFAULT_WIRE_LIMITS, type FrameErrorCode, type WireFormat, type WireLimits } from './wire.js'

export interface EngineServerOptions {
  engine: Engine
  tokens?: RoleTokens
  /** Serve HTTPS and `wss://` with this PEM certificate and key (default plain HTTP and `ws://`). */
  tls?: TlsCredentials
  /** Rollouts a producer may have unanswered while the trainer keeps up. */
  credit?: number
  /** Unacknowledged batches at which producers get no credit at all. */
  maxOutbox?: number
  /** Bytes of frames read from producers and not yet answered, across producers, above which no producer is read. */
  maxIngestBytes?: number
  /** Most rollouts in one frame (a larger frame is refused whole). */
  maxRolloutsPerFrame?: number
  /** Most item errors reported in one `rejected` frame. */
  maxErrorsPerFrame?: number
  limits?: Partial<WireLimits>
  /** Ping period; a peer that has not answered the previous ping is terminated (0 = no heartbeat). */
  heartbeatMs?: number
  /** Bytes buffered towards the trainer above which sending waits. */
  trainerHighWaterBytes?: number
  /** How long `close()` waits for peers to complete the closing handshake before cutting them off. */
  closeTimeoutMs?: number
  /** The engine failed (a store write): the server keeps answering but cannot log anything. */
  onFailure?: (error: unknown) => void
  /** Clock of the heartbeat and of the close timeout (default `asyncScheduler`; tests pass a virtual one). */
  scheduler?: SchedulerLike
}

export const SERVER_DEFAULTS = {
  // enough frames in flight to cover a flush, few enough that acks (and batches) are not queued behind seconds of writes
  credit: 4096,
  maxOutbox: 256,
  // a few flushes' worth of large frames: 4,096 rollouts of 16 KiB, or 4 frames of the largest default size
  maxIngestBytes: 64 * 1024 * 1024,
  maxRolloutsPerFrame: 10_000,
  maxErrorsPerFrame: 1000,
  heartbeatMs: 30_000,
  trainerHighWaterBytes: 4 * 1024 * 1024,
  closeTimeoutMs: 2000,
}

/** What `/healthz` answers. */
export interface HealthReport {
  /** `failed`: a write failed and the engine stopped; `disk-full`: the data folder is at its reserve (rollouts refused until space is back). */
  status: 'ok' | 'failed' | 'disk-full'
  error?: string
  /** The data folder's disk watermarks and free space, when watched. */
  disk?: DiskState
  step: number
  lambda: Record<string, number>
  /** Unacknowledged batches. */
  outbox: number
  /** Rollouts inside the pipeline (pending groups, the batch being filled). */
  pendingRollouts: number
  ingest: IngestCounters
  pipeline: PipelineCounters
  /** The credit each producer has now. */
  credit: number
  producers: number
  /** A trainer (any rank) is connected. */
  trainer: boolean
  /** The data-parallel world of the connected trainer ranks, and which ranks are connected. */
  trainerRanks: { world: number | undefined; ranks: number[] }
  /** The newest policy version a trainer reported (undefined until one did). */
  policyVersion: number | undefined
  /** Batches sent to trainers (redeliveries included). */
  delivered: number
  /** Error frames sent, by code. */
  frameErrors: Record<string, number>
  /** Times a producer went past its credit and was paused. */
  pauses: number
  /** Bytes of producer frames read and not yet answered; their bound; times they went above it (and no producer was read). */
  ingestBytes: { held: number; max: number; holds: number }
}

/** After an engine failure, how long closing waits for the unanswered frames' answers (ms; writes still in flight get 1 s of it). */
const FAILED_ANSWERS_MS = 3000

export class EngineServer implements Mountable {
  /** The HTTP + WebSocket host the endpoints are served on. */
  readonly host: HttpHost
  readonly http: Server
  private readonly engine: Engine
  private readonly settings: typeof SERVER_DEFAULTS
  private readonly limits: WireLimits
  private readonly producers = new Set<ProducerConnection>()
  private readonly ingestBytes: IngestBytes
  private readonly trainers: TrainerRanks
  private readonly frameErrors: Record<string, number> = {}
  private readonly subscription: Subscription
  private outbox: number
  private durable: number
  private pauses = 0
  // acknowledgements under way (shutdown waits for them)
  private readonly acks = new Set<Promise<void>>()
  private failure: unknown
  private closing: Promise<void> | undefined

  constructor(private readonly options: EngineServerOptions) {
    this.engine = options.engine
    const defined = Object.fromEntries(Object.entries(options).filter(([key, value]) => key in SERVER_DEFAULTS && value !== undefined))
    this.settings = { ...SERVER_DEFAULTS, ...defined }
    this.limits = { ...DEFAULT_WIRE_LIMITS, ...options.limits }
    this.ingestBytes = new IngestBytes(this.settings.maxIngestBytes, () => this.flowAll())
    const stats = this.engine.stats()
    this.outbox = stats.outbox
    this.durable = stats.step
    this.host = new HttpHost({
      tokens: options.tokens,
      tls: options.tls,
      heartbeatMs: this.settings.heartbeatMs,
      closeTimeoutMs: this.settings.closeTimeoutMs,
      scheduler: options.scheduler,
      // frames above the limit get an error frame; far above it ws closes with 1009 without reading them
      maxPayload: 2 * this.limits.maxFrameBytes,
      // the wire decoder answers bad text with an error frame
      skipUTF8Validation: true,
      listPathsInErrors: true,
      onSocketError: (error) => this.countError(error.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH' ? 'too-large' : 'protocol'),
    })
    this.http = this.host.http
    this.addWebSocketEndpoint('/ingest', { role: 'producer', connect: (ws, format) => this.connectProducer(ws, format) })
    this.trainers = new TrainerRanks({
      limits: this.limits,
      highWaterBytes: this.settings.trainerHighWaterBytes,
      durableStep: () => this.durable,
      pendingDeliveries: () => this.engine.pendingDeliveries(),
      acknowledge: (step, policyVersion) => this.acknowledge(step, policyVersion),
      countError: this.countError,
    })
    this.addWebSocketEndpoint('/batches', { role: 'trainer', connect: (ws, format, url) => this.trainers.connect(ws, format, url) })
    this.addHttpRoute('/healthz', (_request, response) => {
      const report = this.health()
      sendJson(response, report.status === 'ok' ? 200 : 503, report)
    })
    this.subscription = this.engine.committed.subscribe((committed) => this.onCommitted(committed))
    // a cluster node: a trainer on another node acknowledged a batch (and maybe a new policy version)
    const elsewhere = this.engine.acknowledgedElsewhere?.subscribe(() => {
      this.outbox--
      this.flowAll()
    })
    if (elsewhere !== undefined) this.subscription.add(elsewhere)
    // the disk crossing its watermarks changes every producer's credit (0 while full)
    const disk = this.engine.disk?.changes.subscribe(() => this.flowAll())
    if (disk !== undefined) this.subscription.add(disk)
    void this.engine.failed.then(this.fail)
  }

  /**
   * Serves a WebSocket endpoint at `path`, open to `role` (token checked at the upgrade).
   * Connections get the server's heartbeat; `connect` attaches the protocol.
   */
  addWebSocketEndpoint(path: string, endpoint: Endpoint): void {
    this.host.addWebSocketEndpoint(path, endpoint)
  }

  /** Serves plain HTTP requests at `path` (`/healthz` here; a dashboard or `/metrics` alongside). */
  addHttpRoute(path: string, route: HttpRoute): void {
    this.host.addHttpRoute(path, route)
  }

  /** Starts listening; resolves to the actual address (`port: 0` picks a free port). */
  listen(port: number, host: string): Promise<ListenResult> {
    return this.host.listen(port, host)
  }

  /** The credit every producer has now, from the size of the trainer outbox. */
  credit(): number {
    // a data folder at its disk reserve takes nothing until space is back
    if (this.engine.disk?.isFull === true || this.failure !== undefined) return 0
    const { credit, maxOutbox } = this.settings
    const half = maxOutbox / 2
    if (this.outbox <= half) return credit
    if (this.outbox >= maxOutbox) return 0
    return Math.floor((credit * Math.floor((8 * (maxOutbox - this.outbox)) / (maxOutbox - half))) / 8)
  }

  health(): HealthReport {
    const stats = this.engine.stats()
    const disk = this.engine.disk?.state
    const report: HealthReport = {
      status: this.failure !== undefined ? 'failed' : disk?.full === true ? 'disk-full' : 'ok',
      step: stats.step,
      lambda: stats.lambda,
      outbox: this.outbox,
      pendingRollouts: stats.pendingRollouts,
      ingest: stats.ingest,
      pipeline: stats.pipeline,
      credit: this.credit(),
      producers: this.producers.size,
      trainer: this.trainers.status().ranks.length > 0,
      trainerRanks: this.trainers.status(),
      policyVersion: this.engine.policyVersion,
      delivered: this.trainers.delivered(),
      frameErrors: { ...this.frameErrors },
      ...this.ingestFlow(),
    }
    if (this.failure !== undefined) report.error = String(this.failure)
    if (disk !== undefined) report.disk = disk
    return report
  }

  /** The producers' flow control, without the engine's figures (what `/metrics` scrapes): `pauses` and `ingestBytes` of `health()`. */
  ingestFlow(): Pick<HealthReport, 'pauses' | 'ingestBytes'> {
    const { held, max, holds } = this.ingestBytes
    return { pauses: [...this.producers].reduce((n, p) => n + p.pauses, this.pauses), ingestBytes: { held, max, holds } }
  }

  private countError = (code: FrameErrorCode): void => {
    this.frameErrors[code] = (this.frameErrors[code] ?? 0) + 1
  }

  private fail = (error: unknown): void => {
    if (this.failure !== undefined) return
    this.failure = error
    // producers hear of it with their unanswered frames' error answers, then a 1011 close (see shutdown)
    this.flowAll()
    this.options.onFailure?.(error)
  }

  private connectProducer(ws: WebSocket, format: WireFormat): void {
    const producer = new ProducerConnection(ws, format, {
      engine: this.engine,
      limits: this.limits,
      maxRolloutsPerFrame: this.settings.maxRolloutsPerFrame,
      maxErrorsPerFrame: this.settings.maxErrorsPerFrame,
      credit: () => this.credit(),
      ingestBytes: this.ingestBytes,
      countError: this.countError,
      onEngineFailure: (error) => {
        this.fail(error)
        // every frame the producer sent before it heard of the failure gets its answer (acked if
        // its write had succeeded, else `engine`; see drain), then the connection closes with 1011
        void settleWithin(producer.drain(), FAILED_ANSWERS_MS).then(() => {
          ws.close(1011, 'engine failure')
          // a producer paused past its credit (0 after a failure) must be read again, or the peer's close frame never is
          ws.resume()
        })
      },
    })
    this.producers.add(producer)
    ws.on('close', () => {
      this.producers.delete(producer)
      this.pauses += producer.pauses
    })
  }

  private acknowledge(step: number, policyVersion: number | undefined): void {
    const version = this.engine.policyVersion
    const done = this.engine.acknowledge(step, policyVersion).then((known) => {
      if (known) {
        // a smaller outbox: more credit
        this.outbox--
        this.flowAll()
      }
    }, this.fail)
    // admission (maxAsync) judges by the new version from now on: producers hear of it at once,
    // not after the policy record is flushed, or a frame sent in between is refused against a
    // version they were never told
    if (this.engine.policyVersion !== version) this.flowAll()
    this.acks.add(done)
    done.finally(() => this.acks.delete(done))
  }

  /** Resolves once every trainer acknowledgement received so far has been applied (and its policy version logged). */
  async acknowledgementsApplied(): Promise<void> {
    await Promise.all(this.acks)
  }

  private onCommitted({ delivery, acknowledged }: CommittedBatch & { acknowledged?: boolean }): void {
    this.durable = delivery.step
    if (acknowledged === true) return
    this.outbox++
    this.trainers.enqueue(delivery)
    this.flowAll()
  }

  private flowAll(): void {
    for (const producer of this.producers) producer.flow()
  }

  /** Closes every connection (1001), stops listening and waits for pending acknowledgements. The engine stays open. */
  close(): Promise<void> {
    this.closing ??= this.shutdown()
    return this.closing
  }

  private async shutdown(): Promise<void> {
    this.subscription.unsubscribe()
    if (this.failure !== undefined) {
      // every frame received gets its answer (its `engine` error) before the connection closes with
      // 1011; a write lmdb-js never settles after the failure is not waited for beyond a while
      await settleWithin(Promise.all([...this.producers].map((p) => p.drain())), FAILED_ANSWERS_MS)
      await this.host.close(1011, 'engine failure')
    } else await this.host.close()
    await this.acknowledgementsApplied()
  }
}
