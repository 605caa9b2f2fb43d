/**
 * The sequencer against a real nats-server: it turns a GROUPS stream into the steps the pure
 * SequencerState makes of it, each BATCHES message byte for byte what its steps make (where it
 * cuts them depends on when its publishes return); one stopped in the middle and another
 * started after it leave the same steps as an uninterrupted run; a deposed one and one
 * without its lease publish nothing; the watermark timer ends a batch's wait through the
 * stream; errors stop it and are reported.
 */
import t, { type Test } from 'tap'
import { DiscardPolicy, jetstream, jetstreamManager, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream'
import { connect, type NatsConnection } from '@nats-io/transport-node'
import { benchSequencer, syntheticGroupsEntries } from '../../src/apps/bench/sequencerBench.js'
import { benchConfig } from '../../src/apps/bench/core.js'
import { parseConfig, type Config, type ConfigInput } from '../../src/core/config.js'
import {
  batchesMessages,
  decodeBatchesMessage,
  decodeMessage,
  emptyDropCounts,
  encodeMessage,
  type BatchEntry,
  type GroupMessage,
  type GroupsEntry,
  type GroupsWatermark,
} from '../../src/state/cluster/messages.js'
import { runLayout, type RunLayout } from '../../src/state/cluster/runLayout.js'
import { createRunStreams } from '../../src/state/cluster/runStreams.js'
import { Sequencer, type SequencerOptions } from '../../src/state/cluster/sequencer.js'
import { SequencerState } from '../../src/state/cluster/sequencerState.js'
import { wirePackr } from '../../src/state/codec.js'
import { natsMissing, startNats, waitFor, type NatsServers } from '../support/natsServers.js'
import { VirtualClock } from '../support/virtualTime.js'

type GroupsMessage = GroupsEntry | GroupsWatermark

function configOf(overrides: Partial<ConfigInput> = {}): Config {
  return parseConfig({
    groupSize: 2,
    batchGroups: 3,
    objectives: [{ channel: 'acc' }],
    constraints: [{ channel: 'consistency', sense: '>=', threshold: 0.8, sampleThreshold: 0.5, window: 2, dual: { rule: 'sgd', lr: 0.1 } }],
    ...overrides,
  })
}

/** A group of two rollouts at event time `ts`, the first with a payload by reference. */
function groupOf(name: string, ts: number, k: number): GroupMessage {
  return {
    promptId: name,
    partial: false,
    ts,
    rollouts: [
      { id: `${name}-a`, promptId: name, rewards: { acc: k % 2, consistency: 1 }, ts: ts - 1, seq: 2 * k, ref: [k + 1, 0, 1] },
      { id: `${name}-b`, promptId: name, rewards: { acc: (k >> 1) % 2, consistency: k % 3 === 0 ? 0 : 1 }, ts, seq: 2 * k + 1 },
    ],
  }
}

/** A GROUPS stream of three partitions: entries of 0 to 7 groups (so batches of 3 close inside entries), drops growing. */
function groupsStream(entries: number): GroupsMessage[] {
  const out: GroupsMessage[] = []
  const n = [0, 0, 0]
  let k = 0
  for (let i = 0; i < entries; i++) {
    const p = (i * 5) % 3
    const groups = Array.from({ length: (i * 7 + p) % 8 }, () => groupOf(`g${k}`, 10 * k, k++))
    n[p]++
    out.push({ p, n: n[p], through: 2 * n[p], groups, drops: { ...emptyDropCounts(), stale: i, incompleteGroups: n[p] } })
  }
  return out
}

/**
 * What the pure state makes of the whole stream: the steps an uninterrupted run must hold, the
 * last step made once each GROUPS message is fed, and the groups left waiting.
 */
function expectedBatches(
  config: Config,
  messages: readonly GroupsMessage[],
): { entries: BatchEntry[]; steps: number; stepAfter: number[]; pendingGroups: number } {
  const state = new SequencerState(config)
  const entries: BatchEntry[] = []
  const stepAfter = messages.map((m, i) => {
    entries.push(...state.feed(i + 1, m))
    return entries.length
  })
  return { entries, steps: entries.length, stepAfter, pendingGroups: state.pendingGroups }
}

/**
 * What BATCHES holds must be the steps of `expected` (the first `through` of them), each once, in
 * order, and each message exactly what its steps make (`batchesMessages`): the sequencer cuts its
 * messages where its publishes returned, so where is not checked. Returns the messages' last steps.
 */
function checkBatches(t: Test, batches: readonly string[], expected: { entries: BatchEntry[] }, through = expected.entries.length, what = 'BATCHES'): number[] {
  const wrong: string[] = []
  const lastSteps: number[] = []
  let next = 1
  for (const [k, b] of batches.entries()) {
    const bytes = Buffer.from(b, 'base64')
    const held = decodeBatchesMessage(bytes)
    const first = held[0].step
    const last = held[held.length - 1].step
    if (first !== next) wrong.push(`message ${k + 1} starts at step ${first}, ${next} expected`)
    const made = batchesMessages(expected.entries.slice(first - 1, last))
    if (made.length !== 1 || !Buffer.from(made[0].bytes).equals(bytes)) wrong.push(`message ${k + 1} (steps ${first}–${last}) is not what its steps make`)
    lastSteps.push(last)
    next = last + 1
  }
  t.same(wrong, [], `${what}: each message what its steps make`)
  t.equal(next - 1, through, `${what}: steps 1–${through}, each once`)
  return lastSteps
}

interface Run {
  layout: RunLayout
  js: JetStreamClient
  jsm: JetStreamManager
  publishGroups(messages: readonly GroupsMessage[]): Promise<void>
  /** Every message of BATCHES, base64. */
  batches(): Promise<string[]>
  start(options?: Partial<SequencerOptions>): Promise<Sequencer>
}

let nats: NatsServers
let nc: NatsConnection
let runs = 0

t.before(async () => {
  if (natsMissing) return
  nats = await startNats()
  nc = await connect({ servers: nats.urls })
})
t.teardown(async () => {
  await nc?.close()
  await nats?.stop()
})

/** A fresh run with its streams; its sequencers are stopped at the end of the test. */
async function freshRun(t: Test, config: Config): Promise<Run> {
  const js = jetstream(nc)
  const jsm = await jetstreamManager(nc)
  const layout = runLayout(`seq${++runs}`)
  await createRunStreams(jsm, layout, 1)
  const started: Sequencer[] = []
  t.teardown(async () => {
    for (const s of started) await s.stop()
  })
  return {
    layout,
    js,
    jsm,
    async publishGroups(messages) {
      for (const m of messages) await js.publish('wm' in m ? layout.subjects.groupsWatermark : layout.subjects.groups(m.p), encodeMessage(m))
    },
    async batches() {
      const info = await jsm.streams.info(layout.streams.batches)
      const out: string[] = []
      for (let seq = 1; seq <= info.state.last_seq; seq++)
        out.push(Buffer.from((await jsm.streams.getMessage(layout.streams.batches, { seq }))!.data).toString('base64'))
      return out
    },
    async start(options = {}) {
      const sequencer = await Sequencer.start({
        js,
        jsm,
        layout,
        config,
        isHeld: () => true,
        onError: (e) => t.fail(`unexpected error: ${(e as Error).message}`),
        ...options,
      })
      started.push(sequencer)
      return sequencer
    },
  }
}

t.test('an uninterrupted run: BATCHES holds what the pure state makes of GROUPS, byte for byte', { skip: natsMissing }, async (t) => {
  const config = configOf()
  const messages = groupsStream(40)
  const expected = expectedBatches(config, messages)
  t.ok(expected.steps > 20)
  const run = await freshRun(t, config)
  await run.publishGroups(messages)
  const seen: number[] = []
  const sequencer = await run.start({ onBatch: (entry) => seen.push(entry.step) })
  await waitFor('every batch published', () => sequencer.stats().step === expected.steps)
  const lastSteps = checkBatches(t, await run.batches(), expected)
  // the stream was there at once: steps made while a publish was in flight went together
  t.ok(
    lastSteps.length < expected.stepAfter.filter((step, i) => step > (expected.stepAfter[i - 1] ?? 0)).length,
    `${expected.steps} steps in ${lastSteps.length} messages`,
  )
  t.same(
    seen,
    Array.from({ length: expected.steps }, (_, i) => i + 1),
  )
  t.ok(expected.pendingGroups > 0)
  t.same(sequencer.stats(), { step: expected.steps, resumeFrom: messages.length + 1, pendingGroups: expected.pendingGroups })
})

t.test('stopped mid-run, another takes over: the same steps as an uninterrupted run, no step twice', { skip: natsMissing }, async (t) => {
  const config = configOf()
  const messages = groupsStream(40)
  const expected = expectedBatches(config, messages)
  // the first sequencer given the first k GROUPS messages only: it stops after their last step,
  // which leaves groups of message k waiting for those that come next (a successor resumes inside it)
  const inside = expected.stepAfter.flatMap((step, i) => (step > 0 && expected.entries[step - 1].resumeFrom === i + 1 ? [i + 1] : []))
  t.ok(inside.length >= 2, 'batches close inside GROUPS messages, leaving some of their groups waiting')
  for (const k of [inside[0], inside[1], inside[Math.floor(inside.length / 2)]]) {
    const run = await freshRun(t, config)
    await run.publishGroups(messages.slice(0, k))
    const first = await run.start()
    await waitFor(`the steps of the first ${k} GROUPS messages`, () => first.stats().step === expected.stepAfter[k - 1])
    await first.stop()
    checkBatches(t, await run.batches(), expected, expected.stepAfter[k - 1], `after ${k} GROUPS messages`)
    await run.publishGroups(messages.slice(k))
    const second = await run.start()
    t.equal(second.stats().step, expected.stepAfter[k - 1], 'the second resumes after the last step on BATCHES')
    await waitFor('the rest published', () => second.stats().step === expected.steps)
    checkBatches(t, await run.batches(), expected, expected.steps, `taken over inside GROUPS message ${k}`)
  }
  // stopped at any step, with the whole stream there: the publish in flight lands, the rest is the successor's
  for (const { stopAfter, publishWindow } of [
    { stopAfter: 2, publishWindow: undefined },
    { stopAfter: Math.floor(expected.steps / 2), publishWindow: 4 },
    { stopAfter: expected.steps - 5, publishWindow: undefined },
  ]) {
    const run = await freshRun(t, config)
    await run.publishGroups(messages)
    let first: Sequencer | undefined
    const stopped = new Promise<void>((resolve) => {
      void run
        .start({
          publishWindow,
          onBatch: (entry) => {
            if (entry.step === stopAfter) void first!.stop().then(resolve)
          },
        })
        .then((s) => (first = s))
    })
    await stopped
    const reached = first!.stats().step
    t.ok(reached >= stopAfter, `the first sequencer stopped after step ${reached}`)
    const lastSteps = checkBatches(t, await run.batches(), expected, reached, `stopped after step ${stopAfter}`)
    t.equal(lastSteps.at(-1), reached, 'at the end of a message')
    const second = await run.start({ publishWindow })
    t.equal(second.stats().step, reached, 'the second resumes after the last step on BATCHES')
    await waitFor('the rest published', () => second.stats().step === expected.steps)
    checkBatches(t, await run.batches(), expected, expected.steps, `taken over after step ${reached}`)
  }
})

t.test('steps waiting for a publish are bounded: past the bound, reading waits', { skip: natsMissing }, async (t) => {
  const config = configOf({ batchGroups: 1 })
  const messages = groupsStream(40)
  const expected = expectedBatches(config, messages)
  const run = await freshRun(t, config)
  await run.publishGroups(messages)
  const sequencer = await run.start({ maxWaitingSteps: 2 })
  await waitFor('every batch published', () => sequencer.stats().step === expected.steps)
  const lastSteps = checkBatches(t, await run.batches(), expected)
  // a message holds what waited (fewer than 2 steps) and what the GROUPS message read then made
  const mostPerGroupsMessage = Math.max(...expected.stepAfter.map((step, i) => step - (expected.stepAfter[i - 1] ?? 0)))
  const sizes = lastSteps.map((last, k) => last - (lastSteps[k - 1] ?? 0))
  t.ok(Math.max(...sizes) <= 1 + mostPerGroupsMessage, `messages of ${Math.min(...sizes)}–${Math.max(...sizes)} steps`)
})

t.test('GROUPS published while the sequencer runs: it follows, and a watermark entry closes nothing without maxWait', { skip: natsMissing }, async (t) => {
  const config = configOf()
  const messages = [...groupsStream(12), { wm: 1e9 }]
  const expected = expectedBatches(config, messages)
  const run = await freshRun(t, config)
  const sequencer = await run.start()
  await run.publishGroups(messages.slice(0, 5))
  await run.publishGroups(messages.slice(5))
  await waitFor('caught up', () => sequencer.stats().resumeFrom === messages.length + 1 && sequencer.stats().step === expected.steps)
  checkBatches(t, await run.batches(), expected)
})

t.test('a deposed sequencer (BATCHES moved on without it) is told so and publishes nothing more', { skip: natsMissing }, async (t) => {
  const config = configOf()
  const messages = groupsStream(30)
  const expected = expectedBatches(config, messages)
  const prefix = expected.stepAfter[14]
  const run = await freshRun(t, config)
  await run.publishGroups(messages.slice(0, 15))
  let deposed: string | undefined
  const published: number[] = []
  // a window of 4: the burst below is published in several messages at once
  const sequencer = await run.start({ publishWindow: 4, onDeposed: (reason) => (deposed = reason), onBatch: (e) => published.push(e.step) })
  await waitFor('the first half published', () => sequencer.stats().step === prefix && sequencer.stats().resumeFrom === 16)
  const before = (await run.batches()).length
  // another sequencer (that this one does not know of) publishes; then GROUPS grows by a burst,
  // so that the next steps are published in several messages at once: the first expects the
  // stream's last sequence to be this sequencer's previous message's, and is refused; the one
  // after it expects the refused one's, and is refused too (reported once)
  await run.js.publish(run.layout.subjects.batches, new TextEncoder().encode('foreign'))
  await Promise.all(messages.slice(15).map((m) => run.js.publish(run.layout.subjects.groups((m as GroupsEntry).p), encodeMessage(m))))
  await waitFor('deposed', () => deposed)
  t.match(deposed, new RegExp(`${run.layout.streams.batches} moved on without this sequencer \\(step ${prefix + 1} expected last sequence ${before}\\)`))
  t.ok(expected.steps > prefix)
  const batches = await run.batches()
  checkBatches(t, batches.slice(0, -1), expected, prefix)
  t.equal(Buffer.from(batches.at(-1)!, 'base64').toString(), 'foreign', 'nothing after the foreign message')
  t.equal(sequencer.stats().step, prefix)
  t.same(
    published,
    Array.from({ length: prefix }, (_, i) => i + 1),
  )
})

t.test('without its lease a sequencer publishes nothing and says why', { skip: natsMissing }, async (t) => {
  const config = configOf()
  const messages = groupsStream(10)
  const run = await freshRun(t, config)
  await run.publishGroups(messages)
  let deposed: string | undefined
  await run.start({ isHeld: () => false, onDeposed: (reason) => (deposed = reason) })
  await waitFor('deposed', () => deposed)
  t.equal(deposed, `the sequencer lease of run ${run.layout.run} is not held: step 1 not published`)
  t.same(await run.batches(), [])
})

t.test('the watermark timer: a waiting batch closes when the time it appends to GROUPS comes back', { skip: natsMissing }, async (t) => {
  const config = configOf({ batchGroups: 10, batchMaxWaitMs: 100 })
  const run = await freshRun(t, config)
  const clock = new VirtualClock(0)
  let held = true
  const batches: BatchEntry[] = []
  const sequencer = await run.start({ scheduler: clock, isHeld: () => held, onBatch: (e) => batches.push(e) })
  clock.advance(25) // nothing waits: no watermark
  await run.publishGroups([{ p: 0, n: 1, through: 1, groups: [groupOf('a', 50, 0), groupOf('b', 50, 1)], drops: emptyDropCounts() }])
  await waitFor('the groups wait', () => sequencer.stats().pendingGroups === 2)
  clock.advance(25) // at 50: event time has not moved past the groups
  held = false
  clock.advance(25) // at 75: moved, but the lease is not held
  held = true
  clock.advance(50) // at 100: appended (the tick at 125 finds it still in flight)
  await waitFor('the watermark fed', () => sequencer.stats().resumeFrom === 3)
  const wm = await run.jsm.streams.getMessage(run.layout.streams.groups, { seq: 2 })
  t.same(decodeMessage(wm!.data), { wm: 100 })
  t.same(batches, [], '100 is before the batch’s deadline (150)')
  await waitFor('the batch closed by a later watermark', () => {
    clock.advance(25)
    return batches.length === 1
  })
  t.match(batches[0], { step: 1, summary: { groups: 2 } })
  t.ok(batches[0].watermark >= 150)
  t.same(await run.batches(), [Buffer.from(batchesMessages(batches)[0].bytes).toString('base64')])
  t.same(sequencer.stats(), { step: 1, resumeFrom: batches[0].resumeFrom, pendingGroups: 0 })
})

t.test('a watermark that cannot be appended is reported; the sequencer goes on', { skip: natsMissing }, async (t) => {
  const config = configOf({ batchGroups: 10, batchMaxWaitMs: 100 })
  const run = await freshRun(t, config)
  await run.publishGroups([{ p: 0, n: 1, through: 1, groups: [groupOf('a', 50, 0)], drops: emptyDropCounts() }])
  // GROUPS full: the watermark is refused
  const info = await run.jsm.streams.info(run.layout.streams.groups)
  await run.jsm.streams.update(run.layout.streams.groups, { ...info.config, max_msgs: 1, discard: DiscardPolicy.New })
  const clock = new VirtualClock(0)
  const errors: unknown[] = []
  const sequencer = await run.start({ scheduler: clock, now: () => 1000 + clock.now(), onError: (e) => errors.push(e) })
  await waitFor('the group waits', () => sequencer.stats().pendingGroups === 1)
  await waitFor('the refusal reported', () => {
    clock.advance(25)
    return errors.length > 0
  })
  t.match((errors[0] as Error).message, /maximum messages/)
  t.same(sequencer.stats(), { step: 0, resumeFrom: 2, pendingGroups: 1 })
})

t.test('a GROUPS message that cannot be read stops the sequencer with the error', { skip: natsMissing }, async (t) => {
  const config = configOf({ batchGroups: 1 })
  const run = await freshRun(t, config)
  await run.publishGroups([{ p: 0, n: 1, through: 1, groups: [groupOf('fine', 1, 1)], drops: emptyDropCounts() }])
  // a message of another version: groups as maps, not columns
  await run.js.publish(run.layout.subjects.groups(0), wirePackr.pack({ p: 0, n: 2, through: 2, groups: [groupOf('old', 1, 0)], drops: emptyDropCounts() }))
  let error: Error | undefined
  const sequencer = await run.start({ onError: (e) => (error = e as Error) })
  await waitFor('the error', () => error)
  t.match(error!.message, /not a GROUPS message of this dualstream version: neither a watermark nor a groups entry with columns/)
  t.equal(sequencer.stats().step, 1, 'the batch before it was published')
  t.equal((await run.batches()).length, 1)
})

t.test('a publish refused for another reason than the sequence is an error, not a deposition', { skip: natsMissing }, async (t) => {
  const config = configOf({ batchGroups: 1 })
  const run = await freshRun(t, config)
  const info = await run.jsm.streams.info(run.layout.streams.batches)
  await run.jsm.streams.update(run.layout.streams.batches, { ...info.config, max_msg_size: 64 })
  await run.publishGroups(groupsStream(4))
  let error: Error | undefined
  let deposed: string | undefined
  await run.start({ onError: (e) => (error = e as Error), onDeposed: (r) => (deposed = r) })
  await waitFor('the error', () => error)
  t.match(error!.message, /message size exceeds maximum/)
  t.equal(deposed, undefined)
  t.same(await run.batches(), [])
})

t.test('start refuses a BATCHES stream whose last message is gone, or not a BATCHES message of this version', { skip: natsMissing }, async (t) => {
  const config = configOf()
  const run = await freshRun(t, config)
  await run.js.publish(run.layout.subjects.batches, encodeMessage({ k: 'watermark', ts: 1 }))
  await t.rejects(run.start(), {
    name: 'BatchesMessageError',
    message: `${run.layout.streams.batches} seq 1 is not a BATCHES message of this dualstream version: no "steps" array of batch entries`,
  })
  await run.jsm.streams.deleteMessage(run.layout.streams.batches, 1)
  await t.rejects(run.start(), new RegExp(`${run.layout.streams.batches} has no message at its last sequence 1`))
})

t.test('by default the watermarks come from the wall clock: a batch waiting on maxWait closes in real time', { skip: natsMissing }, async (t) => {
  const config = configOf({ batchGroups: 10, batchMaxWaitMs: 40 })
  const run = await freshRun(t, config)
  const ts = Date.now()
  await run.publishGroups([{ p: 0, n: 1, through: 1, groups: [groupOf('a', ts, 0)], drops: emptyDropCounts() }])
  const batches: BatchEntry[] = []
  await run.start({ onBatch: (e) => batches.push(e) })
  await waitFor('the batch closed by the wall clock', () => batches.length === 1)
  t.match(batches[0], { step: 1, summary: { groups: 1 } })
  t.ok(batches[0].watermark >= ts + 40)
})

t.test('the sequencer bench: a prepared GROUPS stream, the full batches it makes, and the pure steps timed apart', { skip: natsMissing }, async (t) => {
  const config = benchConfig
  const run = await freshRun(t, config)
  const report = await benchSequencer({ nc, layout: run.layout, config, groups: 560, groupsPerEntry: 16, partitions: 3 })
  t.match(report, { groupsPerEntry: 16, entries: 35, batches: 35, rollouts: 35 * 16 * 8 })
  t.ok(report.seconds > 0 && report.rolloutsPerSecond > 0 && report.cpuSeconds > 0)
  t.ok(report.phases.decode >= 0 && report.phases.feed > 0 && report.phases.encode >= 0)
  t.ok(report.transportSeconds > 0 && report.transportRolloutsPerSecond > 0, 'NATS alone, timed')
  const streams: string[] = []
  for await (const name of run.jsm.streams.names()) streams.push(name)
  t.notOk(
    streams.some((name) => name.endsWith('_TRANSPORT')),
    'its stream is removed',
  )
  const entries = syntheticGroupsEntries(config, 560, 16, 3)
  t.same(entries.map((e) => [e.p, e.n, e.groups.length]).slice(0, 4), [
    [0, 1, 16],
    [1, 1, 16],
    [2, 1, 16],
    [0, 2, 16],
  ])
  const batches = await run.batches()
  t.ok(batches.length < 35, `35 steps in ${batches.length} messages: those made while one was in flight went together`)
  checkBatches(t, batches, expectedBatches(config, entries))
  t.equal(syntheticGroupsEntries(config, 330, 64, 8).at(-1)!.groups.length, 10, 'the last entry takes what is left')
})

t.test('the sequencer bench refuses a maxWait config and reports a sequencer that stopped', { skip: natsMissing }, async (t) => {
  const run = await freshRun(t, benchConfig)
  await t.rejects(benchSequencer({ nc, layout: run.layout, config: { ...benchConfig, batchMaxWaitMs: 10 }, groups: 16 }), /must not set batchMaxWaitMs/)
  const info = await run.jsm.streams.info(run.layout.streams.batches)
  await run.jsm.streams.update(run.layout.streams.batches, { ...info.config, max_msg_size: 64 })
  await t.rejects(
    benchSequencer({ nc, layout: run.layout, config: benchConfig, groups: 32 }),
    /the sequencer stopped before its last batch: .*message size exceeds maximum/,
  )
})

t.test('a sequencer whose connection closes stops and says so', { skip: natsMissing }, async (t) => {
  const config = configOf()
  const run = await freshRun(t, config)
  await run.publishGroups(groupsStream(6))
  const own = await connect({ servers: nats.urls })
  let error: Error | undefined
  const sequencer = await Sequencer.start({
    js: jetstream(own),
    jsm: await jetstreamManager(own),
    layout: run.layout,
    config,
    isHeld: () => true,
    onError: (e) => (error = e as Error),
  })
  await waitFor('the stream read', () => sequencer.stats().resumeFrom === 7)
  await own.close()
  await waitFor('the error', () => error)
  t.equal(error!.message, `sequencer: the consumer of stream ${run.layout.streams.groups} cannot be opened again: closed connection`)
  await sequencer.stop()
})
