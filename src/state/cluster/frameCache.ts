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
import { WeightedLru } from './weightedLru.js'

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
  private readonly frames: WeightedLru<number, Uint8Array>
  private readonly decodedFrames: WeightedLru<number, PartitionFrame>
  /** Frames fetched from the stream (cache misses). */
  fetched = 0
  /** Frames decoded (misses of the decoded frames). */
  decodes = 0

  constructor(private readonly options: FrameCacheOptions) {
    this.frames = new WeightedLru(options.maxBytes ?? 64 * 1024 * 1024, (bytes) => bytes.length)
    this.decodedFrames = new WeightedLru(options.maxDecodedRollouts ?? 65_536, (frame) => frame.items.length)
  }

  /** The frame logged at stream sequence `seq`; rejects when the stream has no message there. */
  get(seq: number): Promise<Uint8Array> {
    return this.frames.getOrLoad(seq, () => this.fetch(seq))
  }

  /**
   * The frame at `seq`, decoded: its rollouts items, payloads as views of its bytes. Never
   * modify the items (every owner on the node shares them). Rejects, naming the frame, when
   * the stream has no message there or it is not a rollouts frame.
   */
  decoded(seq: number): Promise<PartitionFrame> {
    return this.decodedFrames.getOrLoad(seq, async () => {
      const frame = decodePartitionFrame(await this.get(seq), `frame ${seq}`)
      this.decodes++
      return frame
    })
  }

  /** The frame at `seq` if it is cached (no request). */
  peek(seq: number): Uint8Array | undefined {
    return this.frames.peek(seq)
  }

  /** Keeps a frame this node has just stored (its ingest): the roles reading it need not fetch it. */
  put(seq: number, bytes: Uint8Array): void {
    if (!this.frames.has(seq)) this.frames.set(seq, bytes)
  }

  /**
   * Keeps a frame this node has just stored decoded as well, when its items are exactly what
   * `decodePartitionFrame(bytes)` gives (the ingest endpoint decodes a frame that way): the
   * owners on this node then neither fetch nor decode it again.
   */
  putDecoded(seq: number, frame: PartitionFrame): void {
    this.put(seq, frame.bytes)
    if (!this.decodedFrames.has(seq)) this.decodedFrames.set(seq, frame)
  }

  private async fetch(seq: number): Promise<Uint8Array> {
    const { jsm, stream } = this.options
    const bytes = await fetchStreamMessage(jsm, stream, seq, `frame ${seq}`)
    this.fetched++
    return bytes
  }
}

/** The bytes of message `seq` of `stream`; rejects naming `what` when the stream has none there. */
export async function fetchStreamMessage(jsm: JetStreamManager, stream: string, seq: number, what: string): Promise<Uint8Array> {
  // a direct get (any replica answers, the bytes as they are) is much cheaper than the API's
  // (the stream's leader answers, in JSON with the bytes in base64); a replica that has not
  // stored the message yet answers that it has none, and then the leader is asked
  const message = (await jsm.direct.getMessage(stream, { seq })) ?? (await jsm.streams.getMessage(stream, { seq }))
  if (message === null) throw new Error(`${what}: stream ${stream} has no message ${seq} (deleted or purged?)`)
  // a direct get's data is a Buffer: the same bytes as a plain Uint8Array, as the API's get gives them
  return new Uint8Array(message.data.buffer, message.data.byteOffset, message.data.byteLength)
}
