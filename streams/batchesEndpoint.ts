/**
 * `/batches`: the trainer connection. On connect it first receives every unacknowledged
 * batch in step order, then each new batch as it becomes durable. Sends respect the
 * socket's buffer (`bufferedAmount` and `send` callbacks), so a slow trainer holds batches
 * in the durable outbox, not in memory beyond a bound. The trainer acknowledges by step
 * (`{type:"ack", step, policyVersion?}`); delivery is at-least-once and trainers dedupe by
 * step.
 */
import type { WebSocket } from 'ws'
import { wireUnpackr } from '../src/state/codec.js'
import type { Delivery } from '../src/state/engineStore.js'
import { shardBatch } from '../src/state/shardBatch.js'
import { decodeFrame, describeValue, encodeFrame, errorFrame, type FrameErrorCode, type WireFormat, type WireLimits } from './wire.js'

/** What the trainer connection needs from the server around it. */
export interface BatchesContext {
  limits: WireLimits
  /** Bytes buffered towards the trainer above which sending waits for the socket to drain. */
  highWaterBytes: number
  /** The newest step known durable: batches up to it may be delivered. */
  durableStep(): number
  /** Acknowledges a step (serialised by the server). */
  acknowledge(step: number, policyVersion: number | undefined): void
  countError(code: FrameErrorCode): void
}

const isCount = (value: unknown, min: number): value is number => Number.isSafeInteger(value) && (value as number) >= min

export class TrainerConnection {
  private readonly queue: Delivery[]
  /** The last step queued for this connection; newer commits are queued after it. */
  private lastQueued: number
  delivered = 0

  /**
   * `pending`: the unacknowledged batches of the outbox, in step order. `shard`: this
   * connection is rank `rank` of `world` data-parallel ranks and receives only its shard of each
   * batch (see streams/trainerRanks.ts); without it, whole batches.
   */
  constructor(
    readonly ws: WebSocket,
    private readonly format: WireFormat,
    private readonly context: BatchesContext,
    pending: Delivery[],
    private readonly shard?: { rank: number; world: number },
  ) {
    const durable = context.durableStep()
    this.queue = pending.filter((batch) => batch.step <= durable)
    this.lastQueued = durable
    ws.on('message', (data: Buffer, isBinary) => this.onFrame(data, isBinary))
    this.pump()
  }

  /** A newly durable batch. */
  enqueue(batch: Delivery): void {
    if (batch.step <= this.lastQueued) return
    this.lastQueued = batch.step
    this.queue.push(batch)
    this.pump()
  }

  private pump(): void {
    while (this.queue.length > 0 && this.ws.readyState === this.ws.OPEN && this.ws.bufferedAmount < this.context.highWaterBytes) {
      const batch = this.queue.shift()!
      this.delivered++
      // stored as MessagePack: sent as it is (or this rank's shard of it, cut from its bytes), or re-encoded for a JSON trainer
      const bytes = this.shard === undefined ? batch.bytes : shardBatch(batch.bytes, this.shard.rank, this.shard.world)
      const frame = this.format === 'msgpack' ? bytes : encodeFrame(wireUnpackr.unpack(bytes) as object, 'json')
      // the callback fires once the frame is handed to the socket: room for the next ones
      this.ws.send(frame, () => this.pump())
    }
  }

  private refuse(code: FrameErrorCode, reason: string): void {
    this.context.countError(code)
    if (this.ws.readyState === this.ws.OPEN) this.ws.send(encodeFrame(errorFrame(code, reason), this.format))
  }

  private onFrame(data: Buffer, isBinary: boolean): void {
    const decoded = decodeFrame(data, isBinary, this.context.limits)
    if (!decoded.ok) return this.refuse(decoded.code, decoded.reason)
    const frame = decoded.frame
    if (frame.type !== 'ack') return this.refuse('unknown-type', `unknown frame type ${JSON.stringify(frame.type.slice(0, 40))} on /batches (expected "ack")`)
    const { step, policyVersion } = frame
    if (!isCount(step, 1)) return this.refuse('bad-ack', `step: must be an integer >= 1, got ${describeValue(step)}`)
    if (step > this.context.durableStep())
      return this.refuse('bad-ack', `step: ${step} has not been delivered (the last committed step is ${this.context.durableStep()})`)
    if (policyVersion !== undefined && policyVersion !== null && !isCount(policyVersion, 0)) {
      return this.refuse('bad-ack', `policyVersion: must be an integer >= 0, got ${describeValue(policyVersion)}`)
    }
    this.context.acknowledge(step, (policyVersion ?? undefined) as number | undefined)
  }
}
