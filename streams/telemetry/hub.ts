/**
 * The fan-out of `/telemetry` (DESIGN §6). Each frame is encoded once per wire format in use
 * and handed to every client. A client's socket takes frames only while its `bufferedAmount`
 * is under a small threshold; beyond it frames wait in that client's bounded queue, and when
 * the queue is full the oldest frame is dropped (counted per client and in total). So a
 * client that stops reading holds at most `highWaterBytes` plus `queueLimit` frames of
 * memory, and publishing never waits for anyone: ingest and batch delivery do not slow down.
 * The queue drains from the `send` callbacks as the socket empties.
 */
import type { WebSocket } from 'ws'
import { encodeFrame, type WireFormat } from '../wire.js'
import type { BatchFrame, ClusterFrame, DroppedFrame, HelloFrame, StatusFrame } from './frames.js'

/** A fixed-capacity FIFO: pushing onto a full queue evicts (and returns) the oldest item. */
export class RingQueue<T> {
  private readonly items: (T | undefined)[]
  private head = 0
  private size = 0

  constructor(readonly capacity: number) {
    if (!Number.isSafeInteger(capacity) || capacity < 1) throw new RangeError(`queue capacity must be an integer >= 1, got ${capacity}`)
    this.items = new Array<T | undefined>(capacity)
  }

  get length(): number {
    return this.size
  }

  /** Appends; when full, the oldest item makes room and is returned. */
  push(item: T): T | undefined {
    let evicted: T | undefined
    if (this.size === this.capacity) evicted = this.shift()
    this.items[(this.head + this.size) % this.capacity] = item
    this.size++
    return evicted
  }

  /** Removes and returns the oldest item (undefined when empty). */
  shift(): T | undefined {
    if (this.size === 0) return undefined
    const item = this.items[this.head]
    this.items[this.head] = undefined
    this.head = (this.head + 1) % this.capacity
    this.size--
    return item
  }

  /** The items, oldest first. */
  toArray(): T[] {
    const out: T[] = []
    for (let i = 0; i < this.size; i++) out.push(this.items[(this.head + i) % this.capacity] as T)
    return out
  }
}

export interface HubOptions {
  /** Frames a client may have waiting beyond its socket buffer (default 256). */
  queueLimit?: number
  /** A client's socket takes frames only while it buffers fewer bytes than this (default 256 KiB). */
  highWaterBytes?: number
  /** Batch frames kept for the hello of a page opened mid-run (default 300). */
  historyLimit?: number
  /** Everything in the hello but the history, the sample and the limits (asked at each connection). */
  hello: () => Omit<HelloFrame, 'type' | 'version' | 'history' | 'sample' | 'limits'>
  /** Called for each frame dropped from any client's queue. */
  onDropped?: () => void
}

export const HUB_DEFAULTS = { queueLimit: 256, highWaterBytes: 256 * 1024, historyLimit: 300 }

/** What the hub tells about one connected client. */
export interface ClientInfo {
  id: number
  format: WireFormat
  /** Frames waiting in its queue now. */
  queued: number
  /** Frames it lost (oldest dropped from its full queue). */
  dropped: number
  /** The longest its queue has been. */
  maxQueued: number
}

type Encoded = Buffer | string

class TelemetryClient {
  readonly queue: RingQueue<Encoded>
  dropped = 0
  maxQueued = 0
  // drops already reported to the client with a `dropped` frame
  private reported = 0

  constructor(
    readonly id: number,
    readonly ws: WebSocket,
    readonly format: WireFormat,
    queueLimit: number,
    private readonly highWaterBytes: number,
  ) {
    this.queue = new RingQueue(queueLimit)
  }

  private get writable(): boolean {
    return this.ws.readyState === this.ws.OPEN && this.ws.bufferedAmount < this.highWaterBytes
  }

  /** Sends now when the socket has room and nothing is waiting; else queues. Returns whether a frame was dropped. */
  offer(data: Encoded): boolean {
    if (this.queue.length === 0 && this.writable) {
      this.send(data)
      return false
    }
    const dropped = this.queue.push(data) !== undefined
    if (dropped) this.dropped++
    this.maxQueued = Math.max(this.maxQueued, this.queue.length)
    return dropped
  }

  send(data: Encoded): void {
    this.ws.send(data, this.pump)
  }

  /** Moves queued frames to the socket while it has room; once empty, reports any new drops. */
  readonly pump = (): void => {
    while (this.queue.length > 0 && this.writable) this.send(this.queue.shift()!)
    if (this.queue.length === 0 && this.dropped > this.reported && this.writable) {
      this.reported = this.dropped
      const notice: DroppedFrame = { type: 'dropped', frames: this.dropped }
      this.send(encodeFrame(notice, this.format))
    }
  }
}

export class TelemetryHub {
  private readonly clients = new Set<TelemetryClient>()
  private readonly history: RingQueue<BatchFrame>
  private readonly settings: typeof HUB_DEFAULTS
  private latestSample: HelloFrame['sample'] = null
  private nextId = 1
  private droppedFrames = 0
  private closed = false

  constructor(private readonly options: HubOptions) {
    const defined = Object.fromEntries(Object.entries(options).filter(([key, value]) => key in HUB_DEFAULTS && value !== undefined))
    this.settings = { ...HUB_DEFAULTS, ...defined }
    this.history = new RingQueue(this.settings.historyLimit)
  }

  /** Frames dropped from all clients' queues since the hub started. */
  get dropped(): number {
    return this.droppedFrames
  }

  get limits(): { queue: number; history: number; highWaterBytes: number } {
    return { queue: this.settings.queueLimit, history: this.settings.historyLimit, highWaterBytes: this.settings.highWaterBytes }
  }

  /** The connected clients. */
  clientInfo(): ClientInfo[] {
    return [...this.clients].map((c) => ({ id: c.id, format: c.format, queued: c.queue.length, dropped: c.dropped, maxQueued: c.maxQueued }))
  }

  /** The hello frame a client gets on connecting now. */
  hello(): HelloFrame {
    return {
      type: 'hello',
      version: 1,
      ...this.options.hello(),
      history: this.history.toArray(),
      sample: this.latestSample,
      limits: { queue: this.settings.queueLimit, history: this.settings.historyLimit },
    }
  }

  /** Attaches a WebSocket: the hello at once, then every published frame. */
  connect(ws: WebSocket, format: WireFormat): void {
    if (this.closed) {
      ws.close(1001, 'telemetry is shutting down')
      return
    }
    const client = new TelemetryClient(this.nextId++, ws, format, this.settings.queueLimit, this.settings.highWaterBytes)
    this.clients.add(client)
    ws.on('close', () => this.clients.delete(client))
    // viewers have nothing to say: anything they send is ignored
    client.send(encodeFrame(this.hello(), format))
  }

  /** Sends a frame to every client (and keeps batch frames for the hello). Never waits. */
  publish(frame: BatchFrame | StatusFrame | ClusterFrame): void {
    if (frame.type === 'batch') {
      if (frame.sample !== undefined) {
        this.latestSample = frame.sample
        const { sample: _sample, ...rest } = frame
        this.history.push(rest)
      } else {
        this.history.push(frame)
      }
    }
    if (this.clients.size === 0) return
    const encoded: Partial<Record<WireFormat, Encoded>> = {}
    for (const client of this.clients) {
      const data = (encoded[client.format] ??= encodeFrame(frame, client.format))
      if (client.offer(data)) {
        this.droppedFrames++
        this.options.onDropped?.()
      }
    }
  }

  /** Closes every client connection (1001); later connections are refused. */
  close(): void {
    this.closed = true
    for (const client of this.clients) client.ws.close(1001, 'telemetry is shutting down')
  }
}
