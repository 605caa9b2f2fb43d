/**
 * The owner of one partition of a cluster run (DESIGN §8, cluster spec §2): the NATS I/O
 * around `PartitionState`. It reads `ds.R.part.<p>` in stream order from seq 1 (an ordered
 * consumer), fetches each rollouts entry's frame (decoded, from the node's `FrameCache`: the
 * frames of the next entries are requested while the current one is fed), feeds the state,
 * and publishes what comes out to `ds.R.groups.<p>`.
 *
 * Publishing is coalesced: at most one message is in flight (each expects the subject's last
 * sequence to be the previous one's), and when its PubAck comes back, every output computed
 * meanwhile goes out as the next message — `{p, n, through, groups, drops}` with `n` the
 * previous message's plus one, `through` the partition seq of the last entry whose output it
 * carries, `drops` the partition's drops after that entry. The owner feeds on while a publish
 * is in flight, so a partition is read at the speed of decoding, not of round trips. Where
 * messages are cut depends on timing; what each entry outputs does not (PartitionState).
 *
 * Taking over is re-reading: a new owner reads the last message on the subject (its `n` and
 * `through` T), recomputes the partition from its first entry, checks that the stored message
 * is what it computes through T (the same groups at the end, the same drops), and publishes
 * only the outputs of the entries after T, numbered from n + 1. Fencing is twofold: `isHeld()`
 * (the lease) is checked before every publish, and every publish expects the subject's last
 * sequence to be the one this owner last saw, so an owner that was paused while another took
 * over is refused by JetStream rather than forking the partition's history; it then reports
 * itself deposed and stops. Two owners at once that cut a message the same way (same `n`, same
 * `through`: the same content) share its message id, and JetStream stores it once.
 *
 * While rollouts wait in incomplete groups with a group timeout configured, it appends
 * watermark entries (event time = now) to its partition subject, and `appendPolicyVersion`
 * appends the trainer's policy versions: both come back through the consumer and are fed in
 * order like every other entry, so they are part of the input a replay reads.
 */
import { asyncScheduler, type SchedulerAction, type SchedulerLike, type Subscription } from 'rxjs'
import { JetStreamApiCodes, JetStreamApiError, type JetStreamClient, type JetStreamManager, type JsMsg } from '@nats-io/jetstream'
import type { Config } from '../../core/config.js'
import { decodeGroupsMessage, decodeMessage, encodeMessage, type DropCounts, type GroupMessage, type GroupsEntry, type PartitionEntry } from './messages.js'
import { decodePartitionFrame, groupsEntryOf, partitionEntryOf, PartitionState, type PartitionFrame, type PartitionOutput } from './partitionState.js'
import type { RunLayout } from './runLayout.js'
import { StreamFollower } from './streamFollower.js'

/** A logged frame, decoded, by its ROLLOUTS stream sequence (a node shares one: `FrameCache.decoded`). */
export type FrameSource = (seq: number) => Promise<PartitionFrame>

/**
 * A frame's bytes from `ds.R.frames`, read from the stream's leader (a direct get may be
 * answered by a replica that has not stored it yet). Throws when the seq holds no frame.
 *
 * @example
 * const frames: FrameSource = async (seq) => decodePartitionFrame(await fetchFrame(jsm, layout, seq), `frame ${seq}`)
 */
export async function fetchFrame(jsm: JetStreamManager, layout: RunLayout, seq: number): Promise<Uint8Array> {
  const stream = layout.streams.rollouts
  const message = await jsm.streams.getMessage(stream, { seq })
  if (message === null) throw new Error(`frame ${seq}: stream ${stream} has no message ${seq} (deleted or purged?)`)
  if (message.subject !== layout.subjects.frames)
    throw new Error(`frame ${seq}: message ${seq} of stream ${stream} is on ${message.subject}, not ${layout.subjects.frames}`)
  return message.data
}

/** Frames requested ahead of the entry being fed, by default. */
export const DEFAULT_PREFETCH = 16
/** Most rollouts in one message, by default (and the outputs waiting at which the owner stops feeding until a publish returns). */
export const DEFAULT_MESSAGE_ROLLOUTS = 4096
/** Most bytes of one message, by default: NATS' default max_payload (1 MiB) less room for the headers. */
export const DEFAULT_MESSAGE_BYTES = 1_000_000

export interface PartitionOwnerOptions {
  js: JetStreamClient
  jsm: JetStreamManager
  layout: RunLayout
  config: Config
  partition: number
  /** Whether this node still holds the partition's lease (checked before every publish). */
  isHeld: () => boolean
  /** Decoded frames by stream seq; default `fetchFrame` then `decodePartitionFrame` (no cache). A node passes its `FrameCache.decoded`. */
  frames?: FrameSource
  /** How many entries after the one being fed have their frames requested already (default 16). */
  prefetch?: number
  /** Most rollouts one message carries (default 4096); with that many waiting (or outputs of that many entries), feeding waits for the publish in flight. */
  maxMessageRollouts?: number
  /** Most bytes of one message (default 1,000,000): a message over it carries fewer entries' outputs (one entry's are never split). */
  maxMessageBytes?: number
  /** Runs the watermark timer; default `asyncScheduler` (a virtual clock in tests). */
  scheduler?: SchedulerLike
  /** Wall clock (ms) for the entries this owner appends; default `scheduler.now()`. */
  now?: () => number
  /** How often to consider a watermark (ms); default a quarter of the group timeout, between 50 ms and 1 s. */
  watermarkIntervalMs?: number
  /** Told of the error that stopped the owner (and of a watermark append that failed, after which it goes on). */
  onError?: (error: unknown) => void
  /** Told that another owner published to the partition's subject, or that the lease is gone: the owner has stopped. */
  onDeposed?: (reason: string) => void
  /** Told that the consumer of the partition was replaced (it stalled, ended or failed): reading goes on where it was. */
  onConsumerReplaced?: (why: string) => void
  /** Replaces a consumer that keeps the owner waiting this long while its partition holds more (ms; default `StreamFollower`'s). */
  stallMs?: number
}

/** How an owner ended. */
export type PartitionOwnerEnd = { reason: 'stopped' } | { reason: 'deposed'; detail: string } | { reason: 'failed'; error: unknown }

export interface PartitionOwnerStats {
  partition: number
  /** Partition stream seq of the last entry fed. */
  through: number
  /** `n` of the last message on `ds.R.groups.<p>` (published by this owner or found there at start). */
  published: number
  /** `through` of that message: the outputs of the entries up to it are published. */
  publishedThrough: number
  /** Messages this owner published itself (the rest it recomputed and found already published). */
  publishedHere: number
  /** Stream seq of the last message on `ds.R.groups.<p>` that this owner knows of. */
  groupsSeq: number
  /** Entries whose output is computed but not yet acknowledged by JetStream (waiting, or in the publish in flight). */
  unpublished: number
  pendingRollouts: number
  /** The partition's event time (-Infinity before any entry). */
  lastTs: number
  drops: DropCounts
  /** Entries this owner appended to its partition subject. */
  appended: { watermarks: number; policies: number }
  running: boolean
}

/** Default watermark period: a quarter of the group timeout, between 50 ms and 1 s (0 = none). */
export function partitionWatermarkInterval(config: Config): number {
  const timeout = config.groupTimeoutMs
  return timeout === undefined ? 0 : Math.min(1000, Math.max(50, timeout / 4))
}

/** The last message on the groups subject when an owner starts: where the outputs it publishes begin. */
interface Resume {
  n: number
  /** Its stream seq in the GROUPS stream. */
  seq: number
  through: number
  /** Its bytes and its groups' count (the check at `through`). */
  bytes: Uint8Array
  groups: number
}

/** An entry read from the consumer, its frame requested. */
type Prepared = { seq: number; entry: PartitionEntry; frame: Promise<PartitionFrame> | undefined } | { seq: number; error: unknown }

const rolloutsIn = (output: PartitionOutput): number => output.groups.reduce((sum, group) => sum + group.rollouts.length, 0)

/**
 * One partition's owner; `start` resolves once it reads its partition.
 *
 * @example
 * const owner = await PartitionOwner.start({ js, jsm, layout, config, partition: 3, isHeld: () => lease.held, frames: (seq) => cache.decoded(seq), onDeposed: (why) => log(why) })
 * lease.lost.then(() => owner.stop())
 */
export class PartitionOwner {
  private readonly state: PartitionState
  private readonly options: PartitionOwnerOptions
  private readonly frames: FrameSource
  private readonly now: () => number
  private readonly subject: string
  private readonly partitionSubject: string
  private readonly prefetch: number
  private readonly maxMessageRollouts: number
  private readonly maxMessageBytes: number
  private loop: Promise<void> = Promise.resolve()
  // the follower's close (it removes the consumer's server side)
  private closing: Promise<void> = Promise.resolve()
  private timer: Subscription | undefined
  private running = true
  private endWith!: (end: PartitionOwnerEnd) => void
  /** Resolves once the owner has stopped acting, with why. */
  readonly ended: Promise<PartitionOwnerEnd> = new Promise((resolve) => (this.endWith = resolve))
  // the last message on the groups subject: its n, stream seq and the partition seq it was through
  private lastN: number
  private lastSeq: number
  private lastThrough: number
  // the stored message found at start, until the recomputation has passed its `through` and checked it
  private resume: Resume | undefined
  // the groups recomputed before `resume.through`, the last of them (as many as the stored message has)
  private tail: GroupMessage[] = []
  private publishedHere = 0
  // outputs computed and not yet in a message; the message in flight and how many outputs it carries
  private readonly waiting: PartitionOutput[] = []
  private waitingRollouts = 0
  private inFlight: Promise<void> | undefined
  private inFlightOutputs = 0
  // the ts of a watermark appended and not read back yet: no other is appended meanwhile
  private watermarkInFlight: number | undefined
  private readonly appended = { watermarks: 0, policies: 0 }
  // the highest policy version read from the partition or appended by this owner
  private policyVersion = -Infinity

  private constructor(
    options: PartitionOwnerOptions,
    resume: Resume | undefined,
    private readonly messages: StreamFollower,
  ) {
    this.options = options
    const { jsm, layout, partition } = options
    this.state = new PartitionState(options.config, partition)
    this.frames = options.frames ?? (async (seq) => decodePartitionFrame(await fetchFrame(jsm, layout, seq), `frame ${seq}`))
    this.prefetch = options.prefetch ?? DEFAULT_PREFETCH
    this.maxMessageRollouts = options.maxMessageRollouts ?? DEFAULT_MESSAGE_ROLLOUTS
    this.maxMessageBytes = options.maxMessageBytes ?? DEFAULT_MESSAGE_BYTES
    const scheduler = options.scheduler ?? asyncScheduler
    this.now = options.now ?? (() => scheduler.now())
    this.subject = layout.subjects.groups(partition)
    this.partitionSubject = layout.subjects.partition(partition)
    this.resume = resume
    this.lastN = resume?.n ?? 0
    this.lastSeq = resume?.seq ?? 0
    this.lastThrough = resume?.through ?? 0
    const interval = options.watermarkIntervalMs ?? partitionWatermarkInterval(options.config)
    if (options.config.groupTimeoutMs !== undefined && interval > 0) {
      const tick = () => this.tick()
      this.timer = scheduler.schedule(function (this: SchedulerAction<void>) {
        tick()
        this.schedule(undefined, interval)
      }, interval)
    }
  }

  /** Reads where the partition's published messages stop, then starts reading the partition from seq 1. */
  static async start(options: PartitionOwnerOptions): Promise<PartitionOwner> {
    const { js, jsm, layout, partition } = options
    const subject = layout.subjects.groups(partition)
    const last = await jsm.streams.getMessage(layout.streams.groups, { last_by_subj: subject })
    let resume: Resume | undefined
    if (last !== null) {
      let entry: Partial<GroupsEntry> | undefined
      try {
        entry = decodeGroupsMessage(last.data) as Partial<GroupsEntry>
      } catch {
        // not a groups entry of this version: refused below like any other foreign message
      }
      const n = entry?.n
      const through = entry?.through
      if (!Number.isSafeInteger(n) || n! < 1 || !Number.isSafeInteger(through) || through! < 1 || !Array.isArray(entry?.groups))
        throw new Error(
          `partition ${partition}: the last message on ${subject} (stream seq ${last.seq}) is not a groups entry: cannot tell where its owner stopped`,
        )
      // the entry it is through must be one of this partition's (the recomputation checks the message there)
      const at = await jsm.streams.getMessage(layout.streams.rollouts, { seq: through! })
      if (at?.subject !== layout.subjects.partition(partition))
        throw new Error(
          `partition ${partition}: the last message on ${subject} (stream seq ${last.seq}, message ${n}) is through stream seq ${through}, which is not an entry of ${layout.subjects.partition(partition)}: it was not computed from this partition`,
        )
      resume = { n: n!, seq: last.seq, through: through!, bytes: last.data, groups: entry!.groups!.length }
    }
    const messages = new StreamFollower({
      js,
      jsm,
      stream: layout.streams.rollouts,
      subject: layout.subjects.partition(partition),
      from: 1,
      stallMs: options.stallMs,
      scheduler: options.scheduler,
      onReplaced: options.onConsumerReplaced,
    })
    const owner = new PartitionOwner(options, resume, messages)
    owner.loop = owner.read()
    return owner
  }

  /**
   * Reads the consumer: each entry is decoded and its frame requested at once, then fed (in
   * order, one at a time) by a chain that the reader stays at most `prefetch` entries ahead of.
   * An entry that fails to feed fails the owner at once; the entries after it are not fed.
   */
  private async read(): Promise<void> {
    const ahead: Promise<void>[] = []
    let chain = Promise.resolve()
    try {
      // once the owner halts, the follower yields nothing more
      for await (const message of this.messages) {
        const prepared = this.prepare(message)
        chain = chain.then(() => this.feed(prepared))
        // a failure stops the owner now (and with it this loop), not when the reader next waits for the chain
        chain.catch((error: unknown) => this.fail(error))
        ahead.push(chain)
        if (ahead.length > this.prefetch) await ahead.shift()
      }
      // the follower ends only when the owner halts (it replaces a consumer that ends by itself)
      await chain
    } catch (error) {
      // an entry that failed (already reported: this is a no-op), or the follower's end (a closed connection, a deleted stream)
      this.fail(new Error(`partition ${this.options.partition}: ${(error as Error).message}`, { cause: error }))
    }
  }

  /** Decodes an entry and requests its frame; an entry that cannot be read fails when its turn to be fed comes (after the entries before it). */
  private prepare(message: JsMsg): Prepared {
    const seq = message.seq
    const where = `partition ${this.options.partition}, stream seq ${seq}`
    try {
      let decoded: unknown
      try {
        decoded = decodeMessage(message.data)
      } catch (error) {
        throw new Error(`${where}: not MessagePack (${(error as Error).message})`, { cause: error })
      }
      const entry = partitionEntryOf(decoded, where)
      const frame = entry.k === 'rollouts' ? this.frameOf(entry.frame, where) : undefined
      frame?.catch(() => {}) // awaited when fed
      return { seq, entry, frame }
    } catch (error) {
      return { seq, error }
    }
  }

  private async frameOf(seq: number, where: string): Promise<PartitionFrame> {
    try {
      return await this.frames(seq)
    } catch (error) {
      throw new Error(`${where}, ${(error as Error).message}`, { cause: error })
    }
  }

  private async feed(prepared: Prepared): Promise<void> {
    if (!this.running) return
    if ('error' in prepared) throw prepared.error
    const { seq, entry } = prepared
    const frame = await prepared.frame
    if (!this.running) return
    const output = this.state.feed(seq, entry, frame)
    if (entry.k === 'watermark' && entry.ts >= this.watermarkInFlight!) this.watermarkInFlight = undefined
    if (entry.k === 'policy') this.policyVersion = Math.max(this.policyVersion, entry.version)
    const resume = this.resume
    if (resume !== undefined) {
      // published already: recomputed to get here, and the stored message checked at its entry
      if (output !== undefined && resume.groups > 0) {
        this.tail.push(...output.groups)
        if (this.tail.length > 2 * resume.groups) this.tail.splice(0, this.tail.length - resume.groups)
      }
      if (seq === resume.through) this.check(resume, output)
      return
    }
    if (output === undefined) return
    this.waiting.push(output)
    this.waitingRollouts += rolloutsIn(output)
    this.pump()
    // with a message's worth waiting (or as many entries' outputs: drops alone carry no rollouts), the publish in flight is awaited: memory stays bounded
    while ((this.waitingRollouts >= this.maxMessageRollouts || this.waiting.length >= this.maxMessageRollouts) && this.inFlight !== undefined)
      await this.inFlight
  }

  /**
   * The stored message the owner resumes after must be what it computes through its entry: an
   * entry with an output (owners cut messages after one), whose groups end the message, the
   * same last groups, the same drops.
   */
  private check(resume: Resume, output: PartitionOutput | undefined): void {
    this.resume = undefined
    const groups = this.tail.slice(this.tail.length - resume.groups)
    this.tail = []
    const mine = encodeMessage({ p: this.options.partition, n: resume.n, through: resume.through, groups, drops: this.state.dropCounts })
    if (output === undefined || output.groups.length > resume.groups || !Buffer.from(mine).equals(Buffer.from(resume.bytes)))
      throw new Error(
        `partition ${this.options.partition}, stream seq ${resume.through}: message ${resume.n} of ${this.subject} (through this entry) is not what this owner computes through it: the owners disagree (a different config or version?)`,
      )
  }

  /** Starts the next publish, when none is in flight and outputs wait. */
  private pump(): void {
    if (this.inFlight !== undefined || this.waiting.length === 0 || !this.running) return
    let count = 1
    let rollouts = rolloutsIn(this.waiting[0])
    while (count < this.waiting.length) {
      const more = rolloutsIn(this.waiting[count])
      if (rollouts + more > this.maxMessageRollouts) break
      rollouts += more
      count++
    }
    let message = groupsEntryOf(this.options.partition, this.lastN + 1, this.waiting.slice(0, count))
    let bytes = encodeMessage(message)
    // rollouts with long ids or many rewards: fewer entries' outputs, down to one entry's
    while (bytes.length > this.maxMessageBytes && count > 1) {
      count = Math.ceil(count / 2)
      message = groupsEntryOf(this.options.partition, this.lastN + 1, this.waiting.slice(0, count))
      bytes = encodeMessage(message)
    }
    for (const output of this.waiting.splice(0, count)) this.waitingRollouts -= rolloutsIn(output)
    this.inFlightOutputs = count
    this.inFlight = this.publish(message, bytes).then(
      () => {
        this.inFlight = undefined
        this.inFlightOutputs = 0
        this.pump()
      },
      (error: unknown) => {
        this.inFlight = undefined
        this.inFlightOutputs = 0
        this.fail(error)
      },
    )
  }

  private async publish(message: GroupsEntry, bytes: Uint8Array): Promise<void> {
    const { partition, layout } = this.options
    const { n, through } = message
    if (!this.options.isHeld()) return this.depose(`partition ${partition}: the lease is no longer held (message ${n} not published)`)
    try {
      // the id names the cut as well: another owner's message n through another entry is a different message, refused by the expected sequence
      const ack = await this.options.js.publish(this.subject, bytes, {
        expect: { lastSubjectSequence: this.lastSeq },
        msgID: `${layout.run}.g.${partition}.${n}.${through}`,
      })
      this.lastSeq = ack.seq
      this.lastN = n
      this.lastThrough = through
      if (!ack.duplicate) this.publishedHere++
    } catch (error) {
      if (error instanceof JetStreamApiError && error.code === JetStreamApiCodes.StreamWrongLastSequence)
        return this.depose(
          `partition ${partition}: ${this.subject} refused message ${n} (${error.message}; expected ${this.lastSeq}): another owner published to it`,
        )
      throw error
    }
  }

  /** Appends a watermark while rollouts wait on a group timeout, time has moved, and no watermark of this owner is still on its way. */
  private tick(): void {
    if (!this.running || this.watermarkInFlight !== undefined || this.state.pendingRollouts === 0) return
    const ts = this.now()
    if (!(ts > this.state.lastTs) || !this.options.isHeld()) return
    this.watermarkInFlight = ts
    const watermark: PartitionEntry = { k: 'watermark', ts }
    this.options.js.publish(this.partitionSubject, encodeMessage(watermark)).then(
      () => this.appended.watermarks++,
      (error) => {
        // the next tick tries again: a missing watermark only delays a timeout
        this.watermarkInFlight = undefined
        if (this.running) this.options.onError?.(error)
      },
    )
  }

  /**
   * Appends the trainer's policy version `version` to the partition (it makes older rollouts
   * stale, with `maxStaleness`, for this and every later owner), unless the partition already
   * has it or a newer one, the owner has stopped, or the lease is gone.
   */
  async appendPolicyVersion(version: number): Promise<void> {
    if (!this.running || !(version > this.policyVersion) || !this.options.isHeld()) return
    const entry: PartitionEntry = { k: 'policy', version, ts: this.now() }
    await this.options.js.publish(this.partitionSubject, encodeMessage(entry))
    this.policyVersion = Math.max(this.policyVersion, version)
    this.appended.policies++
  }

  stats(): PartitionOwnerStats {
    return {
      partition: this.options.partition,
      through: this.state.lastSeq,
      published: this.lastN,
      publishedThrough: this.lastThrough,
      publishedHere: this.publishedHere,
      groupsSeq: this.lastSeq,
      unpublished: this.waiting.length + this.inFlightOutputs,
      pendingRollouts: this.state.pendingRollouts,
      lastTs: this.state.lastTs,
      drops: this.state.dropCounts,
      appended: { ...this.appended },
      running: this.running,
    }
  }

  private halt(end: PartitionOwnerEnd): void {
    if (!this.running) return
    this.running = false
    this.timer?.unsubscribe()
    // ends the loop's iteration (an entry being fed is finished first; nothing more is published)
    this.closing = this.messages.close()
    this.endWith(end)
  }

  private depose(detail: string): void {
    if (!this.running) return
    this.halt({ reason: 'deposed', detail })
    this.options.onDeposed?.(detail)
  }

  private fail(error: unknown): void {
    if (!this.running) return
    this.halt({ reason: 'failed', error })
    this.options.onError?.(error)
  }

  /** Stops reading and publishing; resolves once the entry being fed and the publish in flight are done. */
  async stop(): Promise<void> {
    this.halt({ reason: 'stopped' })
    await this.loop
    await this.inFlight
    await this.closing
    this.state.close()
  }
}
