/**
 * The cluster sequencer alone (`npm run bench -- --cluster`, DESIGN §8 and §9): a GROUPS
 * stream is prepared first (not timed), then a `Sequencer` is timed from its start to the
 * last batch of that stream published on BATCHES — reading, decoding, scoring, encoding and
 * publishing every batch with its expected-sequence check, against a real nats-server.
 * The same messages are also put through each pure step on their own (decode, feed = window
 * + score + the trainer's record, encode the BATCHES messages), so the report says where the time
 * goes; what the sequencer's time exceeds their sum by is NATS (consume and publish). Last, the
 * same GROUPS messages are read again and the steps they completed published the same way
 * (coalesced while a publish is in flight, encoded then), nothing scored: NATS alone, the
 * ceiling of this design on this host.
 */
import { jetstream, jetstreamManager, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import type { Config } from '../../core/config.js'
import {
  batchesMessages,
  decodeGroupsForScoring,
  emptyDropCounts,
  encodeMessage,
  type BatchEntry,
  type GroupMessage,
  type GroupsEntry,
} from '../../state/cluster/messages.js'
import type { RunLayout } from '../../state/cluster/runLayout.js'
import { PUBLISH_WINDOW, Sequencer } from '../../state/cluster/sequencer.js'
import { SequencerState } from '../../state/cluster/sequencerState.js'
import { StreamFollower } from '../../state/cluster/streamFollower.js'
import { runStreamConfigs } from '../../state/cluster/runStreams.js'
import { collectFully } from './collect.js'

export interface SequencerBenchOptions {
  nc: NatsConnection
  /** A run whose streams exist (`createRunStreams`) and are empty. */
  layout: RunLayout
  /** Its config: groups of `groupSize` rollouts, batches of `batchGroups` groups (no `batchMaxWaitMs`). */
  config: Config
  /** Groups to sequence; the bench times the full batches they make. */
  groups: number
  /** Groups per GroupsEntry (a partition owner coalesces what it formed while its previous publish was in flight: many groups under load). Default 64. */
  groupsPerEntry?: number
  /** Partitions the entries come from, in turn. Default 8. */
  partitions?: number
  /** The sequencer's publishes in flight (its default when not given; 1 = one at a time). */
  publishWindow?: number
}

export interface SequencerBenchReport {
  groupsPerEntry: number
  entries: number
  batches: number
  /** Rollouts in the batches published. */
  rollouts: number
  seconds: number
  rolloutsPerSecond: number
  /** CPU seconds this process (the sequencer and the NATS client, every thread) used over those seconds; the NATS server's are not counted. */
  cpuSeconds: number
  /** Seconds the pure steps take over the same messages, one after the other, without NATS. */
  phases: { decode: number; feed: number; encode: number }
  /** NATS alone: the same messages read and the steps they completed published as the sequencer does (window, coalescing, checks; encoded then), nothing scored. */
  transportSeconds: number
  transportRolloutsPerSecond: number
}

/** Synthetic reward values, deterministic (the core bench's distribution: binary accuracy and consistency, real grounding). */
function random(seed: number): () => number {
  let state = seed
  return () => (state = (Math.imul(state, 1103515245) + 12345) >>> 0) / 4294967296
}

/**
 * The GroupsEntries of `groups` complete groups of `config.groupSize` rollouts, each rollout
 * with its payload by reference (64 bytes of a logged frame), as partition owners publish them.
 */
export function syntheticGroupsEntries(config: Config, groups: number, groupsPerEntry: number, partitions: number): GroupsEntry[] {
  const next = random(12345)
  const size = config.groupSize
  const entries: GroupsEntry[] = []
  const n = new Array<number>(partitions).fill(0)
  for (let g = 0; g < groups; g += groupsPerEntry) {
    const p = entries.length % partitions
    const formed: GroupMessage[] = []
    for (let k = g; k < Math.min(groups, g + groupsPerEntry); k++) {
      const frame = k + 1
      formed.push({
        promptId: `p${k}`,
        partial: false,
        ts: k,
        rollouts: Array.from({ length: size }, (_, i) => ({
          id: `r${k * size + i}`,
          promptId: `p${k}`,
          policyVersion: 0,
          rewards: { accuracy: next() < 0.5 ? 1 : 0, consistency: next() < 0.8 ? 1 : 0, grounding: next() < 0.02 ? null : next() },
          ts: k,
          seq: frame * 16384 + i,
          ref: [frame, 16 + 64 * i, 64] as [number, number, number],
        })),
      })
    }
    n[p]++
    entries.push({ p, n: n[p], through: n[p], groups: formed, drops: emptyDropCounts() })
  }
  return entries
}

/** The GroupsEntries' bytes and the subject of each: the synthetic objects are not kept. */
function encodedGroupsEntries(
  config: Config,
  groups: number,
  groupsPerEntry: number,
  partitions: number,
  layout: RunLayout,
): { encoded: Uint8Array[]; subjects: string[] } {
  const made = syntheticGroupsEntries(config, groups, groupsPerEntry, partitions)
  return { encoded: made.map((e) => encodeMessage(e)), subjects: made.map((e) => layout.subjects.groups(e.p)) }
}

/**
 * Publishes the GROUPS stream (not timed), then times a sequencer over it; see the top of
 * this file.
 *
 * @example
 * const layout = runLayout('bench')
 * await createRunStreams(await jetstreamManager(nc), layout, 1)
 * const report = await benchSequencer({ nc, layout, config: benchConfig, groups: 125_000 })
 * console.log(`${(report.rolloutsPerSecond / 1e6).toFixed(2)} M rollouts/s`)
 */
export async function benchSequencer(options: SequencerBenchOptions): Promise<SequencerBenchReport> {
  const { nc, layout, config, groups } = options
  const groupsPerEntry = options.groupsPerEntry ?? 64
  if (config.batchMaxWaitMs !== undefined) throw new Error('benchSequencer: the config must not set batchMaxWaitMs (the bench counts full batches)')
  const js = jetstream(nc)
  const jsm = await jetstreamManager(nc)
  const { encoded, subjects } = encodedGroupsEntries(config, groups, groupsPerEntry, options.partitions ?? 8, layout)
  // published in order, a window of them in flight at a time
  const WINDOW = 256
  for (let i = 0; i < encoded.length; i += WINDOW) await Promise.all(encoded.slice(i, i + WINDOW).map((bytes, k) => js.publish(subjects[i + k], bytes)))
  // the sequencer is timed with what this process made so far collected: a heap left holding the
  // synthetic rollouts (800,000 objects) made every collection during the run mark them, and halved its rate
  await collectFully()

  const batches = Math.floor(groups / config.batchGroups)
  const start = performance.now()
  const cpu = process.cpuUsage()
  let done!: () => void
  const finished = new Promise<void>((resolve) => (done = resolve))
  // why the sequencer stopped before the last batch (a deposition's reason or an error)
  let failure: unknown
  const fail = (why: unknown) => {
    failure = why
    done()
  }
  const sequencer = await Sequencer.start({
    js,
    jsm,
    layout,
    config,
    isHeld: () => true,
    publishWindow: options.publishWindow,
    onBatch: (entry) => entry.step === batches && done(),
    onDeposed: fail,
    onError: fail,
  })
  await finished
  const seconds = (performance.now() - start) / 1000
  const { user, system } = process.cpuUsage(cpu)
  await sequencer.stop()
  if (failure !== undefined) throw new Error(`benchSequencer: the sequencer stopped before its last batch: ${String(failure)}`, { cause: failure })
  const rollouts = batches * config.batchGroups * config.groupSize
  const { phases, completed } = phasesOf(config, encoded)
  const transportSeconds = await transportOnly(js, jsm, layout, completed, options.publishWindow ?? PUBLISH_WINDOW)
  return {
    groupsPerEntry,
    entries: encoded.length,
    batches,
    rollouts,
    seconds,
    rolloutsPerSecond: rollouts / seconds,
    cpuSeconds: (user + system) / 1e6,
    phases,
    transportSeconds,
    transportRolloutsPerSecond: rollouts / transportSeconds,
  }
}

/**
 * Reads the GROUPS stream from its start again and, after each message, publishes the batch
 * entries it completed (`completed[i]`) as the sequencer does: those made while `window`
 * publishes are in flight together, encoded then (`batchesMessages`), with message id and
 * expected last sequence, to a stream configured as BATCHES (removed after). Seconds taken.
 */
async function transportOnly(
  js: JetStreamClient,
  jsm: JetStreamManager,
  layout: RunLayout,
  completed: readonly BatchEntry[][],
  window: number,
): Promise<number> {
  const batches = runStreamConfigs(layout, 1).find((config) => config.name === layout.streams.batches)!
  const stream = `${batches.name}_TRANSPORT`
  const subject = `${layout.subjects.batches}.transport`
  await jsm.streams.add({ ...batches, name: stream, subjects: [subject] })
  const messages = new StreamFollower({ js, jsm, stream: layout.streams.groups, from: 1, maxBytes: 8 * 1024 * 1024 })
  try {
    const start = performance.now()
    const inFlight: Promise<unknown>[] = []
    let waiting: BatchEntry[] = []
    let expected = 0
    const send = (): void => {
      if (waiting.length === 0 || inFlight.length >= window) return
      const steps = waiting
      waiting = []
      for (const { bytes } of batchesMessages(steps)) {
        const published: Promise<unknown> = js.publish(subject, bytes, { msgID: `${layout.run}.t.${expected}`, expect: { lastSequence: expected++ } })
        inFlight.push(published)
        void published.then(() => {
          inFlight.splice(inFlight.indexOf(published), 1)
          send()
        })
      }
    }
    let fed = 0
    for await (const _ of messages) {
      for (const entry of completed[fed]) waiting.push(entry)
      send()
      // as the sequencer, reading waits once 1,024 steps wait for a publish
      /* c8 ignore next -- more steps per round trip than the bench's test makes in all */
      while (waiting.length >= 1024 && inFlight.length > 0) await inFlight[0]
      if (++fed === completed.length) break
      if (fed % 16 === 0) await new Promise(setImmediate)
    }
    // each publish that returns sends what waits
    while (inFlight.length > 0) await inFlight[0]
    return (performance.now() - start) / 1000
  } finally {
    await messages.close()
    await jsm.streams.delete(stream)
  }
}

/**
 * Seconds each pure step of the sequencer takes over the messages, message after message as
 * the sequencer meets them (decode it, feed it, encode the BATCHES messages of the batch entries
 * it completed), and those messages, per GROUPS message.
 */
function phasesOf(config: Config, encoded: readonly Uint8Array[]): { phases: SequencerBenchReport['phases']; completed: BatchEntry[][] } {
  const state = new SequencerState(config)
  const phases = { decode: 0, feed: 0, encode: 0 }
  const completed = encoded.map((bytes, i) => {
    const t0 = performance.now()
    const message = decodeGroupsForScoring(bytes)
    const t1 = performance.now()
    const entries = state.feedScoring(i + 1, message)
    const t2 = performance.now()
    batchesMessages(entries)
    phases.decode += t1 - t0
    phases.feed += t2 - t1
    phases.encode += performance.now() - t2
    return entries
  })
  state.close()
  return { phases: { decode: phases.decode / 1000, feed: phases.feed / 1000, encode: phases.encode / 1000 }, completed }
}
