/**
 * A lease on one key of a JetStream KV bucket (DESIGN §8, "Leases"): which node is the
 * sequencer, which node owns partition 3. At most one node acts on a lease at a time, with
 * no synchronised clocks between the nodes and the NATS servers.
 *
 * The mechanism is the KV's compare-and-swap: a node takes the key by writing it only if it
 * is absent (or deleted), and renews it by rewriting it only at the revision it last wrote
 * (`Nats-Expected-Last-Subject-Sequence`). The bucket's `max_age` (its `ttl`, equal to the
 * lease's `ttlMs`) removes a key that nobody renews, so a node that dies frees its leases
 * after one TTL at most; then another node's write-if-absent succeeds.
 *
 * Why a holder stops in time. When we send a write at `sentAt` (our monotonic clock) and the
 * server confirms it, the server stored it at or after `sentAt` (it cannot store a message
 * before it is sent), so the key expires no earlier than `sentAt + ttl` of real time, and no
 * other node can take it before then. `held` is therefore true only while
 *
 *     now() < sentAt(last confirmed write) + ttlMs − marginMs
 *
 * checked at every call, not on timer ticks, so a holder that was paused (GC, SIGSTOP, a
 * swapped-out VM) sees false the moment it runs again, before it acts. No clock is compared
 * with another: only durations are, ours against the servers'. The margin covers the rate
 * difference between the clocks over one TTL (ppm in practice), the NATS servers' clocks
 * against each other (each replica expires the key by the leader's timestamp), and the time
 * an action takes between its `held` check and its effect: a holder must check `held` right
 * before each action, keep each action shorter than the margin, and fence what it writes
 * where it can (the sequencer's expected-last-sequence publish to BATCHES).
 *
 * What ends a lease, each reported once on `lost` with the reason:
 * - the deadline passes before a renew is confirmed (NATS unreachable, the process paused);
 * - a renew is refused for its revision and the key does not hold our value any more
 *   (deleted, expired, taken by another node). A refused renew whose key still holds our own
 *   value means an earlier renew was stored though its answer was lost (a timeout, a server
 *   failing over): the lease carries on from that revision.
 * A lost lease stays lost: `acquire()` again to try for a new term.
 */
import { randomUUID } from 'node:crypto'
import { JetStreamApiCodes, JetStreamApiError, type JetStreamClient } from '@nats-io/jetstream'
import { Kvm, type KV, type KvEntry } from '@nats-io/kv'
import type { NatsConnection } from '@nats-io/transport-node'
import { asyncScheduler, Subject, Subscription, timer, type Observable, type SchedulerLike } from 'rxjs'

export interface LeaseOptions {
  /** The lease bucket: `ttl` equal to `ttlMs` and history 1 (see `ensureLeaseBucket`). */
  kv: KV
  /** The key the lease lives on, e.g. `sequencer`, `partition.3`. */
  key: string
  /** Who holds it (the node id): written in the key for `cluster status`. */
  holder: string
  /** The bucket's TTL: how long the key outlives its holder's last renew. */
  ttlMs: number
  /** How often the holder renews (default ttlMs / 3). Must be below ttlMs − marginMs. */
  renewEveryMs?: number
  /** How long before the key can expire the holder stops acting (default ttlMs / 5). */
  marginMs?: number
  /** A monotonic clock in milliseconds (default `performance.now()`). */
  now?: () => number
  /** Runs the renew and deadline timers (default RxJS's asyncScheduler). */
  scheduler?: SchedulerLike
}

/** Who holds a lease key, as `Lease.holderOf` reads it. */
export interface LeaseHolder {
  holder: string
  /** When the holder took the lease (its wall clock, ms since the epoch). */
  since: number
  /** The key's KV revision (it grows with every renew). */
  revision: number
}

/** What a lease key holds: the holder, since when, and a token unique to the Lease object that wrote it. */
interface LeaseValue {
  holder: string
  since: number
  token: string
}

/** One term of holding the lease, from a successful acquire to its loss or release. */
interface Tenure {
  value: string
  /** The key's revision after our last confirmed write: the next renew's expected revision. */
  revision: number
  /** When (on `now()`) we sent our last write the server confirmed. */
  sentAt: number
  ended: boolean
  /** The last renew was refused for its revision: read the key before writing again. */
  refused: boolean
  renewTimer: Subscription
  deadlineTimer: Subscription
  renewing: Promise<void>
}

const WRONG_REVISION: readonly number[] = [JetStreamApiCodes.StreamWrongLastSequence, JetStreamApiCodes.StreamWrongLastSequenceUnknown]

/** A write refused because the key is not at the revision it expected (someone else wrote it, or nothing is there). */
function isWrongRevision(error: unknown): boolean {
  return error instanceof JetStreamApiError && WRONG_REVISION.includes(error.code)
}

function leaseValueOf(entry: KvEntry): LeaseValue | undefined {
  try {
    const value = entry.json<Partial<LeaseValue>>()
    return typeof value.holder === 'string' && typeof value.since === 'number' ? (value as LeaseValue) : undefined
  } catch {
    return undefined
  }
}

/** Why a key that is not ours any more is not: for the `lost` reason. */
function describeKey(entry: KvEntry | null): string {
  if (entry === null) return 'the key is gone (expired or purged)'
  if (entry.operation !== 'PUT') return `the key was deleted (revision ${entry.revision})`
  const value = leaseValueOf(entry)
  if (value === undefined) return `the key holds something that is not a lease (revision ${entry.revision})`
  return `${value.holder} holds it now (revision ${entry.revision}, since ${new Date(value.since).toISOString()})`
}

/**
 * A lease on a KV key: `acquire()` takes it when free, a timer renews it, `held` says whether
 * the holder may act right now, `lost` tells when it stopped being held, `release()` frees
 * it for another node at once.
 *
 * @example
 * const kv = await ensureLeaseBucket(nc, 'leases', 6000, 3)
 * const lease = new Lease({ kv, key: 'sequencer', holder: nodeId, ttlMs: 6000 })
 * lease.lost.subscribe((why) => log.warn(why))
 * if (await lease.acquire()) {
 *   for (const batch of batches) {
 *     if (!lease.held) break // checked right before each action
 *     await publish(batch)
 *   }
 * }
 * await lease.release()
 */
export class Lease {
  /** Emits once per term when a held lease stops being held (not on `release()`), with the reason. */
  readonly lost: Observable<string>
  readonly #lost = new Subject<string>()
  readonly #kv: KV
  readonly #key: string
  readonly #holder: string
  readonly #ttlMs: number
  readonly #renewEveryMs: number
  readonly #marginMs: number
  readonly #now: () => number
  readonly #scheduler: SchedulerLike
  /** Tells our own writes from another Lease's with the same holder name (a restarted node's). */
  readonly #token = randomUUID()
  #tenure: Tenure | undefined
  #acquiring: Promise<boolean> | undefined

  constructor(options: LeaseOptions) {
    this.#kv = options.kv
    this.#key = options.key
    this.#holder = options.holder
    this.#ttlMs = options.ttlMs
    this.#renewEveryMs = options.renewEveryMs ?? options.ttlMs / 3
    this.#marginMs = options.marginMs ?? options.ttlMs / 5
    this.#now = options.now ?? (() => performance.now())
    this.#scheduler = options.scheduler ?? asyncScheduler
    if (!(this.#renewEveryMs > 0 && this.#marginMs >= 0 && this.#renewEveryMs < this.#ttlMs - this.#marginMs)) {
      throw new RangeError(
        `lease ${this.#key}: renewEveryMs (${this.#renewEveryMs}) must be above 0 and below ttlMs (${this.#ttlMs}) − marginMs (${this.#marginMs}), marginMs at least 0`,
      )
    }
    this.lost = this.#lost.asObservable()
  }

  /** True while this object holds the lease and may act on it: check right before each action. */
  get held(): boolean {
    const tenure = this.#tenure
    return tenure !== undefined && !tenure.ended && this.#now() < this.#deadline(tenure)
  }

  /**
   * Takes the lease if nobody holds it (the key is absent, deleted, or holds an earlier
   * write of this object's). Resolves true when held (at once if already held), false when
   * another holder has it; rejects when NATS cannot say (unreachable, timed out).
   */
  acquire(): Promise<boolean> {
    if (this.held) return Promise.resolve(true)
    // a term whose deadline passed before its timer fired (a paused process) ends here, reported, before a new one
    const previous = this.#tenure
    if (previous !== undefined && !previous.ended) this.#end(previous, this.#deadlineMissed())
    this.#acquiring ??= this.#take().finally(() => (this.#acquiring = undefined))
    return this.#acquiring
  }

  /** Stops renewing and deletes the key if it still holds our last write, so another node can take it without waiting for the TTL. */
  async release(): Promise<void> {
    // an acquire under way first ends one way or the other, so that it cannot take the key after the release
    await Promise.allSettled([this.#acquiring])
    const tenure = this.#tenure
    if (tenure === undefined) return
    this.#tenure = undefined
    this.#stop(tenure)
    await tenure.renewing
    try {
      await this.#kv.delete(this.#key, { previousSeq: tenure.revision })
    } catch (error) {
      // refused for its revision: the key is someone else's now, nothing of ours to delete
      if (!isWrongRevision(error)) throw new Error(`cannot release the lease ${this.#key} of ${this.#holder}: ${(error as Error).message}`, { cause: error })
    }
  }

  /**
   * Who holds `key` in the lease bucket `kv`, or undefined when nobody does (absent,
   * deleted, expired). For `cluster status`; an answer may be a moment old.
   *
   * @example
   * const who = await Lease.holderOf(kv, 'sequencer') // { holder: 'node-b', since: 1767225600000, revision: 42 }
   */
  static async holderOf(kv: KV, key: string): Promise<LeaseHolder | undefined> {
    const entry = await kv.get(key)
    if (entry?.operation !== 'PUT') return undefined
    const value = leaseValueOf(entry)
    if (value === undefined)
      throw new Error(`the lease key ${key} holds ${entry.length} bytes that are not a lease ({"holder", "since"}) at revision ${entry.revision}`)
    return { holder: value.holder, since: value.since, revision: entry.revision }
  }

  async #take(): Promise<boolean> {
    try {
      const current = await this.#kv.get(this.#key)
      if (current?.operation === 'PUT' && !this.#isOurs(current)) return false
      const value = JSON.stringify({ holder: this.#holder, since: Date.now(), token: this.#token } satisfies LeaseValue)
      const sentAt = this.#now()
      const revision = await this.#kv.put(this.#key, value, { previousSeq: current?.revision ?? 0 })
      this.#begin(value, revision, sentAt)
      return true
    } catch (error) {
      // refused for its revision: another node wrote the key between our read and our write
      if (isWrongRevision(error)) return false
      throw new Error(`cannot acquire the lease ${this.#key} for ${this.#holder}: ${(error as Error).message}`, { cause: error })
    }
  }

  #isOurs(entry: KvEntry | null): entry is KvEntry {
    return entry?.operation === 'PUT' && leaseValueOf(entry)?.token === this.#token
  }

  #deadline(tenure: Tenure): number {
    return tenure.sentAt + this.#ttlMs - this.#marginMs
  }

  #begin(value: string, revision: number, sentAt: number): void {
    const tenure: Tenure = {
      value,
      revision,
      sentAt,
      ended: false,
      refused: false,
      renewTimer: Subscription.EMPTY,
      deadlineTimer: Subscription.EMPTY,
      renewing: Promise.resolve(),
    }
    this.#tenure = tenure
    this.#armDeadline(tenure)
    this.#scheduleRenew(tenure, this.#renewEveryMs)
  }

  #armDeadline(tenure: Tenure): void {
    tenure.deadlineTimer.unsubscribe()
    tenure.deadlineTimer = timer(this.#deadline(tenure) - this.#now(), this.#scheduler).subscribe(() => this.#end(tenure, this.#deadlineMissed()))
  }

  #deadlineMissed(): string {
    return `no renew was confirmed within ${this.#ttlMs - this.#marginMs} ms of sending the last confirmed one`
  }

  #scheduleRenew(tenure: Tenure, delayMs: number): void {
    tenure.renewTimer = timer(delayMs, this.#scheduler).subscribe(() => (tenure.renewing = this.#renew(tenure)))
  }

  /** One renew attempt; never rejects (it ends the term, or schedules the next attempt). */
  async #renew(tenure: Tenure): Promise<void> {
    const sentAt = this.#now()
    let lostBecause: string | undefined
    let nextInMs = this.#renewEveryMs / 4
    try {
      if (tenure.refused) {
        const current = await this.#kv.get(this.#key)
        if (this.#isOurs(current)) {
          // an earlier renew of ours was stored though its answer never came: go on from its revision
          tenure.revision = current.revision
          tenure.refused = false
          nextInMs = 0
        } else lostBecause = describeKey(current)
      } else {
        // even when the term ended meanwhile: release() deletes at the latest revision
        tenure.revision = await this.#kv.update(this.#key, tenure.value, tenure.revision, this.#renewEveryMs / 2)
        if (this.#now() < this.#deadline(tenure)) {
          tenure.sentAt = sentAt
          nextInMs = this.#renewEveryMs
        } else
          lostBecause = `a renew was confirmed only after the deadline (${Math.round(this.#now() - tenure.sentAt)} ms after sending the last confirmed one)`
      }
    } catch (error) {
      // refused for its revision: read the key next; anything else (a timeout, a lost
      // connection, no JetStream leader for a moment) is retried soon, until the deadline
      tenure.refused = isWrongRevision(error)
    }
    if (tenure.ended) return
    if (lostBecause !== undefined) return this.#end(tenure, lostBecause)
    this.#armDeadline(tenure)
    this.#scheduleRenew(tenure, nextInMs)
  }

  #stop(tenure: Tenure): void {
    tenure.ended = true
    tenure.renewTimer.unsubscribe()
    tenure.deadlineTimer.unsubscribe()
  }

  #end(tenure: Tenure, reason: string): void {
    this.#stop(tenure)
    this.#lost.next(`lease ${this.#key} of ${this.#holder} lost: ${reason}`)
  }
}

/**
 * Creates the lease bucket, or opens it when it exists, and checks it has the settings a
 * lease relies on: `ttl` = `ttlMs` (the KV's max_age, in ms in @nats-io/kv 3), history 1,
 * and `replicas` (3 on a three-server cluster, so a lease survives a server's loss).
 *
 * @example
 * const kv = await ensureLeaseBucket(nc, 'ds-leases', 6000, 3) // or a Kvm, or a JetStreamClient
 */
export async function ensureLeaseBucket(nats: Kvm | NatsConnection | JetStreamClient, name: string, ttlMs: number, replicas: number): Promise<KV> {
  const kvm = nats instanceof Kvm ? nats : new Kvm(nats)
  const kv = await kvm.create(name, { ttl: ttlMs, history: 1, replicas })
  const status = await kv.status()
  if (status.ttl !== ttlMs || status.history !== 1 || status.replicas !== replicas) {
    throw new Error(
      `the lease bucket ${name} exists with ttl ${status.ttl} ms, history ${status.history}, ${status.replicas} replicas; ` +
        `the leases need ttl ${ttlMs} ms, history 1, ${replicas} replicas (delete the bucket, or start with its settings)`,
    )
  }
  return kv
}
