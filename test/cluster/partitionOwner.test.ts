/**
 * A partition's owner against a real nats-server (src/state/cluster/partitionOwner.ts): frames
 * and partition entries are published as an ingest node does, and the owner's messages on
 * `ds.R.groups.<p>` are checked against `PartitionState` fed the same entries (its own tests
 * show that function right): whatever the cuts of the coalesced messages, message n through
 * entry T holds exactly the outputs of the entries after the previous message's T up to T,
 * byte for byte (`storedExactly`). An owner stopped mid-way (with outputs computed and never
 * published, a coalesced message just stored) and a second one started give together exactly
 * one uninterrupted run; two owners at once store each output once; an owner whose lease is
 * gone, or whose subject another owner wrote to (also while its coalesced message was in
 * flight), publishes nothing more and says so; a stored message the owner does not compute
 * stops it; messages are cut by rollouts and bytes, and feeding waits for a publish when a
 * message's worth waits; frames are requested ahead of the entry fed; watermark entries (on a
 * virtual clock) time an incomplete group out; policy entries make rollouts stale; unreadable
 * input stops the owner with where it is, after the entries before it. Also: the run's streams.
 */
import { createHash } from 'node:crypto'
import t, { type Test } from 'tap'
import { jetstream, jetstreamManager, DiscardPolicy, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream'
import { connect, type NatsConnection } from '@nats-io/transport-node'
import { parseConfig, type Config, type ConfigInput } from '../../src/core/config.js'
import { wirePackr } from '../../src/state/codec.js'
import { decodeGroupsMessage, decodeMessage, encodeMessage, type GroupsEntry, type PartitionEntry } from '../../src/state/cluster/messages.js'
import { FrameCache } from '../../src/state/cluster/frameCache.js'
import { fetchFrame, partitionWatermarkInterval, PartitionOwner, type FrameSource, type PartitionOwnerOptions } from '../../src/state/cluster/partitionOwner.js'
import { decodePartitionFrame, groupsEntryOf, PartitionState, type PartitionOutput } from '../../src/state/cluster/partitionState.js'
import { partitionOf, runLayout, type RunLayout } from '../../src/state/cluster/runLayout.js'
import { createRunStreams, DUPLICATE_WINDOW_NS, runStreamConfigs } from '../../src/state/cluster/runStreams.js'
import { natsMissing, startNats, waitFor, type NatsServers } from '../support/natsServers.js'
import { VirtualClock } from '../support/virtualTime.js'

const PARTITIONS = 2

const config = (overrides: Partial<ConfigInput> = {}): Config => parseConfig({ groupSize: 2, batchGroups: 4, objectives: [{ channel: 'acc' }], ...overrides })

interface Item {
  id: string
  promptId: string
  rewards: Record<string, number | null>
  policyVersion?: number
  payload?: unknown
}

let nats: NatsServers
let nc: NatsConnection
let js: JetStreamClient
let jsm: JetStreamManager
let runs = 0

t.before(async () => {
  if (natsMissing) return
  nats = await startNats()
  nc = await connect({ servers: nats.urls })
  js = jetstream(nc)
  jsm = await jetstreamManager(nc)
})

t.teardown(async () => {
  await nc?.close()
  await nats?.stop()
})

/** A fresh run with its streams. */
async function newRun(): Promise<RunLayout> {
  const layout = runLayout(`po${++runs}`)
  await createRunStreams(jsm, layout, 1)
  return layout
}

/** Logs a frame and its partition entries as an ingest node does; returns the frame's stream seq. */
async function ingest(layout: RunLayout, items: Item[], ts: number, client = js): Promise<number> {
  const bytes = wirePackr.pack({ type: 'rollouts', rollouts: items })
  const { seq: frame } = await client.publish(layout.subjects.frames, bytes, { msgID: createHash('sha256').update(bytes).digest('hex') })
  const byPartition = new Map<number, number[]>()
  items.forEach((item, index) => {
    const p = partitionOf(item.promptId, PARTITIONS)
    byPartition.set(p, [...(byPartition.get(p) ?? []), index])
  })
  for (const [p, indices] of byPartition) {
    const entry: PartitionEntry = { k: 'rollouts', frame, items: indices, ts }
    await client.publish(layout.subjects.partition(p), encodeMessage(entry), { msgID: `${frame}.${p}` })
  }
  return frame
}

/** Rollouts of `prompts` prompts of partition `p` (their ids start with `tag`), `size` each. */
function itemsFor(p: number, prompts: number, size: number, tag: string, extra: Partial<Item> = {}): Item[] {
  const items: Item[] = []
  for (let k = 0; items.length < prompts * size; k++) {
    const promptId = `${tag}-q${k}`
    if (partitionOf(promptId, PARTITIONS) !== p) continue
    for (let r = 0; r < size; r++) items.push({ id: `${promptId}-r${r}`, promptId, rewards: { acc: r % 2 }, payload: { tokens: [k, r] }, ...extra })
  }
  return items
}

/** Every message on `subject` in `stream`, in order. */
async function messagesOn(stream: string, subject: string): Promise<{ seq: number; data: Uint8Array; msgId: string | undefined }[]> {
  const info = await jsm.streams.info(stream)
  const out: { seq: number; data: Uint8Array; msgId: string | undefined }[] = []
  for (let seq = info.state.first_seq; seq <= info.state.last_seq && info.state.messages > 0; seq++) {
    const message = await jsm.streams.getMessage(stream, { seq })
    if (message !== null && message.subject === subject) out.push({ seq, data: message.data, msgId: message.header?.get('Nats-Msg-Id') })
  }
  return out
}

const groupsOn = async (layout: RunLayout, p: number): Promise<GroupsEntry[]> =>
  (await messagesOn(layout.streams.groups, layout.subjects.groups(p))).map((m) => decodeGroupsMessage(m.data) as GroupsEntry)

const entriesOn = async (layout: RunLayout, p: number): Promise<PartitionEntry[]> =>
  (await messagesOn(layout.streams.rollouts, layout.subjects.partition(p))).map((m) => decodeMessage<PartitionEntry>(m.data))

/** What each entry of the partition now in the stream outputs: `PartitionState` fed them all. */
async function outputsOn(layout: RunLayout, cfg: Config, p: number): Promise<PartitionOutput[]> {
  const state = new PartitionState(cfg, p)
  const out: PartitionOutput[] = []
  for (const { seq, data } of await messagesOn(layout.streams.rollouts, layout.subjects.partition(p))) {
    const entry = decodeMessage<PartitionEntry>(data)
    const frame = entry.k === 'rollouts' ? decodePartitionFrame(await fetchFrame(jsm, layout, entry.frame), 'expected') : undefined
    const output = state.feed(seq, entry, frame)
    if (output !== undefined) out.push(output)
  }
  state.close()
  return out
}

/**
 * Checks the partition's stored messages against what its entries output: numbered 1, 2, …,
 * each through a later entry than the one before, each byte for byte the message of the
 * outputs of the entries in (previous through, its through]; with `complete`, through the
 * last output (nothing left unpublished). Returns the messages.
 */
async function storedExactly(t: Test, layout: RunLayout, cfg: Config, p: number, complete = true): Promise<GroupsEntry[]> {
  const outputs = await outputsOn(layout, cfg, p)
  const stored = await messagesOn(layout.streams.groups, layout.subjects.groups(p))
  const messages = stored.map((m) => decodeGroupsMessage(m.data) as GroupsEntry)
  let from = 0
  let through = 0
  messages.forEach((message, k) => {
    t.equal(message.n, k + 1, `message ${k + 1} numbered so`)
    t.ok(message.through > through, `message ${k + 1} through a later entry`)
    through = message.through
    let to = from
    while (to < outputs.length && outputs[to].seq <= through) to++
    const expected = encodeMessage(groupsEntryOf(p, k + 1, outputs.slice(from, to)))
    t.same(
      Buffer.from(stored[k].data),
      Buffer.from(expected),
      `message ${k + 1}: the outputs of the entries after ${outputs[from - 1]?.seq ?? 0} through ${through}`,
    )
    t.equal(stored[k].msgId, `${layout.run}.g.${p}.${k + 1}.${through}`)
    from = to
  })
  if (complete) t.equal(from, outputs.length, 'every output published')
  return messages
}

/** The partition stream seq of its last entry. */
const lastEntrySeq = async (layout: RunLayout, p: number) =>
  (await jsm.streams.getMessage(layout.streams.rollouts, { last_by_subj: layout.subjects.partition(p) }))!.seq

/** Whether `owner` has fed the partition's entries through the last one now in the stream and published what they output. */
const isCaughtUp = async (owner: PartitionOwner, layout: RunLayout, p: number): Promise<boolean> =>
  owner.stats().through >= (await lastEntrySeq(layout, p)) && owner.stats().unpublished === 0

/** Resolves once `owner` has fed the partition's entries through the last one now in the stream and published what they output. */
async function caughtUp(owner: PartitionOwner, layout: RunLayout, p: number): Promise<void> {
  const last = await lastEntrySeq(layout, p)
  await waitFor(`partition ${p} read through seq ${last}, all published`, () => owner.stats().through >= last && owner.stats().unpublished === 0)
}

/** Frames through a cache of their own, decoded; `fetched` lists the seqs asked for. */
function framesOf(layout: RunLayout): { frames: FrameSource; fetched: number[] } {
  const cache = new FrameCache({ jsm, stream: layout.streams.rollouts })
  const fetched: number[] = []
  return { frames: (seq) => (fetched.push(seq), cache.decoded(seq)), fetched }
}

/**
 * The real client with its publishes to the groups subjects held: each waits for a permit
 * (`allow(k)` lets k more through); `requested` lists the messages asked to be published.
 */
function gatedClient(): { client: JetStreamClient; requested: GroupsEntry[]; allow: (k?: number) => void } {
  const requested: GroupsEntry[] = []
  let permits = 0
  const waiting: (() => void)[] = []
  const allow = (k = 1) => {
    permits += k
    while (permits > 0 && waiting.length > 0) {
      permits--
      waiting.shift()!()
    }
  }
  const client = Object.create(js, {
    publish: {
      value: async (...args: Parameters<JetStreamClient['publish']>) => {
        if (args[0].includes('.groups.')) {
          requested.push(decodeGroupsMessage(args[1] as Uint8Array) as GroupsEntry)
          if (permits > 0) permits--
          else await new Promise<void>((resolve) => waiting.push(resolve))
        }
        return js.publish(...args)
      },
    },
  }) as JetStreamClient
  return { client, requested, allow }
}

function start(layout: RunLayout, cfg: Config, partition: number, extra: Partial<PartitionOwnerOptions> = {}): Promise<PartitionOwner> {
  return PartitionOwner.start({ js, jsm, layout, config: cfg, partition, isHeld: () => true, scheduler: new VirtualClock(), ...extra })
}

t.test('the run’s streams: created with the cluster’s settings, again as a no-op, refused when they differ', { skip: natsMissing }, async (t) => {
  const layout = await newRun()
  await createRunStreams(jsm, layout, 1)
  const info = await jsm.streams.info(layout.streams.rollouts)
  t.same(info.config.subjects, [layout.subjects.frames, layout.subjects.partitions])
  t.equal(info.config.allow_direct, true)
  t.equal(info.config.storage, 'file')
  t.equal(info.config.retention, 'limits')
  t.equal(info.config.duplicate_window, DUPLICATE_WINDOW_NS)
  t.same(
    runStreamConfigs(layout, 3).map((c) => [c.name, c.subjects, c.num_replicas]),
    [
      [layout.streams.rollouts, [`ds.${layout.run}.frames`, `ds.${layout.run}.part.*`], 3],
      [layout.streams.groups, [`ds.${layout.run}.groups.*`], 3],
      [layout.streams.batches, [`ds.${layout.run}.batches`], 3],
      [layout.streams.acks, [`ds.${layout.run}.acks`], 3],
    ],
  )
  const clash = runLayout(`po${++runs}`)
  await jsm.streams.add({ name: clash.streams.groups, subjects: [`elsewhere.${clash.run}`] })
  await t.rejects(
    createRunStreams(jsm, clash, 1),
    new RegExp(`^run ${clash.run}: cannot create stream ${clash.streams.groups} \\(1 replicas\\): .*already in use`),
  )
})

t.test('fetchFrame reads a frame by its stream seq, and says what is there instead', { skip: natsMissing }, async (t) => {
  const layout = await newRun()
  const items = itemsFor(0, 1, 2, 'f')
  const frame = await ingest(layout, items, 1)
  t.same(Buffer.from(await fetchFrame(jsm, layout, frame)), wirePackr.pack({ type: 'rollouts', rollouts: items }))
  await t.rejects(fetchFrame(jsm, layout, frame + 1), {
    message: `frame ${frame + 1}: message ${frame + 1} of stream ${layout.streams.rollouts} is on ${layout.subjects.partition(0)}, not ${layout.subjects.frames}`,
  })
  await t.rejects(fetchFrame(jsm, layout, 999), { message: `frame 999: stream ${layout.streams.rollouts} has no message 999 (deleted or purged?)` })
})

t.test('partitionWatermarkInterval: a quarter of the group timeout, within 50 ms to 1 s', async (t) => {
  t.equal(partitionWatermarkInterval(config()), 0)
  t.equal(partitionWatermarkInterval(config({ groupTimeoutMs: 2000 })), 500)
  t.equal(partitionWatermarkInterval(config({ groupTimeoutMs: 100 })), 50)
  t.equal(partitionWatermarkInterval(config({ groupTimeoutMs: 60_000 })), 1000)
})

t.test('an owner publishes every output of its partition’s entries, in order and once, in coalesced messages', { skip: natsMissing }, async (t) => {
  const layout = await newRun()
  const cfg = config({ groupSize: 2 })
  // entries of both partitions in one stream: each owner reads only its own
  for (let f = 0; f < 4; f++) await ingest(layout, [...itemsFor(0, 2, 2, `a${f}`), ...itemsFor(1, 1, 2, `b${f}`), ...itemsFor(1, 1, 1, `c${f}`)], 1000 + f)
  await ingest(layout, itemsFor(0, 1, 1, 'a0'), 2000) // the first rollout of prompt a0-q… again: a duplicate
  const fetched: number[] = []
  const owners = await Promise.all([
    start(layout, cfg, 0, {
      scheduler: undefined,
      frames: async (seq) => (fetched.push(seq), decodePartitionFrame(await fetchFrame(jsm, layout, seq), `frame ${seq}`)),
    }),
    start(layout, cfg, 1, { scheduler: undefined }),
  ])
  for (const p of [0, 1]) {
    const outputs = await outputsOn(layout, cfg, p)
    t.equal(outputs.length, 4 + (1 - p), `partition ${p} outputs for every entry (and for the duplicate)`)
    await caughtUp(owners[p], layout, p)
    const messages = await storedExactly(t, layout, cfg, p)
    // the entries were all there at the start: the first output goes alone, the rest wait for its PubAck and follow in fewer messages
    t.ok(messages.length >= 1 && messages.length <= outputs.length)
    t.equal(owners[p].stats().publishedHere, messages.length)
    t.equal(owners[p].stats().published, messages.length)
    t.equal(owners[p].stats().publishedThrough, outputs.at(-1)!.seq)
  }
  t.equal(owners[0].stats().drops.duplicate, 1)
  t.equal(fetched.length, 5, 'one frame read per rollouts entry')
  const stats = owners[0].stats()
  t.match(stats, { partition: 0, through: await lastEntrySeq(layout, 0), unpublished: 0, appended: { watermarks: 0, policies: 0 }, running: true })
  t.equal(stats.groupsSeq, (await messagesOn(layout.streams.groups, layout.subjects.groups(0))).at(-1)!.seq)
  for (const owner of owners) await owner.stop()
  t.same(await owners[0].ended, { reason: 'stopped' })
  t.equal(owners[0].stats().running, false)
  await owners[0].stop() // twice is harmless
  t.equal((await jsm.consumers.list(layout.streams.rollouts).next()).length, 0, 'the ordered consumers are gone from the server')
})

t.test('entries arriving one at a time while a publish is in flight go out together in the next message', { skip: natsMissing }, async (t) => {
  const layout = await newRun()
  const cfg = config({ groupSize: 2 })
  const { client, requested, allow } = gatedClient()
  const owner = await start(layout, cfg, 0, { js: client })
  await ingest(layout, itemsFor(0, 1, 2, 'c0'), 1)
  await waitFor('the first message asked for', () => requested.length === 1)
  for (let f = 1; f < 4; f++) await ingest(layout, itemsFor(0, 2, 2, `c${f}`), 1 + f)
  await waitFor('three more outputs waiting', () => owner.stats().unpublished === 4)
  t.equal(requested.length, 1, 'one publish in flight at a time')
  allow(2)
  await caughtUp(owner, layout, 0)
  const messages = await storedExactly(t, layout, cfg, 0)
  t.same(
    messages.map((m) => m.groups.length),
    [1, 6],
    'the second message carries the three entries’ groups',
  )
  t.same(requested, messages)
  await owner.stop()
})

t.test(
  'stopped mid-way (a coalesced message stored, outputs computed and never published), then a second owner: together one uninterrupted run',
  { skip: natsMissing },
  async (t) => {
    const layout = await newRun()
    const cfg = config({ groupSize: 2 })
    const { client, requested, allow } = gatedClient()
    const first = await start(layout, cfg, 0, { js: client })
    await ingest(layout, itemsFor(0, 1, 2, 'm0'), 100)
    await waitFor('message 1 asked for', () => requested.length === 1)
    for (let f = 1; f < 4; f++) await ingest(layout, itemsFor(0, 1, 2, `m${f}`), 100 + f)
    await waitFor('three outputs waiting', () => first.stats().unpublished === 4)
    allow()
    await waitFor('message 2 (coalesced) asked for', () => requested.length === 2)
    t.same(
      requested.map((m) => m.groups.length),
      [1, 3],
    )
    for (let f = 4; f < 6; f++) await ingest(layout, itemsFor(0, 1, 2, `m${f}`), 100 + f)
    await waitFor('two more waiting', () => first.stats().unpublished === 5)
    // stopped with message 2 in flight: it is stored, the two outputs after it are not published
    const stopped = first.stop()
    allow(10)
    await stopped
    t.match(first.stats(), { published: 2, publishedHere: 2, unpublished: 2, running: false })
    t.equal(requested.length, 2, 'nothing more asked for once stopped')
    await storedExactly(t, layout, cfg, 0, false)
    for (let f = 6; f < 8; f++) await ingest(layout, itemsFor(0, 1, 2, `m${f}`), 100 + f)
    // the second owner checks message 2 (three entries’ groups) at its entry, then publishes from the entry after it, one entry a message
    const second = await start(layout, cfg, 0, { maxMessageRollouts: 1 })
    await caughtUp(second, layout, 0)
    const messages = await storedExactly(t, layout, cfg, 0)
    t.same(
      messages.map((m) => m.groups.length),
      [1, 3, 1, 1, 1, 1],
    )
    t.equal(second.stats().publishedHere, 4, 'the second one recomputed what the first had published, and published only the rest')
    await second.stop()
    // a third owner has nothing to add (it checks message 6 at its entry, having recomputed more than twice its groups before it)
    const third = await start(layout, cfg, 0)
    await caughtUp(third, layout, 0)
    t.equal(third.stats().publishedHere, 0)
    t.equal(third.stats().published, 6)
    t.equal(third.stats().running, true)
    await third.stop()
    t.equal((await storedExactly(t, layout, cfg, 0)).length, 6)
  },
)

t.test('a new owner resumes after a message that carries only drops', { skip: natsMissing }, async (t) => {
  const layout = await newRun()
  const cfg = config({ groupSize: 2 })
  const first = await start(layout, cfg, 0)
  const items = itemsFor(0, 1, 2, 'dr')
  await ingest(layout, items, 1)
  await caughtUp(first, layout, 0)
  await ingest(layout, items.slice(0, 1), 2) // a duplicate, alone
  await caughtUp(first, layout, 0)
  await first.stop()
  const messages = await storedExactly(t, layout, cfg, 0)
  t.same(
    messages.map((m) => [m.groups.length, m.drops.duplicate]),
    [
      [1, 0],
      [0, 1],
    ],
  )
  await ingest(layout, itemsFor(0, 1, 2, 'dr2'), 3)
  const second = await start(layout, cfg, 0)
  await caughtUp(second, layout, 0)
  t.equal(second.stats().publishedHere, 1)
  await storedExactly(t, layout, cfg, 0)
  await second.stop()
})

t.test('two owners at once (one not yet aware it lost its lease): every output is stored once', { skip: natsMissing }, async (t) => {
  for (const cut of ['the same way', 'differently']) {
    const layout = await newRun()
    const cfg = config({ groupSize: 2 })
    const deposed: string[] = []
    const owners = await Promise.all([
      start(layout, cfg, 0, { onDeposed: (reason) => deposed.push(reason) }),
      start(layout, cfg, 0, { onDeposed: (reason) => deposed.push(reason), maxMessageRollouts: cut === 'the same way' ? undefined : 2 }),
    ])
    for (let f = 0; f < 5; f++) await ingest(layout, itemsFor(0, 2, 2, `d${f}`), f)
    // each owner either catches up (the other's messages were the same) or was refused and says so
    for (const owner of owners) await waitFor('each owner caught up or deposed', async () => !owner.stats().running || (await isCaughtUp(owner, layout, 0)))
    const messages = await storedExactly(t, layout, cfg, 0)
    const running = owners.filter((o) => o.stats().running)
    t.ok(running.length >= 1, `${cut}: one owner at least goes on`)
    t.equal(deposed.length, 2 - running.length)
    for (const reason of deposed) t.match(reason, /refused message \d+ \(wrong last sequence: \d+; expected \d+\): another owner published to it$/)
    t.equal(
      owners[0].stats().publishedHere + owners[1].stats().publishedHere,
      messages.length,
      'the other publish of each message was acknowledged as a duplicate, or refused',
    )
    for (const owner of owners) await owner.stop()
  }
})

t.test('an owner whose coalesced message is in flight when another takes over is refused, and the history stays exact', { skip: natsMissing }, async (t) => {
  const layout = await newRun()
  const cfg = config({ groupSize: 2 })
  const { client, requested, allow } = gatedClient()
  const deposed: string[] = []
  const old = await start(layout, cfg, 0, { js: client, onDeposed: (reason) => deposed.push(reason) })
  for (let f = 0; f < 4; f++) await ingest(layout, itemsFor(0, 1, 2, `k${f}`), 1 + f)
  await waitFor('message 1 in flight, three outputs waiting', () => old.stats().unpublished === 4)
  allow()
  await waitFor('message 2 (three entries’ groups) asked for', () => requested.length === 2)
  t.equal(requested[1].groups.length, 3)
  // the new owner (the lease moved; the old one has not noticed) resumes after message 1 and cuts one entry a message
  const next = await start(layout, cfg, 0, { maxMessageRollouts: 1 })
  await caughtUp(next, layout, 0)
  t.equal(next.stats().publishedHere, 3)
  allow()
  const end = await old.ended
  t.equal(end.reason, 'deposed')
  t.match(deposed, [/refused message 2 \(wrong last sequence: \d+; expected \d+\): another owner published to it$/])
  t.equal(old.stats().publishedHere, 1)
  await ingest(layout, itemsFor(0, 1, 2, 'k4'), 5)
  await caughtUp(next, layout, 0)
  t.same(
    (await storedExactly(t, layout, cfg, 0)).map((m) => m.groups.length),
    [1, 1, 1, 1, 1],
  )
  await old.stop()
  await next.stop()
})

t.test('an owner whose lease is gone publishes nothing more, and says it was deposed', { skip: natsMissing }, async (t) => {
  const layout = await newRun()
  const cfg = config({ groupSize: 2 })
  let held = true
  const deposed: string[] = []
  const owner = await start(layout, cfg, 0, { isHeld: () => held, onDeposed: (reason) => deposed.push(reason) })
  await ingest(layout, itemsFor(0, 1, 2, 'l0'), 1)
  await waitFor('a first message', () => owner.stats().published === 1)
  held = false
  await ingest(layout, itemsFor(0, 1, 2, 'l1'), 2)
  const end = await owner.ended
  t.same(end, { reason: 'deposed', detail: 'partition 0: the lease is no longer held (message 2 not published)' })
  t.same(deposed, [end.reason === 'deposed' && end.detail])
  t.equal((await groupsOn(layout, 0)).length, 1)
  t.equal(owner.stats().running, false)
  await owner.appendPolicyVersion(9) // stopped: nothing appended
  await owner.stop()
  t.same(
    (await entriesOn(layout, 0)).map((e) => e.k),
    ['rollouts', 'rollouts'],
  )
  // without a handler, the same
  held = true
  const quiet = await start(layout, cfg, 0, { isHeld: () => held })
  await caughtUp(quiet, layout, 0)
  t.equal(quiet.stats().published, 2)
  held = false
  await ingest(layout, itemsFor(0, 1, 2, 'l2'), 3)
  t.equal((await quiet.ended).reason, 'deposed')
  await quiet.stop()
})

t.test('a publish refused for a wrong last sequence (another owner wrote) deposes the owner', { skip: natsMissing }, async (t) => {
  const cfg = config({ groupSize: 2 })
  const foreign: GroupsEntry = { p: 0, n: 2, through: 99, groups: [], drops: { stale: 0, duplicate: 0, incompleteGroups: 0, incompleteGroupRollouts: 0 } }
  for (const handler of [true, false]) {
    const layout = await newRun()
    const deposed: string[] = []
    const owner = await start(layout, cfg, 0, handler ? { onDeposed: (reason) => deposed.push(reason) } : {})
    await ingest(layout, itemsFor(0, 1, 2, 'w0'), 1)
    await waitFor('a first message', () => owner.stats().published === 1)
    // another owner's message, unknown to this one
    const { seq } = await js.publish(layout.subjects.groups(0), encodeMessage(foreign))
    await ingest(layout, itemsFor(0, 1, 2, 'w1'), 2)
    const end = await owner.ended
    const detail = `partition 0: ${layout.subjects.groups(0)} refused message 2 (wrong last sequence: ${seq}; expected ${seq - 1}): another owner published to it`
    t.same(end, { reason: 'deposed', detail })
    t.same(deposed, handler ? [detail] : [])
    t.same(
      (await groupsOn(layout, 0)).map((m) => [m.n, m.through]),
      [
        [1, 2],
        [2, 99],
      ],
      'nothing more from the deposed owner',
    )
    await owner.stop()
  }
})

t.test('an owner that computes another message than the stored one it resumes after stops (the owners disagree)', { skip: natsMissing }, async (t) => {
  const zero = { stale: 0, duplicate: 0, incompleteGroups: 0, incompleteGroupRollouts: 0 }
  const cfg = config({ groupSize: 2 })
  const cases: [string, Item[], (computed: GroupsEntry) => GroupsEntry][] = [
    ['without the entry’s groups', itemsFor(0, 1, 2, 'dis'), (m) => ({ ...m, groups: [] })],
    ['other groups', itemsFor(0, 1, 2, 'dis'), (m) => ({ ...m, groups: [{ ...m.groups[0], ts: m.groups[0].ts + 1 }] })],
    ['other drops', itemsFor(0, 1, 2, 'dis'), (m) => ({ ...m, drops: { ...zero, duplicate: 1 } })],
    ['through an entry that outputs nothing', itemsFor(0, 1, 1, 'dis'), () => ({ p: 0, n: 1, through: 2, groups: [], drops: zero })],
  ]
  for (const [what, items, alter] of cases) {
    const layout = await newRun()
    await ingest(layout, items, 1)
    const outputs = await outputsOn(layout, cfg, 0)
    const computed = outputs.length > 0 ? groupsEntryOf(0, 1, outputs) : ({} as GroupsEntry)
    await js.publish(layout.subjects.groups(0), encodeMessage(alter(computed)))
    const owner = await start(layout, cfg, 0)
    const end = await owner.ended
    t.equal(end.reason, 'failed', what)
    t.match(
      (end as { error: Error }).error.message,
      /^partition 0, stream seq 2: message 1 of ds\.po\d+\.groups\.0 \(through this entry\) is not what this owner computes through it: the owners disagree \(a different config or version\?\)$/,
      what,
    )
    t.equal((await groupsOn(layout, 0)).length, 1)
    await owner.stop()
  }
})

t.test('watermark entries on a virtual clock time an incomplete group out', { skip: natsMissing }, async (t) => {
  const layout = await newRun()
  const cfg = config({ groupSize: 4, minGroupSize: 2, groupTimeoutMs: 1000 })
  const clock = new VirtualClock(10_000)
  const owner = await start(layout, cfg, 0, { scheduler: clock })
  const [a, b] = [itemsFor(0, 1, 2, 'to-a'), itemsFor(0, 1, 1, 'to-b')]
  await ingest(layout, [...a, ...b], 10_000)
  await caughtUp(owner, layout, 0)
  t.equal(owner.stats().pendingRollouts, 3)
  // every 250 ms of the clock a watermark is appended, once the previous one is read back
  for (let ts = 10_250; ts <= 11_000; ts += 250) {
    clock.advance(250)
    await waitFor(`the watermark at ${ts} read back`, () => owner.stats().lastTs === ts)
  }
  await waitFor('the timed-out group published', () => owner.stats().published === 1)
  const [message] = await groupsOn(layout, 0)
  t.same(
    message.groups.map((g) => [g.promptId, g.partial, g.ts, g.rollouts.length]),
    [[a[0].promptId, true, 11_000, 2]],
  )
  t.same(message.drops, { stale: 0, duplicate: 0, incompleteGroups: 1, incompleteGroupRollouts: 1 })
  t.same(
    (await entriesOn(layout, 0)).map((e) => [e.k, e.ts]),
    [['rollouts', 10_000], ...[10_250, 10_500, 10_750, 11_000].map((ts) => ['watermark', ts])],
  )
  t.equal(owner.stats().appended.watermarks, 4)
  // nothing waits now: time moves and nothing is appended (the policy entry after it is the next entry)
  clock.advance(1000)
  await owner.appendPolicyVersion(1)
  await caughtUp(owner, layout, 0)
  t.same((await entriesOn(layout, 0)).map((e) => e.k).slice(-2), ['watermark', 'policy'])
  await owner.stop()
})

t.test('no watermark while time has not moved, while the lease is gone, or with no period', { skip: natsMissing }, async (t) => {
  const layout = await newRun()
  const cfg = config({ groupSize: 4, groupTimeoutMs: 1000 })
  const clock = new VirtualClock(0)
  let held = true
  let now = 5_000
  const owner = await start(layout, cfg, 0, { scheduler: clock, now: () => now, isHeld: () => held })
  await ingest(layout, itemsFor(0, 1, 1, 'nw'), 5_000)
  await caughtUp(owner, layout, 0)
  clock.advance(250) // now() is still the entry's time
  held = false
  now = 6_000
  clock.advance(250) // the lease is gone
  held = true
  await owner.appendPolicyVersion(2) // a marker: an entry appended in between would come before it
  await caughtUp(owner, layout, 0)
  t.same(
    (await entriesOn(layout, 0)).map((e) => e.k),
    ['rollouts', 'policy'],
  )
  t.equal(owner.stats().lastTs, 6_000)
  await owner.stop()
  const none = await start(layout, cfg, 0, { scheduler: clock, now: () => now, watermarkIntervalMs: 0 })
  await caughtUp(none, layout, 0)
  now = 9_000
  clock.advance(5_000)
  await none.appendPolicyVersion(3)
  await caughtUp(none, layout, 0)
  t.same(
    (await entriesOn(layout, 0)).map((e) => e.k),
    ['rollouts', 'policy', 'policy'],
  )
  await none.stop()
})

t.test('a watermark that cannot be appended is reported, and the next tick tries again', { skip: natsMissing }, async (t) => {
  const layout = await newRun()
  const cfg = config({ groupSize: 4, groupTimeoutMs: 1000 })
  const clock = new VirtualClock(1_000)
  const errors: unknown[] = []
  const owner = await start(layout, cfg, 0, { scheduler: clock, onError: (error) => errors.push(error) })
  await ingest(layout, itemsFor(0, 1, 1, 'wf'), 1_000)
  await caughtUp(owner, layout, 0)
  // the stream takes no more messages for a while
  const info = await jsm.streams.info(layout.streams.rollouts)
  await jsm.streams.update(layout.streams.rollouts, { ...info.config, max_msgs: info.state.messages, discard: DiscardPolicy.New })
  clock.advance(250)
  await waitFor('the failed append reported', () => errors.length === 1)
  t.match(String(errors[0]), /maximum messages/)
  t.equal(owner.stats().running, true, 'the owner goes on')
  await jsm.streams.update(layout.streams.rollouts, { ...info.config, max_msgs: -1 })
  clock.advance(250)
  await waitFor('the next watermark read back', () => owner.stats().lastTs === 1_500)
  t.equal(owner.stats().appended.watermarks, 1)
  await owner.stop()
  // reported only while running: a failure after stop is not
  const quiet = await start(layout, cfg, 0, { scheduler: clock })
  await caughtUp(quiet, layout, 0)
  await jsm.streams.update(layout.streams.rollouts, {
    ...info.config,
    max_msgs: (await jsm.streams.info(layout.streams.rollouts)).state.messages,
    discard: DiscardPolicy.New,
  })
  clock.advance(250)
  await quiet.stop()
  await jsm.streams.update(layout.streams.rollouts, { ...info.config, max_msgs: -1 })
  t.equal(errors.length, 1)
})

t.test('policy versions: appended once each, newer only, and they make older rollouts stale', { skip: natsMissing }, async (t) => {
  const layout = await newRun()
  const cfg = config({ groupSize: 2, maxStaleness: 1 })
  let held = true
  const owner = await start(layout, cfg, 0, { isHeld: () => held })
  await owner.appendPolicyVersion(5)
  await owner.appendPolicyVersion(5)
  await owner.appendPolicyVersion(4)
  held = false
  await owner.appendPolicyVersion(6)
  held = true
  await ingest(layout, [...itemsFor(0, 1, 2, 'old', { policyVersion: 3 }), ...itemsFor(0, 1, 2, 'ok', { policyVersion: 4 })], 50)
  await waitFor('a message', () => owner.stats().published === 1)
  const [message] = await groupsOn(layout, 0)
  t.equal(message.drops.stale, 2)
  t.same(
    message.groups.map((g) => g.rollouts.map((r) => r.policyVersion)),
    [[4, 4]],
  )
  t.equal(owner.stats().appended.policies, 1)
  await owner.stop()
  // a new owner learns the partition's version from its entries: nothing to append again
  const next = await start(layout, cfg, 0)
  await caughtUp(next, layout, 0)
  await next.appendPolicyVersion(5)
  t.equal(next.stats().appended.policies, 0)
  t.same(
    (await entriesOn(layout, 0)).filter((e) => e.k === 'policy').map((e) => (e as { version: number }).version),
    [5],
  )
  await next.stop()
})

t.test('start refuses a groups subject whose last message is not a groups entry, or is through no entry of the partition', { skip: natsMissing }, async (t) => {
  const layout = await newRun()
  await js.publish(layout.subjects.groups(0), new Uint8Array([0xa5, 0x61]))
  await t.rejects(start(layout, config(), 0), {
    message: `partition 0: the last message on ${layout.subjects.groups(0)} (stream seq 1) is not a groups entry: cannot tell where its owner stopped`,
  })
  const zero = { stale: 0, duplicate: 0, incompleteGroups: 0, incompleteGroupRollouts: 0 }
  const foreign: unknown[] = [
    { n: 1 },
    { n: 1, through: 2 },
    { n: 0, through: 2, groups: [] },
    { n: 1, through: 0, groups: [] },
    { n: 1.5, through: 2, groups: [] },
  ]
  for (const [k, message] of foreign.entries()) {
    await js.publish(layout.subjects.groups(1), wirePackr.pack(message))
    await t.rejects(
      start(layout, config(), 1),
      new RegExp(`partition 1: the last message on .* \\(stream seq ${k + 2}\\) is not a groups entry`),
      JSON.stringify(message),
    )
  }
  // through an entry the partition does not have: past the stream's end, a frame, another partition's entry
  await ingest(layout, itemsFor(1, 1, 2, 'nt'), 1)
  for (const [through, p] of [
    [99, 2],
    [1, 3],
    [2, 4],
  ]) {
    await js.publish(layout.subjects.groups(p), encodeMessage({ p, n: 3, through, groups: [], drops: zero }))
    await t.rejects(
      start(layout, config(), p),
      new RegExp(
        `^partition ${p}: the last message on ds\\.po\\d+\\.groups\\.${p} \\(stream seq \\d+, message 3\\) is through stream seq ${through}, which is not an entry of ds\\.po\\d+\\.part\\.${p}: it was not computed from this partition$`,
      ),
    )
  }
})

t.test('unreadable input stops the owner with where it is', { skip: natsMissing }, async (t) => {
  const cases: [string, (layout: RunLayout) => Promise<unknown>, RegExp][] = [
    [
      'bytes that are not MessagePack',
      (l) => js.publish(l.subjects.partition(0), new Uint8Array([0xa5, 0x61])),
      /^partition 0, stream seq 1: not MessagePack \(/,
    ],
    [
      'a map that is not an entry',
      (l) => js.publish(l.subjects.partition(0), wirePackr.pack({ k: 'rollouts', ts: 1 })),
      /^partition 0, stream seq 1: not a partition entry: frame must be/,
    ],
    [
      'an entry whose frame is not a frame',
      (l) => js.publish(l.subjects.partition(0), encodeMessage({ k: 'rollouts', frame: 1, items: [0], ts: 1 })),
      /^partition 0, stream seq 1, frame 1: message 1 of stream .* is on ds\.po\d+\.part\.0, not ds\.po\d+\.frames$/,
    ],
    [
      'a frame that is not a rollouts frame',
      async (l) => {
        const { seq } = await js.publish(l.subjects.frames, wirePackr.pack({ type: 'hello' }))
        await js.publish(l.subjects.partition(0), encodeMessage({ k: 'rollouts', frame: seq, items: [0], ts: 1 }))
      },
      /^partition 0, stream seq 2, frame 1: not a rollouts frame/,
    ],
    [
      'an item that is not a rollout',
      async (l) => {
        const { seq } = await js.publish(l.subjects.frames, wirePackr.pack({ rollouts: [{ id: 'x' }] }))
        await js.publish(l.subjects.partition(0), encodeMessage({ k: 'rollouts', frame: seq, items: [0], ts: 1 }))
      },
      /^partition 0, stream seq 2, frame 1, item 0: not a valid rollout: rollout "x": promptId/,
    ],
  ]
  for (const [what, write, message] of cases) {
    const layout = await newRun()
    const errors: unknown[] = []
    const owner = await start(layout, config(), 0, { onError: (error) => errors.push(error) })
    await write(layout)
    const end = await owner.ended
    t.equal(end.reason, 'failed', what)
    t.match((end as { error: Error }).error.message, message, what)
    t.same(errors, [(end as { error: unknown }).error])
    await owner.stop()
  }
  // read with the entries before it prefetched: those are fed and published first, nothing after it
  const layout = await newRun()
  const cfg = config({ groupSize: 2 })
  for (let f = 0; f < 3; f++) await ingest(layout, itemsFor(0, 1, 2, `u${f}`), f)
  const bad = (await js.publish(layout.subjects.partition(0), new Uint8Array([0xa5, 0x61]))).seq
  await ingest(layout, itemsFor(0, 1, 2, 'u3'), 3)
  const owner = await start(layout, cfg, 0)
  const end = await owner.ended
  t.match((end as { error: Error }).error.message, new RegExp(`^partition 0, stream seq ${bad}: not MessagePack`))
  t.equal(owner.stats().through, bad - 1, 'fed up to the entry before it')
  await owner.stop()
  const published = await groupsOn(layout, 0)
  t.ok(published.length >= 1 && published.at(-1)!.through < bad, 'what was published is from before it')
})

t.test('a publish that fails otherwise stops the owner (reported, not retried)', { skip: natsMissing }, async (t) => {
  const layout = await newRun()
  const info = await jsm.streams.info(layout.streams.groups)
  await jsm.streams.update(layout.streams.groups, { ...info.config, max_msgs: 1, discard: DiscardPolicy.New })
  const errors: unknown[] = []
  const owner = await start(layout, config({ groupSize: 2 }), 0, { onError: (error) => errors.push(error) })
  await ingest(layout, itemsFor(0, 1, 2, 'pf'), 1)
  await waitFor('a first message', () => owner.stats().published === 1)
  await ingest(layout, itemsFor(0, 1, 2, 'pf2'), 2)
  const end = await owner.ended
  t.equal(end.reason, 'failed')
  t.same(errors, [(end as { error: unknown }).error])
  t.match(String(errors[0]), /maximum messages exceeded/)
  await owner.stop()
})

t.test(
  'stopped while reading a frame: nothing more is fed or published, not even what was already delivered and prefetched',
  { skip: natsMissing },
  async (t) => {
    for (const prefetch of [undefined, 0]) {
      const layout = await newRun()
      for (let f = 0; f < 3; f++) await ingest(layout, itemsFor(0, 1, 2, `s${f}`), f)
      let release!: () => void
      const gate = new Promise<void>((resolve) => (release = resolve))
      const asked: number[] = []
      const { frames: cached } = framesOf(layout)
      const frames: FrameSource = async (seq) => {
        asked.push(seq)
        await gate
        return cached(seq)
      }
      const owner = await start(layout, config({ groupSize: 2 }), 0, { frames, prefetch })
      // every entry delivered to this client (the server says so; a round trip on the connection makes sure it has read them)
      const last = await lastEntrySeq(layout, 0)
      await waitFor('every entry delivered', async () => (await jsm.consumers.list(layout.streams.rollouts).next())[0]?.delivered.stream_seq === last)
      await nc.flush()
      // their frames asked for ahead (all held up); with no prefetch, the first one's only
      const expected = prefetch === 0 ? [1] : [1, 3, 5]
      await waitFor(`frames ${expected.join(', ')} asked for`, () => asked.length === expected.length)
      const stopped = owner.stop()
      release()
      await stopped
      t.same(asked, expected, 'nothing more asked for')
      t.same(await owner.ended, { reason: 'stopped' })
      t.equal(owner.stats().through, 0)
      t.same(await groupsOn(layout, 0), [])
    }
  },
)

t.test('frames are requested ahead of the entry fed, at most `prefetch` entries ahead', { skip: natsMissing }, async (t) => {
  const layout = await newRun()
  const cfg = config({ groupSize: 2 })
  for (let f = 0; f < 6; f++) await ingest(layout, itemsFor(0, 1, 2, `pf${f}`), f)
  let release!: () => void
  const gate = new Promise<void>((resolve) => (release = resolve))
  const asked: number[] = []
  const { frames: cached } = framesOf(layout)
  // the first frame held: the owner cannot feed, and asks for the frames after it meanwhile
  const frames: FrameSource = async (seq) => {
    asked.push(seq)
    if (asked.length === 1) await gate
    return cached(seq)
  }
  const owner = await start(layout, cfg, 0, { frames, prefetch: 2 })
  await waitFor('three frames asked for: the one being fed and two ahead', () => asked.length === 3)
  t.same(asked, [1, 3, 5])
  t.equal(owner.stats().through, 0)
  release()
  await caughtUp(owner, layout, 0)
  t.same(
    asked,
    Array.from({ length: 6 }, (_, f) => 1 + 2 * f),
  )
  await storedExactly(t, layout, cfg, 0)
  await owner.stop()
})

t.test(
  'messages are cut at most `maxMessageRollouts` and `maxMessageBytes`, and feeding waits while a message’s worth waits',
  { skip: natsMissing },
  async (t) => {
    const cfg = config({ groupSize: 2 })
    for (const limits of [{ maxMessageRollouts: 3 }, { maxMessageBytes: 1 }]) {
      const layout = await newRun()
      const { client, requested, allow } = gatedClient()
      const { frames, fetched } = framesOf(layout)
      const owner = await start(layout, cfg, 0, { js: client, frames, ...limits })
      for (let f = 0; f < 6; f++) await ingest(layout, itemsFor(0, 1, 2, `cut${f}`), f)
      await waitFor('message 1 asked for', () => requested.length === 1)
      if (limits.maxMessageRollouts !== undefined) {
        // entry 1 in flight, entries 2 and 3 waiting (4 rollouts, over 3): entry 4 is not fed until a publish returns
        await waitFor('every frame asked for', () => fetched.length === 6)
        await waitFor('two outputs waiting', () => owner.stats().unpublished === 3)
        for (let k = 0; k < 20; k++) await new Promise((resolve) => setImmediate(resolve))
        t.equal(owner.stats().through, 6, 'fed through entry 3 only')
      }
      allow(100)
      await caughtUp(owner, layout, 0)
      const messages = await storedExactly(t, layout, cfg, 0)
      // 2 rollouts an entry: over 3 rollouts, or over the byte limit, a message carries one entry’s groups
      t.same(
        messages.map((m) => m.groups.length),
        [1, 1, 1, 1, 1, 1],
      )
      t.equal(messages.length, requested.length)
      await owner.stop()
    }
  },
)

t.test('a publish refused after the owner was stopped is not reported (the partition may have a new owner by then)', { skip: natsMissing }, async (t) => {
  const layout = await newRun()
  let release!: () => void
  const gate = new Promise<void>((resolve) => (release = resolve))
  let publishing = 0
  // the real client, its publishes held until the gate opens (so that the stop comes first)
  const held = Object.create(js, {
    publish: {
      value: async (...args: Parameters<JetStreamClient['publish']>) => {
        publishing++
        await gate
        return js.publish(...args)
      },
    },
  }) as JetStreamClient
  const deposed: string[] = []
  const errors: unknown[] = []
  const owner = await start(layout, config({ groupSize: 2 }), 0, {
    js: held,
    onDeposed: (reason) => deposed.push(reason),
    onError: (error) => errors.push(error),
  })
  await ingest(layout, itemsFor(0, 1, 2, 'x0'), 1)
  await waitFor('a publish under way', () => publishing === 1)
  await js.publish(
    layout.subjects.groups(0),
    encodeMessage({ p: 0, n: 1, through: 2, groups: [], drops: { stale: 0, duplicate: 0, incompleteGroups: 0, incompleteGroupRollouts: 0 } }),
  )
  const stopped = owner.stop()
  release()
  await stopped
  t.same(await owner.ended, { reason: 'stopped' })
  t.same(deposed, [])
  t.same(errors, [])
  t.equal((await groupsOn(layout, 0)).length, 1, 'only the other owner’s message')
})

t.test('an owner whose connection closes stops, saying its consumer cannot be opened again', { skip: natsMissing }, async (t) => {
  const layout = await newRun()
  const own = await connect({ servers: nats.urls })
  const owner = await PartitionOwner.start({ js: jetstream(own), jsm: await jetstreamManager(own), layout, config: config(), partition: 0, isHeld: () => true })
  await own.close()
  const end = await owner.ended
  t.equal(end.reason, 'failed')
  t.equal(
    (end as { error: Error }).error.message,
    `partition 0: the consumer of ${layout.subjects.partition(0)} (stream ${layout.streams.rollouts}) cannot be opened again: closed connection`,
  )
  await owner.stop()
})

t.test('outputs of drops alone (no rollouts) also hold feeding once as many entries’ outputs wait', { skip: natsMissing }, async (t) => {
  const cfg = config({ groupSize: 2 })
  const layout = await newRun()
  const { client, requested, allow } = gatedClient()
  const { frames, fetched } = framesOf(layout)
  const owner = await start(layout, cfg, 0, { js: client, frames, maxMessageRollouts: 2 })
  const items = itemsFor(0, 1, 2, 'dup')
  // a group, then three frames of one rollout already seen each (duplicates; beside another partition's, so that no two frames are the same bytes)
  for (let f = 0; f < 4; f++) await ingest(layout, f === 0 ? items : [...items.slice(f % 2, 1 + (f % 2)), ...itemsFor(1, 1, 1, `other${f}`)], f)
  const seqs = (await messagesOn(layout.streams.rollouts, layout.subjects.partition(0))).map((m) => m.seq)
  await waitFor('message 1 asked for', () => requested.length === 1)
  await waitFor('every frame asked for', () => fetched.length === 4)
  await waitFor('two outputs of drops waiting', () => owner.stats().unpublished === 3)
  for (let k = 0; k < 20; k++) await new Promise((resolve) => setImmediate(resolve))
  t.equal(owner.stats().through, seqs[2], 'fed through entry 3 only')
  allow(100)
  await caughtUp(owner, layout, 0)
  t.same(
    (await storedExactly(t, layout, cfg, 0)).map((m) => [m.groups.length, m.drops.duplicate]),
    [
      [1, 0],
      [0, 2],
      [0, 3],
    ],
  )
  await owner.stop()
})
