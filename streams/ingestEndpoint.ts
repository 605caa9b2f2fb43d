/**
 * `/ingest`: one producer connection. Rollout frames go to the durable engine; each frame is
 * answered exactly once and in the order it arrived (PROTOCOL.md, "Answers"): a well-formed
 * `rollouts` frame by one `ack` (the ids now durable on disk), preceded by one `rejected`
 * frame when some of its items were refused; any other frame by one `error`. Durability
 * completes in whatever order the disk and lmdb-js's write thread finish, so each answer
 * waits for its own frame's outcome and for every earlier frame's answer. Credit-based flow
 * control: the producer is told how many rollouts it may have unanswered; past that the socket
 * is no longer read until answers free credit. The server also bounds the bytes of frames in
 * flight across producers (ingestBytes.ts): above it no producer is read.
 */
import type { WebSocket } from 'ws'
import type { IngestOutcome } from '../src/state/durableEngine.js'
import { IngestRefused, type Engine } from '../src/state/engine.js'
import type { IngestBytes } from './ingestBytes.js'
import { wirePackr } from '../src/state/codec.js'
import { decodeRolloutsFrame } from '../src/state/rawPayload.js'
import { decodeFrame, describeValue, encodeFrame, errorFrame, type FrameErrorCode, type WireFormat, type WireLimits } from './wire.js'

/** What a producer connection needs from the server around it. */
export interface IngestContext {
  engine: Engine
  limits: WireLimits
  maxRolloutsPerFrame: number
  /** Most `rejected` errors reported for one frame (the rest are counted in `truncated`). */
  maxErrorsPerFrame: number
  /** The credit every producer has now (shrinks while the trainer outbox is large). */
  credit(): number
  /** The bytes of frames in flight across producers, and their bound. */
  ingestBytes: IngestBytes
  /** Counts an error frame sent, by code. */
  countError(code: FrameErrorCode): void
  /** The engine failed: the connection is closed with 1011. */
  onEngineFailure(error: unknown): void
}

/** The payload of the ping that ends a drain (a heartbeat's pong must not be taken for it). */
const DRAIN_MARK = Buffer.from('dualstream: drained')

export class ProducerConnection {
  /** Rollouts received and not yet answered. */
  outstanding = 0
  /** The credit last announced to the producer. */
  announced = -1
  /** The trainer's policy version last announced with it. */
  private announcedVersion: number | undefined
  /** Times reading was paused because the producer went past its credit. */
  pauses = 0

  constructor(
    readonly ws: WebSocket,
    private readonly format: WireFormat,
    private readonly context: IngestContext,
  ) {
    ws.on('message', (data: Buffer, isBinary) => this.onFrame(data, isBinary))
    this.flow()
  }

  // the answer to the newest frame so far: the next frame's answer goes out after it
  private answered: Promise<void> = Promise.resolve()
  // the engine failed: every frame is read (and answered `engine`) until the connection closes
  private failed = false
  private draining: Promise<void> | undefined

  private send(frame: object): void {
    if (this.ws.readyState === this.ws.OPEN) this.ws.send(encodeFrame(frame, this.format))
  }

  /** Sends a frame's answer once every earlier frame has had its own (FIFO per connection). */
  private answer(outcome: Promise<() => void>): void {
    // `outcome` settles to the function that sends the answer; it never rejects (see ingest)
    this.answered = Promise.all([this.answered, outcome]).then(([, reply]) => reply())
  }

  private refuse(code: FrameErrorCode, reason: string): void {
    this.context.countError(code)
    this.answer(Promise.resolve(() => this.send(errorFrame(code, reason))))
  }

  private onFrame(data: Buffer, isBinary: boolean): void {
    const decoded = decodeFrame(data, isBinary, this.context.limits)
    if (!decoded.ok) return this.refuse(decoded.code, decoded.reason)
    const frame = decoded.frame
    if (frame.type !== 'rollouts')
      return this.refuse('unknown-type', `unknown frame type ${JSON.stringify(frame.type.slice(0, 40))} on /ingest (expected "rollouts")`)
    const items = frame.rollouts
    if (!Array.isArray(items)) return this.refuse('bad-frame', `rollouts: must be an array of rollouts, got ${describeValue(items)}`)
    if (items.length > this.context.maxRolloutsPerFrame) {
      return this.refuse(
        'too-many-rollouts',
        `rollouts: ${items.length} items in one frame, at most ${this.context.maxRolloutsPerFrame} are accepted (split the frame)`,
      )
    }
    if (isBinary) return this.ingest(items, data)
    // a JSON producer's frame becomes MessagePack once, here: logged and passed on like any
    // other, its payloads as bytes from now on (a copy: msgpackr reuses its buffer)
    const bytes = Buffer.from(wirePackr.pack(frame))
    this.ingest((decodeRolloutsFrame(bytes) as { rollouts: unknown[] }).rollouts, bytes)
  }

  /** Logs a frame's items; `bytes` is the frame as MessagePack (as received, or converted from JSON). */
  private ingest(items: unknown[], bytes: Buffer): void {
    const { ingestBytes } = this.context
    // its size, not the frame: the answer must not keep the bytes alive once the engine is done with them
    const size = bytes.length
    this.outstanding += items.length
    ingestBytes.hold(size)
    // answered: the frame's bytes no longer count (and when that brings the total back under
    // its bound, every producer is flowed again: this one too)
    const answered = () => {
      this.outstanding -= items.length
      ingestBytes.release(size)
    }
    this.flow()
    // a synchronous throw (a closed store) becomes a rejection like any other failure
    const logged = new Promise<IngestOutcome>((resolve) => resolve(this.context.engine.ingest(items, { bytes, format: 'msgpack' })))
    this.answer(
      logged.then(
        (outcome) => () => {
          if (outcome.rejected.length > 0) {
            const max = this.context.maxErrorsPerFrame
            const errors = outcome.rejected.length > max ? outcome.rejected.slice(0, max) : outcome.rejected
            this.send(outcome.rejected.length > max ? { type: 'rejected', errors, truncated: outcome.rejected.length - max } : { type: 'rejected', errors })
          }
          this.send({ type: 'ack', ids: outcome.acked })
          answered()
          this.flow()
        },
        (error: unknown) => () => {
          if (error instanceof IngestRefused) {
            // nothing was logged: the producer sends these rollouts again once it has credit
            this.context.countError(error.code)
            this.send(errorFrame(error.code, error.message))
            answered()
            return this.flow()
          }
          this.context.countError('engine')
          this.send(errorFrame('engine', `the engine could not log this frame: ${String(error)}`))
          answered()
          this.context.onEngineFailure(error)
        },
      ),
    )
  }

  /** Resolves once every frame received so far has been answered. */
  answersSent(): Promise<void> {
    return this.answered
  }

  /**
   * After an engine failure: resolves once every frame the producer sent before it heard of
   * the failure has its answer (unbounded: the caller bounds it). Credit is 0 by then, so a
   * producer sends nothing new, and frames already on the wire are read (the socket is no
   * longer paused) and answered `engine`. A ping sent after those answers and the credit
   * marks the end: its pong follows, on the one ordered stream, every frame the producer sent
   * before it read them. Then the connection can close (1011) with nothing left unanswered.
   */
  drain(): Promise<void> {
    this.draining ??= (async () => {
      this.failed = true
      this.flow()
      await this.answered
      if (this.ws.readyState !== this.ws.OPEN) return
      await new Promise<void>((resolve) => {
        const done = () => {
          this.ws.off('pong', onPong)
          this.ws.off('close', done)
          resolve()
        }
        const onPong = (data: Buffer) => {
          if (data.equals(DRAIN_MARK)) done()
        }
        this.ws.on('pong', onPong)
        this.ws.on('close', done)
        this.ws.ping(DRAIN_MARK)
      })
      await this.answered
    })()
    return this.draining
  }

  /**
   * Announces a changed credit (or trainer policy version) and pauses or resumes reading the
   * socket. The credit frame carries the trainer's version once one was reported, and with
   * `maxAsync` the oldest version still admitted, so producers know when to sync weights.
   * Reading stops past the credit, or while the server's frames in flight are above their
   * bound (`pauses` counts only the former: the producer's own doing).
   */
  flow(): void {
    const credit = this.context.credit()
    const { policyVersion, config } = this.context.engine
    if (credit !== this.announced || policyVersion !== this.announcedVersion) {
      this.announced = credit
      this.announcedVersion = policyVersion
      if (policyVersion === undefined) this.send({ type: 'credit', credit })
      else if (config.maxAsync === undefined) this.send({ type: 'credit', credit, policyVersion })
      else this.send({ type: 'credit', credit, policyVersion, minPolicyVersion: policyVersion - config.maxAsync })
    }
    // a closing socket is never paused: the peer's close frame must be read to end the handshake
    const pastCredit = this.outstanding > credit
    if ((pastCredit || this.context.ingestBytes.over) && this.ws.readyState === this.ws.OPEN && !this.failed) {
      if (!this.ws.isPaused) {
        if (pastCredit) this.pauses++
        this.ws.pause()
      }
    } else if (this.ws.isPaused) this.ws.resume()
  }
}
