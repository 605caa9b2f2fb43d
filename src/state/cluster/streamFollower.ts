/**
 * Reads a JetStream stream (or one subject of it) in stream order from a given sequence, and
 * keeps reading through the loss of its consumer.
 *
 * nats.js's ordered consumer recreates itself when it notices a gap or a deleted consumer, but
 * not in every case: with a NATS server of the cluster killed, the chaos test saw ordered
 * consumers whose server side was gone sit silent for good, their iterators neither yielding
 * nor ending, while their streams grew (owners of three partitions stalled at once). So the
 * follower watches its consumer: when it has waited `stallMs` for a message while the stream
 * holds one after the last it yielded, it drops the consumer and opens another from the next
 * sequence. It does the same when a consumer ends or fails by itself (while the connection is
 * open). A message at or before the last yielded one (a replaced consumer's overlap) is
 * skipped, so the caller sees every sequence once, in order, as from one consumer.
 *
 * @example
 * const follower = new StreamFollower({ js, jsm, stream: 'ds_chaos_rollouts', subject: 'ds.chaos.part.3', from: 1 })
 * for await (const message of follower) feed(message.seq, message.data)
 * // elsewhere: await follower.close() ends the loop
 */
import { ClosedConnectionError } from '@nats-io/transport-node'
import { JetStreamApiCodes, JetStreamApiError, type JetStreamClient, type JetStreamManager, type JsMsg } from '@nats-io/jetstream'
import { asyncScheduler, type SchedulerAction, type SchedulerLike, type Subscription } from 'rxjs'
import { CONSUME_EXPIRES_MS, CONSUME_HEARTBEAT_MS } from './runLayout.js'

/** What ends a follower that was not closed: its connection is closed, or its stream deleted (`cause` says which). */
export class FollowerEndedError extends Error {
  override name = 'FollowerEndedError'
}

/** A consumer's messages as the follower needs them: iterable, and closable (which ends the iteration). */
export interface FollowedConsumer {
  messages: AsyncIterable<JsMsg>
  /** Ends the iteration and removes the consumer's server side (best effort). */
  close(): Promise<void>
}

export interface StreamFollowerOptions {
  js: JetStreamClient
  jsm: JetStreamManager
  stream: string
  /** Only this subject's messages (default: the whole stream). */
  subject?: string
  /** The first stream sequence to yield (default 1). */
  from?: number
  /** Most bytes a pull asks for (default: nats.js's). */
  maxBytes?: number
  /**
   * How long (ms) the follower waits for a message while the stream holds one after the last it
   * yielded before it replaces the consumer (default 3 × CONSUME_EXPIRES_MS: the client's own
   * recovery after two missed heartbeats comes first).
   */
  stallMs?: number
  /** Runs the stall check; default `asyncScheduler`. */
  scheduler?: SchedulerLike
  /** Told each time the consumer is replaced, with why. */
  onReplaced?: (why: string) => void
  /** Opens a consumer from a sequence; default an ordered consumer of nats.js. */
  open?: (from: number) => Promise<FollowedConsumer>
}

/**
 * nats.js's ordered consumer of `stream` (its `subject`, when given) from stream sequence `from`,
 * as the follower opens it by default.
 */
export async function orderedConsumer(options: Pick<StreamFollowerOptions, 'js' | 'stream' | 'subject' | 'maxBytes'>, from: number): Promise<FollowedConsumer> {
  const { js, stream, subject, maxBytes } = options
  const consumer = await js.consumers.get(stream, { opt_start_seq: from, ...(subject === undefined ? {} : { filter_subjects: subject }) })
  const messages = await consumer.consume({
    expires: CONSUME_EXPIRES_MS,
    idle_heartbeat: CONSUME_HEARTBEAT_MS,
    ...(maxBytes === undefined ? {} : { max_bytes: maxBytes }),
  })
  return {
    messages,
    close: async () => {
      // stop, not close: close waits for the iteration to finish, which may be the caller's own loop
      messages.stop()
      // the ordered consumer's server side goes now (else it lingers until its inactivity threshold)
      await consumer.delete().catch(() => {})
    },
  }
}

/** Waits before opening a consumer again after `failures` failed opens (ms). */
const reopenDelay = (failures: number): number => Math.min(2000, 100 * 2 ** Math.min(failures, 5))

/** Follows a stream; iterate it once. `close` ends the iteration (a message being handled is finished first; none is yielded after). */
export class StreamFollower implements AsyncIterable<JsMsg> {
  private next: number
  private current: FollowedConsumer | undefined
  private closed = false
  // why the consumer is being replaced by the stall check (undefined when it is not)
  private stalled: string | undefined
  // the stall check could not ask the stream during this wait (told once per wait)
  private askFailed = false
  // when the follower began waiting for the consumer's next message (undefined while the caller handles one)
  private waitingSince: number | undefined
  // when the stall check in progress began (undefined when none is), and checks begun so far
  private checkingSince: number | undefined
  private checks = 0
  private readonly timer: Subscription
  private readonly scheduler: SchedulerLike
  private readonly stallMs: number
  private wake: (() => void) | undefined
  /** Consumers replaced so far (stalled, ended or failed). */
  replaced = 0

  constructor(private readonly options: StreamFollowerOptions) {
    this.next = options.from ?? 1
    this.scheduler = options.scheduler ?? asyncScheduler
    this.stallMs = options.stallMs ?? 3 * CONSUME_EXPIRES_MS
    const check = () => void this.checkStall()
    const period = Math.max(10, this.stallMs / 2)
    this.timer = this.scheduler.schedule(function (this: SchedulerAction<void>) {
      check()
      this.schedule(undefined, period)
    }, period)
  }

  /** The sequence the next message yielded will have at least. */
  get position(): number {
    return this.next
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<JsMsg> {
    let failures = 0
    try {
      while (!this.closed) {
        let consumer: FollowedConsumer
        try {
          consumer = await this.openWithin(this.next)
        } catch (error) {
          if (this.closed) break
          // a closed connection or a deleted stream will not come back: the caller hears of it
          if (error instanceof ClosedConnectionError || (error instanceof JetStreamApiError && error.code === JetStreamApiCodes.StreamNotFound))
            throw new FollowerEndedError(`the consumer of ${this.where()} cannot be opened again: ${(error as Error).message}`, { cause: error })
          this.options.onReplaced?.(`opening a consumer of ${this.where()} from seq ${this.next} failed (${(error as Error).message}); trying again`)
          await this.pause(reopenDelay(failures++))
          continue
        }
        this.current = consumer
        if (this.closed) {
          await consumer.close().catch(() => {})
          break
        }
        let ended = 'ended'
        try {
          for await (const message of this.waiting(consumer.messages)) {
            // a replaced consumer may deliver again what its predecessor did
            if (message.seq < this.next) continue
            // nothing is yielded once closed (a message the consumer had buffered when it was)
            /* c8 ignore next -- a message buffered at the close: depends on timing */
            if (this.closed) break
            this.next = message.seq + 1
            failures = 0
            yield message
            if (this.closed) break
          }
        } catch (error) {
          ended = `failed (${(error as Error).message})`
        } finally {
          this.current = undefined
          void consumer.close().catch(() => {})
        }
        if (this.closed) break
        const stalled = this.stalled
        this.stalled = undefined
        this.replaced++
        this.options.onReplaced?.(`the consumer of ${this.where()} ${stalled ?? ended}; reading on from seq ${this.next} with a new one`)
        if (stalled === undefined) await this.pause(reopenDelay(failures++))
      }
    } finally {
      this.closed = true
      this.timer.unsubscribe()
    }
  }

  /** Ends the iteration: the loop over the follower ends after the message it is handling. */
  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.timer.unsubscribe()
    this.wake?.()
    await this.current?.close().catch(() => {})
  }

  /** The consumer's messages, noting while the follower waits for the next one. */
  private async *waiting(messages: AsyncIterable<JsMsg>): AsyncGenerator<JsMsg> {
    const iterator = messages[Symbol.asyncIterator]()
    try {
      while (true) {
        this.waitingSince = this.scheduler.now()
        const result = await iterator.next()
        this.waitingSince = undefined
        this.askFailed = false
        if (result.done) return
        yield result.value
      }
    } finally {
      this.waitingSince = undefined
    }
  }

  /**
   * Replaces the consumer when it has kept the follower waiting `stallMs` while the stream holds
   * more, or 3 × `stallMs` while the stream could not be asked (a blind replacement: an idle
   * stream then costs a new consumer now and then, which is cheap, and only during an outage).
   */
  private async checkStall(): Promise<void> {
    const since = this.waitingSince
    const now = this.scheduler.now()
    // a check whose request hangs does not hold back the next ones for long (its answer then counts for nothing)
    if (this.closed || since === undefined || (this.checkingSince !== undefined && now - this.checkingSince < 3 * this.stallMs)) return
    const waited = now - since
    if (waited < this.stallMs) return
    const check = ++this.checks
    this.checkingSince = now
    try {
      let why: string | undefined
      try {
        const last = await this.lastSeq()
        if (check !== this.checks) return
        if (last >= this.next) why = `stalled: no message for ${Math.round(waited)} ms while the stream holds seq ${this.next} or later`
      } catch (error) {
        if (check !== this.checks) return
        if (!this.askFailed)
          this.options.onReplaced?.(`the stall check of ${this.where()} could not ask the stream (${(error as Error).message}); it asks again`)
        this.askFailed = true
        if (waited >= 3 * this.stallMs) why = `stalled: no message for ${Math.round(waited)} ms, and the stream could not be asked`
      }
      if (why !== undefined && this.waitingSince === since && !this.closed && this.current !== undefined) {
        this.stalled = why
        // not awaited: removing a consumer on a server that is gone waits for the request's timeout
        void this.current.close().catch(() => {})
      }
    } finally {
      if (check === this.checks) this.checkingSince = undefined
    }
  }

  /** The stream's last sequence (of the subject, when one is followed); 0 when it holds none. */
  private async lastSeq(): Promise<number> {
    const { jsm, stream, subject } = this.options
    if (subject === undefined) return (await jsm.streams.info(stream)).state.last_seq
    return (await jsm.streams.getMessage(stream, { last_by_subj: subject }))?.seq ?? 0
  }

  /**
   * Opens a consumer, or fails when that takes `stallMs`: the requests behind an open wait for
   * their timeouts (or longer) while JetStream elects leaders, and the next try may get through.
   * A consumer opened after it was given up is closed.
   */
  private async openWithin(from: number): Promise<FollowedConsumer> {
    const opening = this.open(from)
    let timer: Subscription | undefined
    const late = new Promise<never>((_, reject) => {
      timer = this.scheduler.schedule(() => reject(new Error(`no answer within ${this.stallMs} ms opening it`)), this.stallMs)
    })
    const opened = await Promise.race([opening, late]).catch((error: unknown) => {
      timer!.unsubscribe()
      opening.then(
        (consumer) => void consumer.close().catch(() => {}),
        () => {},
      )
      throw error
    })
    timer!.unsubscribe()
    return opened
  }

  private open(from: number): Promise<FollowedConsumer> {
    return (this.options.open ?? ((at: number) => orderedConsumer(this.options, at)))(from)
  }

  private where(): string {
    const { stream, subject } = this.options
    return subject === undefined ? `stream ${stream}` : `${subject} (stream ${stream})`
  }

  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = this.scheduler.schedule(() => {
        this.wake = undefined
        resolve()
      }, ms)
      this.wake = () => {
        done.unsubscribe()
        this.wake = undefined
        resolve()
      }
    })
  }
}
