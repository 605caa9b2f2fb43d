/**
 * Creating or joining a cluster run (DESIGN §8): the first node records the run's config,
 * partition count and replication in the run's KV bucket; every later node reads it and is
 * refused, with the difference named, when its own config differs. Every node makes sure the
 * run's streams and buckets exist (idempotent), so a first node that died half-way through
 * creating them leaves nothing a second cannot finish.
 */
import { jetstream, jetstreamManager, type JetStreamManager } from '@nats-io/jetstream'
import { Kvm } from '@nats-io/kv'
import type { NatsConnection } from '@nats-io/transport-node'
import type { Config } from '../../core/config.js'
import { createRunStreams } from './runStreams.js'
import { MAX_PARTITIONS, runLayout, type RunLayout } from './runLayout.js'

/** What the run's KV bucket holds under `run`. */
export interface RunRecord {
  /** The format of the run's messages (`MESSAGES_FORMAT` of the version that created it; absent = 1). */
  format?: number
  config: Config
  partitions: number
  replicas: number
  /** ISO time the run was created. */
  created: string
}

export interface OpenRunOptions {
  nc: NatsConnection
  run: string
  config: Config
  /** Partitions of a new run (default 8); a joining node that names a different count is refused. */
  partitions?: number
  /** Replicas of a new run's streams (default 3 when the NATS cluster has 3 or more servers, else 1). */
  replicas?: number
}

export interface OpenedRun {
  layout: RunLayout
  record: RunRecord
  /** This node created the run. */
  created: boolean
  jsm: JetStreamManager
}

/** A node cannot join the run as asked (a different config, partition count or replication). */
export class RunMismatchError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'RunMismatchError'
  }
}

export const DEFAULT_PARTITIONS = 8

/**
 * The format of a run's messages this version reads and writes: 2 since GROUPS carries
 * columns (groupsEntry.ts), 3 since a BATCHES message carries several steps
 * (`BatchesMessage`), 4 since a step names its groups' places on GROUPS and carries its
 * advantages instead of the trainer's record (trainerRecord.ts), 5 since an ACKS message
 * carries the steps acknowledged while the node's previous one was stored. A run of another
 * format is refused rather than half read.
 */
export const MESSAGES_FORMAT = 5

/** Throws a `RunMismatchError` when run `run` (its record) was created with messages of another format. */
export function checkRunFormat(run: string, record: RunRecord): void {
  const format = record.format ?? 1
  if (format !== MESSAGES_FORMAT)
    throw new RunMismatchError(
      `run ${run} was created by a dualstream whose cluster messages are format ${format}; this one reads and writes format ${MESSAGES_FORMAT}: finish the run with the version that created it, or start a new run`,
    )
}

/** The servers of the NATS cluster the connection is in, as its INFO tells (itself included). */
export function clusterSize(nc: NatsConnection): number {
  const info = nc.info
  const urls = new Set(info?.connect_urls ?? [])
  if (info !== undefined) urls.add(`${info.host}:${info.port}`)
  return Math.max(1, urls.size)
}

/**
 * The first place two JSON-like values differ, as `path: a vs b` (undefined when equal).
 *
 * @example
 * firstDifference({ groupSize: 8 }, { groupSize: 4 }) // → 'groupSize: 8 vs 4'
 */
export function firstDifference(a: unknown, b: unknown, path = ''): string | undefined {
  if (Object.is(a, b)) return undefined
  const bothObjects = typeof a === 'object' && a !== null && typeof b === 'object' && b !== null && Array.isArray(a) === Array.isArray(b)
  if (!bothObjects) return `${path === '' ? '(the whole config)' : path}: ${JSON.stringify(a)} vs ${JSON.stringify(b)}`
  const keys = new Set([...Object.keys(a), ...Object.keys(b)])
  for (const key of keys) {
    const inner = firstDifference(
      (a as Record<string, unknown>)[key],
      (b as Record<string, unknown>)[key],
      Array.isArray(a) ? `${path}[${key}]` : path === '' ? key : `${path}.${key}`,
    )
    if (inner !== undefined) return inner
  }
  return undefined
}

/**
 * Creates run `run` or joins it: records its config on first use, refuses a node whose config
 * (or explicit partitions/replicas) differs from the run's, and ensures its streams and buckets.
 *
 * @example
 * const { layout, record } = await openRun({ nc, run: 'exp7', config })
 */
export async function openRun(options: OpenRunOptions): Promise<OpenedRun> {
  const { nc, run, config } = options
  const layout = runLayout(run)
  if (options.partitions !== undefined && (!Number.isSafeInteger(options.partitions) || options.partitions < 1 || options.partitions > MAX_PARTITIONS))
    throw new RunMismatchError(`partitions: must be an integer from 1 to ${MAX_PARTITIONS}, got ${options.partitions}`)
  const servers = clusterSize(nc)
  const replicas = options.replicas ?? (servers >= 3 ? 3 : 1)
  if (!Number.isSafeInteger(replicas) || replicas < 1 || replicas > 5) throw new RunMismatchError(`replicas: must be an integer from 1 to 5, got ${replicas}`)
  if (replicas > servers) throw new RunMismatchError(`replicas: ${replicas} asked, but the NATS cluster has ${servers} server${servers === 1 ? '' : 's'}`)
  const js = jetstream(nc)
  const jsm = await jetstreamManager(nc)
  const kvm = new Kvm(js)
  const bucket = await kvm.create(layout.buckets.run, { history: 1, replicas })
  const proposed: RunRecord = {
    format: MESSAGES_FORMAT,
    config,
    partitions: options.partitions ?? DEFAULT_PARTITIONS,
    replicas,
    created: new Date().toISOString(),
  }
  let record: RunRecord
  let created = false
  try {
    await bucket.create('run', JSON.stringify(proposed))
    record = proposed
    created = true
  } catch {
    const entry = await bucket.get('run')
    /* c8 ignore next -- the record could neither be created nor read: a bucket deleted between the two calls */
    if (entry === null || entry.length === 0) throw new Error(`run ${run}: its record in bucket ${layout.buckets.run} could not be created nor read`)
    record = entry.json<RunRecord>()
  }
  if (!created) {
    checkRunFormat(run, record)
    const difference = firstDifference(JSON.parse(JSON.stringify(config)), record.config)
    if (difference !== undefined)
      throw new RunMismatchError(`run ${run} was created with another config; this node's differs at ${difference} (this node vs the run)`)
    if (options.partitions !== undefined && options.partitions !== record.partitions)
      throw new RunMismatchError(`run ${run} has ${record.partitions} partitions; --partitions ${options.partitions} cannot change that`)
    if (options.replicas !== undefined && options.replicas !== record.replicas)
      throw new RunMismatchError(`run ${run} has ${record.replicas} replicas; --replicas ${options.replicas} cannot change that`)
    // the same config, but as this node parsed it: the stored JSON lost what JSON cannot hold (an unset λmax is Infinity, stored as null)
    record = { ...record, config }
  }
  await createRunStreams(jsm, layout, record.replicas)
  return { layout, record, created, jsm }
}
