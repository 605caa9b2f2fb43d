/**
 * The partition owner alone (DESIGN §8 and §9): a run's ROLLOUTS stream is prepared first
 * (not timed) as ingest nodes write it — frames of `frameRollouts` rollouts with payloads of
 * `payloadBytes`, each frame's items spread over `partitions` partitions, one partition entry
 * per partition per frame — then owners are timed from their start until everything they
 * compute is published on `ds.R.groups.<p>` (PubAck'd), against a real nats-server:
 * - one owner from scratch: partition 0, with a node's `FrameCache`, cold (each frame fetched
 *   with a direct get, decoded, and only an eighth of it used: the worst case of decoding);
 * - a takeover catch-up: a new owner of partition 0, whose messages are all published already:
 *   it recomputes the partition from its first entry, checks the last stored message, and
 *   publishes nothing;
 * - the other partitions' owners at once, sharing one cold `FrameCache` (each frame fetched
 *   and decoded once for all of them): the aggregate of a node that owns them.
 */
import { jetstream, jetstreamManager, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import { Packr } from 'msgpackr'
import { parseConfig, type Config } from '../../core/config.js'
import { FrameCache } from '../../state/cluster/frameCache.js'
import { encodeMessage, type PartitionEntry } from '../../state/cluster/messages.js'
import { PartitionOwner } from '../../state/cluster/partitionOwner.js'
import { partitionOf, type RunLayout } from '../../state/cluster/runLayout.js'
import { createRunStreams } from '../../state/cluster/runStreams.js'
import { formatRate, textTable } from './measure.js'
import { payloadPool, rolloutPayload } from './payloadFrames.js'

export interface OwnerBenchOptions {
  nc: NatsConnection
  /** A run whose streams are empty (they are created when missing). */
  layout: RunLayout
  /** Entries per partition, i.e. frames (default 5000). */
  entries?: number
  /** Rollouts per frame (default 1000). */
  frameRollouts?: number
  /** Partitions the frames' items are spread over (default 8; at least 2). */
  partitions?: number
  /** Payload bytes per rollout (default 128). */
  payloadBytes?: number
  /** Rollouts per group (default 8). */
  groupSize?: number
}

/** One timed scenario. */
export interface OwnerBenchRow {
  scenario: string
  owners: number
  /** Partition entries fed (all owners). */
  entries: number
  /** Rollouts in those entries. */
  rollouts: number
  /** Messages published on the groups subjects (all owners). */
  messages: number
  seconds: number
  entriesPerSecond: number
  rolloutsPerSecond: number
  /** Frames the node's cache fetched from the stream, and decoded (once each when the owners kept together). */
  framesFetched: number
  framesDecoded: number
}

export interface OwnerBenchReport {
  frames: number
  frameRollouts: number
  partitions: number
  payloadBytes: number
  /** Bytes of the frames logged (MessagePack, payloads and all). */
  frameBytes: number
  rows: OwnerBenchRow[]
}

/** The prepared run: each partition's last entry seq and how many rollouts it holds. */
interface Prepared {
  lastSeq: number[]
  rollouts: number[]
  frameBytes: number
}

/**
 * Publishes `frames` frames and their partition entries, `window` publishes in flight, each
 * with the stream seq it must get (so a reordering would be an error, not a wrong bench).
 */
async function prepare(
  js: JetStreamClient,
  layout: RunLayout,
  frames: number,
  frameRollouts: number,
  partitions: number,
  payloadBytes: number,
  groupSize: number,
): Promise<Prepared> {
  const packr = new Packr({ useRecords: false })
  const pool = payloadPool(payloadBytes)
  // each partition's prompts, in order: its rollouts fill them groupSize at a time
  const prompts: string[][] = Array.from({ length: partitions }, () => [])
  const taken = new Array<number>(partitions).fill(0)
  let nextPrompt = 0
  const promptOf = (p: number, index: number): string => {
    const k = Math.floor(index / groupSize)
    while (prompts[p].length <= k) {
      const promptId = `q${nextPrompt++}`
      prompts[partitionOf(promptId, partitions)].push(promptId)
    }
    return prompts[p][k]
  }
  let state = 12345
  const random = () => (state = (Math.imul(state, 1103515245) + 12345) >>> 0) / 4294967296
  const lastSeq = new Array<number>(partitions).fill(0)
  const rollouts = new Array<number>(partitions).fill(0)
  let frameBytes = 0
  let seq = 0
  let inFlight: Promise<unknown>[] = []
  const publish = async (subject: string, data: Uint8Array) => {
    inFlight.push(js.publish(subject, data, { expect: { lastSequence: seq++ } }))
    if (inFlight.length >= 64) {
      await Promise.all(inFlight)
      inFlight = []
    }
  }
  for (let f = 0; f < frames; f++) {
    // item j of the frame belongs to partition j mod partitions (each entry's items are spread over the frame)
    const items = Array.from({ length: frameRollouts }, (_, j) => {
      const p = j % partitions
      const index = taken[p]++
      const promptId = promptOf(p, index)
      return {
        id: `${promptId}-r${index % groupSize}`,
        promptId,
        policyVersion: 0,
        rewards: { accuracy: random() < 0.5 ? 1 : 0, consistency: random() < 0.8 ? 1 : 0, grounding: random() < 0.02 ? null : random() },
        payload: rolloutPayload(pool, index, payloadBytes),
      }
    })
    const bytes = packr.pack({ type: 'rollouts', rollouts: items })
    frameBytes += bytes.length
    const frame = seq + 1
    await publish(layout.subjects.frames, bytes)
    for (let p = 0; p < partitions; p++) {
      const indices: number[] = []
      for (let j = p; j < frameRollouts; j += partitions) indices.push(j)
      const entry: PartitionEntry = { k: 'rollouts', frame, items: indices, ts: 1_000 + f }
      lastSeq[p] = seq + 1
      rollouts[p] += indices.length
      await publish(layout.subjects.partition(p), encodeMessage(entry))
    }
  }
  await Promise.all(inFlight)
  return { lastSeq, rollouts, frameBytes }
}

/** What `timeOwners` measured. */
interface Timed {
  seconds: number
  messages: number
  framesFetched: number
  framesDecoded: number
}

/** Starts `owners` at once and resolves, with the seconds it took, once each has published the outputs of its partition's entries through `lastSeq`. */
async function timeOwners(
  js: JetStreamClient,
  jsm: JetStreamManager,
  layout: RunLayout,
  config: Config,
  partitions: readonly number[],
  lastSeq: readonly number[],
): Promise<Timed> {
  // the node's frame cache, cold: each frame fetched (a direct get) and decoded once for all the owners
  const frames = new FrameCache({ jsm, stream: layout.streams.rollouts })
  const start = performance.now()
  const owners = await Promise.all(
    partitions.map((partition) => PartitionOwner.start({ js, jsm, layout, config, partition, isHeld: () => true, frames: (seq) => frames.decoded(seq) })),
  )
  const done = () => owners.every((owner, k) => owner.stats().through >= lastSeq[partitions[k]] && owner.stats().unpublished === 0)
  while (!done() && owners.every((owner) => owner.stats().running)) await new Promise((resolve) => setTimeout(resolve, 1))
  const seconds = (performance.now() - start) / 1000
  const messages = owners.reduce((sum, owner) => sum + owner.stats().publishedHere, 0)
  const stopped = owners.find((owner) => !owner.stats().running)
  for (const owner of owners) await owner.stop()
  if (stopped !== undefined)
    throw new Error(`benchOwner: the owner of partition ${stopped.stats().partition} stopped before it was through`, { cause: await stopped.ended })
  return { seconds, messages, framesFetched: frames.fetched, framesDecoded: frames.decodes }
}

/**
 * Prepares the run (not timed), then times the owners; see the top of this file.
 *
 * @example
 * const report = await benchOwner({ nc, layout: runLayout('ownerbench') })
 * console.log(formatOwnerBench(report))
 */
export async function benchOwner(options: OwnerBenchOptions): Promise<OwnerBenchReport> {
  const { nc, layout } = options
  const entries = options.entries ?? 5000
  const frameRollouts = options.frameRollouts ?? 1000
  const partitions = options.partitions ?? 8
  const payloadBytes = options.payloadBytes ?? 128
  const groupSize = options.groupSize ?? 8
  if (partitions < 2) throw new Error(`benchOwner: partitions must be at least 2 (one owner alone, then the others together), got ${partitions}`)
  const config = parseConfig({ groupSize, batchGroups: 16, objectives: [{ channel: 'accuracy' }] })
  const js = jetstream(nc)
  const jsm = await jetstreamManager(nc)
  await createRunStreams(jsm, layout, 1)
  const prepared = await prepare(js, layout, entries, frameRollouts, partitions, payloadBytes, groupSize)
  const rows: OwnerBenchRow[] = []
  const row = (scenario: string, owned: number[], timed: Timed) => {
    const rollouts = owned.reduce((sum, p) => sum + prepared.rollouts[p], 0)
    const fed = owned.length * entries
    rows.push({
      scenario,
      owners: owned.length,
      entries: fed,
      rollouts,
      messages: timed.messages,
      framesFetched: timed.framesFetched,
      framesDecoded: timed.framesDecoded,
      seconds: timed.seconds,
      entriesPerSecond: fed / timed.seconds,
      rolloutsPerSecond: rollouts / timed.seconds,
    })
  }
  row('one owner, from scratch', [0], await timeOwners(js, jsm, layout, config, [0], prepared.lastSeq))
  row('one owner, takeover catch-up (all published already)', [0], await timeOwners(js, jsm, layout, config, [0], prepared.lastSeq))
  const others = Array.from({ length: partitions - 1 }, (_, k) => k + 1)
  row(`${others.length} owners of one node at once, from scratch`, others, await timeOwners(js, jsm, layout, config, others, prepared.lastSeq))
  return { frames: entries, frameRollouts, partitions, payloadBytes, frameBytes: prepared.frameBytes, rows }
}

/** 5.31 M, 812 k, 184.3: a rate without its unit (the column says it). */
const rate = (perSecond: number): string => formatRate(perSecond).replace(/ ?\/s$/, '')

/** The report as a table (and a line saying what was prepared). */
export function formatOwnerBench(report: OwnerBenchReport): string {
  const header = `${report.frames.toLocaleString('en-US')} frames of ${report.frameRollouts.toLocaleString('en-US')} rollouts (${report.payloadBytes}-byte payloads, ${(report.frameBytes / 1e6).toFixed(0)} MB) over ${report.partitions} partitions: ${report.frames.toLocaleString('en-US')} entries of ${Math.round(report.frameRollouts / report.partitions)} rollouts per partition`
  const rows = report.rows.map((r) => [
    r.scenario,
    String(r.owners),
    r.entries.toLocaleString('en-US'),
    r.messages.toLocaleString('en-US'),
    `${r.seconds.toFixed(2)} s`,
    rate(r.entriesPerSecond),
    rate(r.rolloutsPerSecond),
    `${r.framesFetched.toLocaleString('en-US')} / ${r.framesDecoded.toLocaleString('en-US')}`,
  ])
  return `${header}\n${textTable(['scenario', 'owners', 'entries', 'messages', 'time', 'entries/s', 'rollouts/s', 'frames fetched / decoded'], rows)}`
}
