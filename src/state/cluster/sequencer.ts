/**
 * The sequencer role of a cluster run (DESIGN §8, cluster spec §3): the NATS shell around
 * `SequencerState`. It resumes from the last message of the BATCHES stream (the engine's
 * state), reads the GROUPS stream in order from there with an ordered consumer, and publishes
 * the batch entries it makes to `ds.R.batches` — those made while its previous publishes are
 * in flight together, as one message (or a few, by size: `batchesMessages`) — in step order,
 * each expecting the stream's last sequence to be
 * the one its previous publish gets (and, while that one is in flight, the last message to be
 * it): a deposed sequencer (another one published meanwhile) is refused and stops, so the
 * history never forks. While a batch
 * waits on `batchMaxWaitMs`, it appends the time to `ds.R.groups.wm`, so that the wait ends
 * in event time, in the stream, the same for everyone who reads it.
 *
 * Whoever holds the sequencer's lease starts one, and stops it when the lease is lost;
 * `isHeld()` is asked before every publish as well.
 */
import { asyncScheduler, type SchedulerAction, type SchedulerLike, type Subscription } from 'rxjs'
import { JetStreamApiCodes, JetStreamApiError, type JetStreamClient, type JetStreamManager, type StreamExpectations } from '@nats-io/jetstream'
import type { Config } from '../../core/config.js'
import type { Group } from '../../core/types.js'
import { batchesMessages, decodeBatchesMessage, decodeGroupsForScoring, encodeMessage, type BatchEntry, type GroupsWatermark } from './messages.js'
import type { RunLayout } from './runLayout.js'
import { SequencerState } from './sequencerState.js'
import { FollowerEndedError, StreamFollower } from './streamFollower.js'

export interface SequencerOptions {
  js: JetStreamClient
  jsm: JetStreamManager
  layout: RunLayout
  config: Config
  /** Whether this node still holds the sequencer's lease: asked before every publish. */
  isHeld: () => boolean
  /** Clock of the watermark timer (default: rxjs's asyncScheduler). */
  scheduler?: SchedulerLike
  /** Event time now, for the watermarks (default: the scheduler's clock). */
  now?: () => number
  /** Told of each batch entry once BATCHES holds it. */
  onBatch?: (entry: BatchEntry) => void
  /** Told when this sequencer stopped because it may no longer act: its lease is gone, or BATCHES moved on without it. */
  onDeposed?: (reason: string) => void
  /** Told of an error that stopped this sequencer (or, for a watermark's publish, that it shrugged off). */
  onError?: (error: unknown) => void
  /** BATCHES messages in flight at most (default 1; the steps made meanwhile go together in the next message). */
  publishWindow?: number
  /** Steps made and not yet sent at most (the window full) before reading GROUPS waits for a publish to return (default 1,024). */
  maxWaitingSteps?: number
  /** Told that the consumer of GROUPS was replaced (it stalled, ended or failed): reading goes on where it was. */
  onConsumerReplaced?: (why: string) => void
  /** Told of the groups of each GROUPS message it decoded (a node's deliveries read them from there instead of fetching them). */
  onGroups?: (seq: number, groups: readonly Group[]) => void
}

/** Bytes of GROUPS messages the ordered consumer asks for at a time (the messages of an owner that batches groups are large). */
const PULL_BYTES = 8 * 1024 * 1024
/** GROUPS messages fed between two turns of the event loop. */
const YIELD_EVERY = 16
/** nats-server's error code for a publish whose expected last message id is not the stream's (JSStreamWrongLastMsgIDErrF; the client names only the sequence's). */
const WRONG_LAST_MSG_ID = 10070
/**
 * BATCHES messages in flight by default: one, as an owner publishes GROUPS. The steps made
 * while it is go together in the next message, so under load messages grow instead of
 * multiplying (a publish costs more than the steps it carries), and a step waits at most one
 * round trip more. (The sequencer alone, `npm run bench -- --cluster`: 1.2 – 1.5 M rollouts/s
 * with 1, 1.0 – 1.4 M with 2 or 4, 0.9 – 1.0 M with 32, which made a message per GROUPS message.)
 */
export const PUBLISH_WINDOW = 1
/** Steps waiting for room in the window at most, by default, before the sequencer stops reading GROUPS until a publish returns. */
const MAX_WAITING_STEPS = 1024

/**
 * The last entry of a run's BATCHES stream (the engine's state) and its stream sequence;
 * `{ seq: 0 }` before the first step.
 *
 * @example
 * const { entry } = await readLastBatch(jsm, layout) // entry?.step: the run's last step
 */
export async function readLastBatch(jsm: JetStreamManager, layout: RunLayout): Promise<{ seq: number; entry?: BatchEntry }> {
  const stream = layout.streams.batches
  const seq = (await jsm.streams.info(stream)).state.last_seq
  if (seq === 0) return { seq }
  const stored = await jsm.streams.getMessage(stream, { seq })
  if (stored === null) throw new Error(`sequencer: ${stream} has no message at its last sequence ${seq}`)
  return { seq, entry: decodeBatchesMessage(stored.data, `${stream} seq ${seq}`).at(-1) }
}

/**
 * A running sequencer.
 *
 * @example
 * const sequencer = await Sequencer.start({ js, jsm, layout, config, isHeld: () => lease.held, onDeposed: (why) => log(why) })
 * lease.lost.then(() => sequencer.stop())
 */
export class Sequencer {
  private stopped = false
  // stopped because of a refusal or an error (reported once)
  private failed = false
  private step: number
  private readonly loop: Promise<void>
  private readonly timer: Subscription | undefined
  private watermarkInFlight = false
  private readonly window: number
  // the publishes whose outcome is not taken yet, oldest first, and the newest
  private readonly inFlight: Promise<void>[] = []
  private settled: Promise<void> = Promise.resolve()
  // the follower's close (it removes the consumer's server side)
  private closing: Promise<void> = Promise.resolve()
  private previousMsgID = ''
  // steps made and not yet sent (the window was full when they were made), in step order
  private waiting: BatchEntry[] = []

  private constructor(
    private readonly options: SequencerOptions,
    private readonly state: SequencerState,
    // the BATCHES stream's last sequence once every publish sent is stored: the next publish expects it
    private expected: number,
    step: number,
    private readonly messages: StreamFollower,
  ) {
    this.step = step
    this.window = options.publishWindow ?? PUBLISH_WINDOW
    this.loop = this.run()
    const wait = options.config.batchMaxWaitMs
    if (wait !== undefined) {
      const scheduler = options.scheduler ?? asyncScheduler
      const now = options.now ?? (() => scheduler.now())
      const period = Math.max(1, wait / 4)
      const tick = () => this.tick(now())
      this.timer = scheduler.schedule(function (this: SchedulerAction<unknown>) {
        tick()
        this.schedule(undefined, period)
      }, period)
    }
  }

  /**
   * Resumes after the last batch entry on BATCHES (or starts the run's first batch) and
   * consumes GROUPS from there. Rejects when the streams cannot be read.
   */
  static async start(options: SequencerOptions): Promise<Sequencer> {
    const { js, jsm, layout, config } = options
    const { seq: lastSequence, entry: last } = await readLastBatch(jsm, layout)
    const state = new SequencerState(config, last)
    const messages = new StreamFollower({
      js,
      jsm,
      stream: layout.streams.groups,
      from: state.resumeFrom,
      maxBytes: PULL_BYTES,
      scheduler: options.scheduler,
      onReplaced: options.onConsumerReplaced,
    })
    return new Sequencer(options, state, lastSequence, last?.step ?? 0, messages)
  }

  /** The last step published, the next GROUPS seq to feed, and the groups waiting in the batch being filled. */
  stats(): { step: number; resumeFrom: number; pendingGroups: number } {
    return { step: this.step, resumeFrom: this.state.resumeFrom, pendingGroups: this.state.pendingGroups }
  }

  /** Stops consuming and publishing; resolves once the publishes in flight have returned. */
  async stop(): Promise<void> {
    this.halt()
    await this.loop
    await this.settled
    await this.closing
  }

  private halt(): void {
    if (this.stopped) return
    this.stopped = true
    this.timer?.unsubscribe()
    this.closing = this.messages.close()
    this.state.close()
  }

  private async run(): Promise<void> {
    try {
      let fed = 0
      // once stopped, a message the consumer still yields goes to the closed state, which makes nothing of it
      for await (const message of this.messages) {
        const decoded = decodeGroupsForScoring(message.data)
        if ('groups' in decoded) this.options.onGroups?.(message.seq, decoded.groups)
        for (const entry of this.state.feedScoring(message.seq, decoded)) this.waiting.push(entry)
        this.sendWaiting()
        // the steps waiting for room in the window are bounded: past that, reading waits for a publish to return
        while (this.waiting.length >= (this.options.maxWaitingSteps ?? MAX_WAITING_STEPS) && this.inFlight.length > 0) await this.inFlight[0]
        if (this.stopped) return
        // the buffered messages come one microtask after another: let the socket be read now and
        // then, or acknowledgements wait behind them until their publishes time out
        if (++fed % YIELD_EVERY === 0) await new Promise(setImmediate)
      }
      // the follower ends only when the sequencer halts; it throws when its connection is closed
    } catch (error) {
      this.fail(error instanceof FollowerEndedError ? new Error(`sequencer: ${error.message}`, { cause: error }) : error)
    }
  }

  /**
   * Sends the steps waiting, unless the window is full: then they wait for a publish to return
   * and go with the steps made meanwhile. One message per publish, however many steps it
   * holds, is what makes the sequencer fast: a publish (its socket write, its PubAck) costs
   * more than scoring the steps of a GROUPS message, and under load several GROUPS messages
   * arrive per round trip.
   */
  private sendWaiting(): void {
    if (this.stopped || this.waiting.length === 0 || this.inFlight.length >= this.window) return
    const waiting = this.waiting
    this.waiting = []
    try {
      for (const { steps, bytes } of batchesMessages(waiting)) if (!this.publish(steps, bytes)) return
      /* c8 ignore start -- unreachable: every step SequencerState makes carries its state (batchesMessages checks) */
    } catch (error) {
      this.fail(error)
    }
    /* c8 ignore stop */
  }

  /**
   * Publishes one BATCHES message (`steps`, encoded as `bytes`) after those already sent,
   * expecting the last sequence the one before it will get: publishes on one connection are
   * stored in the order sent, so several may be in flight without losing the guarantee (if
   * one is refused, each one after it expects the refused one to be the stream's last
   * message, and is refused too). False when this sequencer must stop.
   */
  private publish(steps: BatchEntry[], bytes: Uint8Array): boolean {
    const first = steps[0]
    const { js, layout, isHeld } = this.options
    if (!isHeld()) {
      this.depose(`the ${layout.sequencerLease} lease of run ${layout.run} is not held: step ${first.step} not published`)
      return false
    }
    // the message's last step names it: steps are published once each, in order
    const msgID = `${layout.run}.b.${steps[steps.length - 1].step}`
    // while the previous message is in flight, the stream's last message must also be that one
    // (its sequence alone could be taken by another publisher's message should it be refused)
    const expect: Partial<StreamExpectations> = { lastSequence: this.expected }
    if (this.inFlight.length > 0) expect.lastMsgID = this.previousMsgID
    const expected = this.expected++
    this.previousMsgID = msgID
    const outcome = js.publish(layout.subjects.batches, bytes, { msgID, expect }).then(
      () => undefined,
      (error: unknown) => ({ error }),
    )
    // outcomes are taken in step order, each after the one before it
    const settled = this.settled.then(async () => {
      const refusal = await outcome
      if (refusal === undefined) this.published(steps)
      else this.refused(first, expected, refusal.error)
    })
    this.settled = settled
    this.inFlight.push(settled)
    void settled.then(() => {
      this.inFlight.shift()
      this.sendWaiting()
    })
    return true
  }

  /**
   * BATCHES holds the steps. (Should the message be a duplicate — another sequencer of the run
   * having published a message ending at the same step first, the stream deciding them — at a
   * sequence other than expected, the next publish is refused and this sequencer deposed.)
   */
  private published(steps: BatchEntry[]): void {
    for (const entry of steps) {
      this.step = entry.step
      this.options.onBatch?.(entry)
    }
  }

  private refused(entry: BatchEntry, expected: number, error: unknown): void {
    const { layout } = this.options
    if (error instanceof JetStreamApiError && (error.code === JetStreamApiCodes.StreamWrongLastSequence || error.code === WRONG_LAST_MSG_ID))
      this.depose(`${layout.streams.batches} moved on without this sequencer (step ${entry.step} expected last sequence ${expected}): ${error.message}`)
    else this.fail(error)
  }

  private fail(error: unknown): void {
    this.stopFor(() => this.options.onError?.(error))
  }

  private depose(reason: string): void {
    this.stopFor(() => this.options.onDeposed?.(reason))
  }

  /** Stops for good and reports why: the first failure only (the refusals of the publishes in flight after it are its consequences). */
  private stopFor(report: () => void): void {
    if (this.failed) return
    this.failed = true
    this.halt()
    report()
  }

  /** While a batch waits and event time has moved, appends the time to GROUPS (the wait ends when it comes back). Not called once stopped: the timer is cancelled. */
  private tick(now: number): void {
    const { js, layout, isHeld, onError } = this.options
    if (this.watermarkInFlight || this.state.pendingGroups === 0 || !(now > this.state.watermark) || !isHeld()) return
    this.watermarkInFlight = true
    const wm: GroupsWatermark = { wm: now }
    js.publish(layout.subjects.groupsWatermark, encodeMessage(wm)).then(
      () => (this.watermarkInFlight = false),
      (error: unknown) => {
        this.watermarkInFlight = false
        onError?.(error)
      },
    )
  }
}
