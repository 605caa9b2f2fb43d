/**
 * The server's bound on producer frames in flight, in bytes. A frame's bytes are held from the
 * moment it is read until its answer is sent (its ack, or its error): while it is being logged,
 * the frame, its decoded items and its write are in memory. Credit bounds rollouts per producer,
 * which is not memory: 4,096 rollouts of 64 KiB are 256 MiB, and every producer has its own.
 * Above `max` no producer socket is read (TCP then holds the rest back, in the kernel and the
 * producers); once answers bring the total back to `max`, reading resumes. A frame read while
 * the total is below is always taken, whatever its size, so a frame larger than `max` (up to
 * `--max-frame-bytes`) still goes through, alone.
 *
 * @example
 * const bytes = new IngestBytes(64 << 20, () => producers.forEach((p) => p.flow()))
 * bytes.hold(frame.length) // read
 * if (bytes.over) ws.pause()
 * bytes.release(frame.length) // answered: below again → every producer's flow() resumes reading
 */
export class IngestBytes {
  /** Bytes of frames read and not yet answered, across producers. */
  held = 0
  /** Times the total went above `max` (every producer's reading stopped). */
  holds = 0

  /** `onBelow` runs when answers bring the total from above `max` back to it. */
  constructor(
    readonly max: number,
    private readonly onBelow: () => void,
  ) {
    if (!(Number.isSafeInteger(max) && max > 0)) throw new RangeError(`maxIngestBytes must be a positive integer of bytes, got ${max}`)
  }

  /** Whether the frames in flight are above the bound: no producer is to be read. */
  get over(): boolean {
    return this.held > this.max
  }

  /** A frame of `bytes` was read. */
  hold(bytes: number): void {
    const wasOver = this.over
    this.held += bytes
    if (!wasOver && this.over) this.holds++
  }

  /** A frame of `bytes` was answered. */
  release(bytes: number): void {
    const wasOver = this.over
    this.held -= bytes
    if (wasOver && !this.over) this.onBelow()
  }
}
