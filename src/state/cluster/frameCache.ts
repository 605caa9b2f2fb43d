/**
 * The logged frames a cluster node reads back (to assemble a trainer's batch, or as a
 * partition's owner to decode its items), by their sequence in the run's ROLLOUTS stream:
 * fetched from the stream and kept in a cache bounded by bytes, least recently used first
 * out. Concurrent reads of one frame share one request.
 *
 * Beside the bytes, `decoded` keeps frames decoded (`decodePartitionFrame`), bounded by their
 * rollouts: a frame's items usually span every partition, and the node's owners of those
 * partitions then decode it once between them instead of once each (the decode of a frame
 * costs more than the work an owner does with its share of it).
 */
import type { JetStreamManager } from '@nats-io/jetstream'
import { decodePartitionFrame, type PartitionFrame } from './partitionState.js'

export interface FrameCacheOptions {
  jsm: JetStreamManager
  /** The run's ROLLOUTS stream. */
  stream: string
  /** Most bytes kept (default 64 MiB); a frame larger than this is returned but not kept. */
  maxBytes?: number
  /**
   * Most rollouts kept decoded (default 65,536: 64 frames of 1,000); a frame with more is
   * returned but not kept. A decoded frame also holds its bytes (its payloads are views of them).
   */
  maxDecodedRollouts?: number
}

/**
 * A node's frames by ROLLOUTS stream sequence.
 *
 * @example
 * const frames = new FrameCache({ jsm, stream: layout.streams.rollouts })
 * const bytes = await frames.get(entry.frame) // for a trainer's batch
 * const frame = await frames.decoded(entry.frame) // for a partition's owner
 */
export class FrameCache {
  private readonly frames = new Map<number, Uint8Array>()
  private readonly fetching = new Map<number, Promise<Uint8Array>>()
  private bytes = 0
  private readonly maxBytes: number
  private readonly decodedFrames = new Map<number, PartitionFrame>()
  private readonly decoding = new Map<number, Promise<PartitionFrame>>()
  private decodedRollouts = 0
  private readonly maxDecodedRollouts: number
  /** Frames fetched from the stream (cache misses). */
  fetched = 0
  /** Frames decoded (misses of the decoded frames). */
  decodes = 0

  constructor(private readonly options: FrameCacheOptions) {
    this.maxBytes = options.maxBytes ?? 64 * 1024 * 1024
    this.maxDecodedRollouts = options.maxDecodedRollouts ?? 65_536
  }

  /** The frame logged at stream sequence `seq`; rejects when the stream has no message there. */
  get(seq: number): Promise<Uint8Array> {
    const cached = this.frames.get(seq)
    if (cached !== undefined) {
      // most recently used last
      this.frames.delete(seq)
      this.frames.set(seq, cached)
      return Promise.resolve(cached)
    }
    let fetching = this.fetching.get(seq)
    if (fetching === undefined) {
      fetching = this.fetch(seq).finally(() => this.fetching.delete(seq))
      this.fetching.set(seq, fetching)
    }
    return fetching
  }

  /**
   * The frame at `seq`, decoded: its rollouts items, payloads as views of its bytes. Never
   * modify the items (every owner on the node shares them). Rejects, naming the frame, when
   * the stream has no message there or it is not a rollouts frame.
   */
  decoded(seq: number): Promise<PartitionFrame> {
    const cached = this.decodedFrames.get(seq)
    if (cached !== undefined) {
      this.decodedFrames.delete(seq)
      this.decodedFrames.set(seq, cached)
      return Promise.resolve(cached)
    }
    let decoding = this.decoding.get(seq)
    if (decoding === undefined) {
      decoding = this.get(seq)
        .then((bytes) => {
          const frame = decodePartitionFrame(bytes, `frame ${seq}`)
          this.decodes++
          return this.keepDecoded(seq, frame)
        })
        .finally(() => this.decoding.delete(seq))
      this.decoding.set(seq, decoding)
    }
    return decoding
  }

  /** The frame at `seq` if it is cached (no request). */
  peek(seq: number): Uint8Array | undefined {
    return this.frames.get(seq)
  }

  /** Keeps a frame this node has just stored (its ingest): the roles reading it need not fetch it. */
  put(seq: number, bytes: Uint8Array): void {
    if (bytes.length > this.maxBytes || this.frames.has(seq)) return
    this.keep(seq, bytes)
  }

  /**
   * Keeps a frame this node has just stored decoded as well, when its items are exactly what
   * `decodePartitionFrame(bytes)` gives (the ingest endpoint decodes a frame that way): the
   * owners on this node then neither fetch nor decode it again.
   */
  putDecoded(seq: number, frame: PartitionFrame): void {
    this.put(seq, frame.bytes)
    if (!this.decodedFrames.has(seq)) this.keepDecoded(seq, frame)
  }

  private async fetch(seq: number): Promise<Uint8Array> {
    const { jsm, stream } = this.options
    // a direct get (any replica answers, the bytes as they are) is much cheaper than the API's
    // (the stream's leader answers, in JSON with the bytes in base64); a replica that has not
    // stored the message yet answers that it has none, and then the leader is asked
    const message = (await jsm.direct.getMessage(stream, { seq })) ?? (await jsm.streams.getMessage(stream, { seq }))
    if (message === null) throw new Error(`frame ${seq}: stream ${stream} has no message ${seq} (deleted or purged?)`)
    this.fetched++
    // a direct get's data is a Buffer: the same bytes as a plain Uint8Array, as the API's get gives them
    const bytes = new Uint8Array(message.data.buffer, message.data.byteOffset, message.data.byteLength)
    this.keep(seq, bytes)
    return bytes
  }

  private keep(seq: number, bytes: Uint8Array): void {
    if (bytes.length <= this.maxBytes) {
      this.frames.set(seq, bytes)
      this.bytes += bytes.length
      for (const [oldest, frame] of this.frames) {
        if (this.bytes <= this.maxBytes) break
        this.frames.delete(oldest)
        this.bytes -= frame.length
      }
    }
  }

  private keepDecoded(seq: number, frame: PartitionFrame): PartitionFrame {
    const rollouts = frame.items.length
    if (rollouts <= this.maxDecodedRollouts) {
      this.decodedFrames.set(seq, frame)
      this.decodedRollouts += rollouts
      for (const [oldest, kept] of this.decodedFrames) {
        if (this.decodedRollouts <= this.maxDecodedRollouts) break
        this.decodedFrames.delete(oldest)
        this.decodedRollouts -= kept.items.length
      }
    }
    return frame
  }
}
