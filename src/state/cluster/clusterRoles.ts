/**
 * The roles a cluster node takes by lease (DESIGN §8): the sequencer (one in the run) and a
 * share of the partitions' owners. Every node runs the same loop: register itself in the
 * run's node bucket, try for the sequencer's lease when nobody holds it, and take free
 * partitions until it holds its share (⌈partitions / live nodes⌉), giving one back per round
 * when it holds more than its share (so a node that joins gets work). A role runs only while
 * its lease is held (`Lease.held` turns false before the lease can expire on the server) and
 * is stopped the moment it is lost; its publishes carry expected sequences besides, so a role
 * that has not yet noticed cannot fork the run's history.
 */
import type { JetStreamClient, JetStreamManager } from '@nats-io/jetstream'
import { Kvm, type KV } from '@nats-io/kv'
import { asyncScheduler, Subject, type SchedulerLike, type Subscription } from 'rxjs'
import type { ClusterEngine } from './clusterEngine.js'
import type { RunRecord } from './clusterRun.js'
import { ensureLeaseBucket, Lease } from './lease.js'
import { PartitionOwner, type PartitionOwnerStats } from './partitionOwner.js'
import type { RunLayout } from './runLayout.js'
import { Sequencer } from './sequencer.js'

export interface ClusterRolesOptions {
  js: JetStreamClient
  jsm: JetStreamManager
  layout: RunLayout
  record: RunRecord
  /** This node's name (unique in the run). */
  node: string
  engine: ClusterEngine
  /** Lease time to live (ms, default 3000): a dead node's roles pass to another after at most this. */
  leaseMs?: number
  scheduler?: SchedulerLike
  /** A line for the node's log (a role taken, lost or given back). */
  log?: (line: string) => void
}

/** What a node publishes about itself in the run's node bucket. */
export interface NodeRecord {
  node: string
  url?: string
  sequencer: boolean
  partitions: number[]
  step: number
  /** ISO time of the record. */
  at: string
}

export const DEFAULT_LEASE_MS = 3000

/**
 * The records in a run's node bucket, read without a consumer: the keys from the bucket's
 * stream info, each value by a direct get. (`kv.keys()` iterates an ordered consumer, and a
 * consumer can stall for good when a NATS server dies: a roles round waiting on it would never end.)
 */
export async function readNodeRecords(jsm: JetStreamManager, nodes: KV, bucket: string): Promise<NodeRecord[]> {
  const prefix = `$KV.${bucket}.`
  const info = await jsm.streams.info(`KV_${bucket}`, { subjects_filter: `${prefix}node.*` })
  const records: NodeRecord[] = []
  for (const subject of Object.keys(info.state.subjects ?? {})) {
    const entry = await nodes.get(subject.slice(prefix.length))
    if (entry?.operation === 'PUT') records.push(entry.json<NodeRecord>())
  }
  return records
}

/** One owner's position (`ClusterRoles.progress`): see `PartitionOwnerStats`. */
export type PartitionProgress = Pick<PartitionOwnerStats, 'through' | 'published' | 'publishedThrough' | 'unpublished' | 'pendingRollouts' | 'running'>

/** A node's view of the run for its dashboard and metrics: its roles, the sequencer's node, the nodes up. */
export interface NodePicture {
  run: string
  node: string
  partitions: number
  sequencer: string | null
  roles: { sequencer: boolean; partitions: number[] }
  nodes: number
}

export class ClusterRoles {
  private readonly leaseMs: number
  private readonly log: (line: string) => void
  private sequencerLease: Lease | undefined
  private sequencer: Sequencer | undefined
  private readonly partitionLeases = new Map<number, Lease>()
  private readonly owners = new Map<number, PartitionOwner>()
  private readonly subscriptions: Subscription[] = []
  private round: Promise<void> = Promise.resolve()
  private stopped = false
  private timer: Subscription | undefined
  private url: string | undefined
  private sequencerHolder: string | null = null
  private nodeCount = 0
  private shown = ''
  /** The picture changed (a role taken or lost here, another sequencer, a node more or less). */
  readonly changes = new Subject<void>()

  private constructor(
    private readonly options: ClusterRolesOptions,
    private readonly leases: KV,
    private readonly nodes: KV,
  ) {
    this.leaseMs = options.leaseMs ?? DEFAULT_LEASE_MS
    this.log = options.log ?? (() => {})
  }

  /** Opens the run's lease and node buckets and starts taking roles. */
  static async start(options: ClusterRolesOptions): Promise<ClusterRoles> {
    const leaseMs = options.leaseMs ?? DEFAULT_LEASE_MS
    const kvm = new Kvm(options.js)
    const leases = await ensureLeaseBucket(kvm, options.layout.buckets.leases, leaseMs, options.record.replicas)
    // a node's record outlives it by two lease times: long enough to be counted, short enough to free its share
    const nodes = await kvm.create(options.layout.buckets.nodes, { history: 1, replicas: options.record.replicas, ttl: 2 * leaseMs })
    const roles = new ClusterRoles(options, leases, nodes)
    // a newer trainer policy version goes into every partition this node owns (their input)
    roles.subscriptions.push(
      options.engine.policyVersions.subscribe((version) => {
        for (const owner of roles.owners.values()) owner.appendPolicyVersion(version).catch(() => {})
      }),
    )
    await roles.tick()
    const scheduler = options.scheduler ?? asyncScheduler
    const every = Math.max(50, Math.floor(leaseMs / 3))
    roles.timer = scheduler.schedule(function () {
      void roles.tick()
      this.schedule(undefined, every)
    }, every)
    return roles
  }

  /** The roles this node holds now. */
  roles(): { sequencer: boolean; partitions: number[] } {
    return {
      sequencer: this.sequencer !== undefined && this.sequencerLease?.held === true,
      partitions: [...this.owners.keys()].filter((p) => this.partitionLeases.get(p)?.held === true).sort((a, b) => a - b),
    }
  }

  /**
   * How far each role of this node has got: per partition owned, the last entry fed and the
   * last message published (`/cluster` shows it; an owner that stopped advancing shows here).
   */
  progress(): { sequencer?: ReturnType<Sequencer['stats']>; partitions: Record<number, PartitionProgress> } {
    const partitions: Record<number, PartitionProgress> = {}
    for (const [p, owner] of this.owners) {
      const { through, published, publishedThrough, unpublished, pendingRollouts, running } = owner.stats()
      partitions[p] = { through, published, publishedThrough, unpublished, pendingRollouts, running }
    }
    return { sequencer: this.sequencer?.stats(), partitions }
  }

  /** Where this node serves (known once it listens): in its record, for `cluster status`. */
  listening(url: string): void {
    this.url = url
  }

  /** What the node's dashboard shows of the run. */
  picture(): NodePicture {
    const { layout, record, node } = this.options
    return { run: layout.run, node, partitions: record.partitions, sequencer: this.sequencerHolder, roles: this.roles(), nodes: this.nodeCount }
  }

  /** One round of the loop (serialised: a slow round is not overlapped by the next). */
  tick(): Promise<void> {
    this.round = this.round
      .then(() => this.runRound())
      .catch((error: unknown) => this.log(`roles: ${(error as Error).message}`))
      .then(() => this.announce())
    return this.round
  }

  private async runRound(): Promise<void> {
    /* c8 ignore next -- a fault path: exercised by the fault suite (test/faults/cluster.test.ts: nodes and NATS servers killed), which runs without coverage */
    if (this.stopped) return
    const { layout, record, node } = this.options
    const mine = this.roles()
    const self: NodeRecord = {
      node,
      url: this.url,
      sequencer: mine.sequencer,
      partitions: mine.partitions,
      step: this.options.engine.stats().step,
      at: new Date().toISOString(),
    }
    await this.nodes.put(`node.${node}`, JSON.stringify(self))
    // roles whose lease was lost are stopped first
    /* c8 ignore next -- a fault path: exercised by the fault suite (test/faults/cluster.test.ts: nodes and NATS servers killed), which runs without coverage */
    if (this.sequencer !== undefined && this.sequencerLease?.held !== true) await this.dropSequencer('its lease was lost')
    /* c8 ignore next -- a fault path: exercised by the fault suite (test/faults/cluster.test.ts: nodes and NATS servers killed), which runs without coverage */
    for (const p of [...this.owners.keys()]) if (this.partitionLeases.get(p)?.held !== true) await this.dropPartition(p, 'its lease was lost')
    if (this.sequencer === undefined) await this.trySequencer()
    this.sequencerHolder =
      /* c8 ignore next -- a fault path: exercised by the fault suite (test/faults/cluster.test.ts: nodes and NATS servers killed), which runs without coverage */
      this.sequencer !== undefined ? node : ((await Lease.holderOf(this.leases, layout.sequencerLease).catch(() => undefined))?.holder ?? null)
    // a fair share of the partitions, by the nodes alive now
    this.nodeCount = (await this.liveNodes()).length
    const live = Math.max(1, this.nodeCount)
    const share = Math.ceil(record.partitions / live)
    const held = this.owners.size
    if (held > share) {
      const p = [...this.owners.keys()].sort((a, b) => b - a)[0]
      const lease = this.partitionLeases.get(p)
      this.partitionLeases.delete(p)
      await this.dropPartition(p, `${live} nodes are up: giving it back (this node's share is ${share})`)
      await lease?.release()
      return
    }
    // start the search at a place of this node's own, so nodes do not all race for partition 0
    const start = [...node].reduce((h, c) => (h * 31 + c.charCodeAt(0)) >>> 0, 7) % record.partitions
    for (let k = 0; k < record.partitions && this.owners.size < share; k++) {
      const p = (start + k) % record.partitions
      if (this.owners.has(p)) continue
      await this.tryPartition(p)
    }
  }

  private announce(): void {
    const shown = JSON.stringify(this.picture())
    /* c8 ignore next -- an unchanged picture: rounds every third of a lease; the tests end before it settles */
    if (shown === this.shown) return
    this.shown = shown
    this.changes.next()
  }

  /**
   * The nodes that reported within the last two lease times: a killed node's record lingers
   * until the bucket's TTL removes it, and counting it would shrink every node's share.
   */
  private async liveNodes(): Promise<string[]> {
    const now = Date.now()
    const records = await readNodeRecords(this.options.jsm, this.nodes, this.options.layout.buckets.nodes)
    return records.filter((record) => now - Date.parse(record.at) <= 2 * this.leaseMs).map((record) => record.node)
  }

  private leaseFor(key: string): Lease {
    return new Lease({ kv: this.leases, key, holder: this.options.node, ttlMs: this.leaseMs, scheduler: this.options.scheduler })
  }

  private async trySequencer(): Promise<void> {
    const lease = (this.sequencerLease ??= this.leaseFor(this.options.layout.sequencerLease))
    if (!(await lease.acquire())) return
    const { js, jsm, layout, record } = this.options
    this.sequencer = await Sequencer.start({
      js,
      jsm,
      layout,
      config: record.config,
      isHeld: () => lease.held,
      scheduler: this.options.scheduler,
      /* c8 ignore next -- a fault path: exercised by the fault suite (test/faults/cluster.test.ts), which runs without coverage */
      onDeposed: (reason) => void this.dropSequencer(`deposed: ${reason}`),
      // a sequencer that failed (a publish NATS did not take, e.g. while a stream elects a new leader) has
      // stopped for good: it gives its lease back, and the next round starts one again from the last step
      /* c8 ignore next -- a fault path: exercised by the fault suite (test/faults/cluster.test.ts), which runs without coverage */
      onError: (error) => void this.dropSequencer(`failed: ${(error as Error).message}`),
      /* c8 ignore next -- a fault path: exercised by the fault suite (test/faults/cluster.test.ts), which runs without coverage */
      onConsumerReplaced: (why) => this.log(`sequencer: ${why}`),
      // this node's deliveries need not fetch the GROUPS messages its sequencer has read
      onGroups: (seq, groups) => this.options.engine.groups.put(seq, groups),
    })
    this.log(`sequencer: taken`)
  }

  private async dropSequencer(why: string): Promise<void> {
    const sequencer = this.sequencer
    if (sequencer === undefined) return
    // the lease too is forgotten at once: a round meanwhile starts over with a lease of its own
    const lease = this.sequencerLease
    this.sequencer = undefined
    this.sequencerLease = undefined
    // stop() halts at once (nothing more is published); the lease goes back now, not once the
    // publishes in flight have returned, so a stop that takes long cannot keep the role from
    // another node (a publish of this one landing late is refused to its successor, which restarts)
    const stopped = sequencer.stop()
    await lease?.release().catch(() => {})
    await this.settle(stopped, 'sequencer', why)
  }

  private async tryPartition(p: number): Promise<void> {
    const { js, jsm, layout, record, engine } = this.options
    const lease = this.partitionLeases.get(p) ?? this.leaseFor(layout.partitionLease(p))
    this.partitionLeases.set(p, lease)
    if (!(await lease.acquire())) return
    const owner = await PartitionOwner.start({
      js,
      jsm,
      layout,
      config: record.config,
      partition: p,
      frames: (seq) => engine.frames.decoded(seq),
      isHeld: () => lease.held,
      scheduler: this.options.scheduler,
      /* c8 ignore next -- a fault path: exercised by the fault suite (test/faults/cluster.test.ts), which runs without coverage */
      onDeposed: (reason) => void this.dropPartition(p, `deposed: ${reason}`),
      /* c8 ignore next -- a fault path: exercised by the fault suite (test/faults/cluster.test.ts), which runs without coverage */
      onError: (error) => this.log(`partition ${p}: ${(error as Error).message}`),
      /* c8 ignore next -- a fault path: exercised by the fault suite (test/faults/cluster.test.ts), which runs without coverage */
      onConsumerReplaced: (why) => this.log(`partition ${p}: ${why}`),
    })
    this.owners.set(p, owner)
    // an owner that ended by itself (an error, deposed) has stopped for good: its lease goes back so another node can try
    void owner.ended.then(async (end) => {
      /* c8 ignore next -- a fault path: exercised by the fault suite (test/faults/cluster.test.ts: nodes and NATS servers killed), which runs without coverage */
      if (this.owners.get(p) !== owner || end.reason === 'stopped') return
      /* c8 ignore start -- an owner deposed or failed: the fault suite's kills (run without coverage) */
      const lease = this.partitionLeases.get(p)
      this.partitionLeases.delete(p)
      await this.dropPartition(p, end.reason === 'deposed' ? `deposed: ${end.detail}` : `failed: ${(end.error as Error).message}`)
      await lease?.release().catch(() => {})
      /* c8 ignore stop */
    })
    if (engine.policyVersion !== undefined) await owner.appendPolicyVersion(engine.policyVersion).catch(() => {})
    this.log(`partition ${p}: taken`)
  }

  private async dropPartition(p: number, why: string): Promise<void> {
    const owner = this.owners.get(p)
    /* c8 ignore next -- a fault path: exercised by the fault suite (test/faults/cluster.test.ts: nodes and NATS servers killed), which runs without coverage */
    if (owner === undefined) return
    this.owners.delete(p)
    await this.settle(owner.stop(), `partition ${p}`, why)
  }

  /**
   * Waits for a role to stop, for at most a lease time: a round that waited for good would
   * leave this node's record unrenewed and every free role untaken. A stop that takes longer is
   * logged when it ends (the role acts no more meanwhile: it was halted first).
   */
  private async settle(stopped: Promise<void>, role: string, why: string): Promise<void> {
    let timer: NodeJS.Timeout | undefined
    const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), this.leaseMs)))
    const outcome = await Promise.race([stopped.then(() => 'stopped' as const), late]).finally(() => clearTimeout(timer))
    /* c8 ignore start -- a stop that hangs (a request to a dead NATS server): the fault suite, run without coverage */
    if (outcome === 'late') {
      this.log(`${role}: halted (${why}); still waiting for it to stop after ${this.leaseMs} ms`)
      void stopped.then(() => this.log(`${role}: stopped at last (${why})`))
      return
    }
    /* c8 ignore stop */
    this.log(`${role}: stopped (${why})`)
  }

  /** Stops every role and gives its lease back (so another node takes it at once). */
  async stop(): Promise<void> {
    /* c8 ignore next -- a fault path: exercised by the fault suite (test/faults/cluster.test.ts: nodes and NATS servers killed), which runs without coverage */
    if (this.stopped) return
    this.stopped = true
    this.timer?.unsubscribe()
    for (const subscription of this.subscriptions) subscription.unsubscribe()
    await this.round
    await this.dropSequencer('the node is stopping')
    for (const p of [...this.owners.keys()]) await this.dropPartition(p, 'the node is stopping')
    for (const lease of this.partitionLeases.values()) await lease.release().catch(() => {})
    await this.nodes.delete(`node.${this.options.node}`).catch(() => {})
    this.changes.complete()
  }
}
