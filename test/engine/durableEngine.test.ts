import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { parseConfig, type ConfigInput } from '../../src/core/config.js'
import { DurableEngine, defaultWatermarkInterval, rejectionReason, type CommittedBatch } from '../../src/state/durableEngine.js'
import { replayLog } from '../../src/state/logReplay.js'
import type { DropEvent } from '../../src/core/types.js'
import { EngineStore } from '../../src/state/engineStore.js'
import type { RawPayload } from '../../src/state/rawPayload.js'
import { VirtualClock } from '../support/virtualTime.js'

const base: ConfigInput = {
  groupSize: 2,
  batchGroups: 2,
  objectives: [{ channel: 'accuracy' }],
  constraints: [{ channel: 'consistency', sense: '>=', threshold: 0.9, sampleThreshold: 0.5, dual: { rule: 'sgd', lr: 0.5, max: 5 } }],
}
const tempDir = () => mkdtempSync(join(tmpdir(), 'dualstream-engine-'))
const rollout = (id: string, promptId: string, accuracy: number, consistency: number, extra: object = {}) => ({
  id,
  promptId,
  rewards: { accuracy, consistency },
  ...extra,
})
const prompts = (from: number, to: number) => {
  const out = []
  for (let p = from; p < to; p++) for (let i = 0; i < 2; i++) out.push(rollout(`p${p}-${i}`, `p${p}`, (p + i) % 2, (p * 3 + i) % 4 === 0 ? 0 : 1))
  return out
}

async function openEngine(dataDir: string, input: ConfigInput = base, now?: () => number) {
  const engine = await DurableEngine.open({ config: parseConfig(input), dataDir, now, watermarkIntervalMs: 0 })
  const committed: CommittedBatch[] = []
  const drops: DropEvent[] = []
  engine.committed.subscribe((c) => committed.push(c))
  engine.drops.subscribe((d) => drops.push(d))
  return { engine, committed, drops }
}

t.test('ingest: valid items logged, invalid ones rejected item by item, duplicates acked once', async (t) => {
  const { engine, committed } = await openEngine(tempDir())
  const outcome = await engine.ingest([
    rollout('a', 'p', 1, 1),
    { id: 'b', promptId: 'p', rewards: { accuracy: NaN } },
    'junk',
    rollout('a', 'p', 1, 1),
    rollout('c', 'p', 0, 1),
  ])
  t.same(outcome.acked, ['a', 'a', 'c'])
  t.equal(outcome.duplicates, 1)
  t.same(outcome.rejected, [
    { index: 1, id: 'b', field: 'rewards.accuracy', reason: 'not a finite number (NaN)' },
    { index: 2, field: '(rollout)', reason: 'must be an object, got the string "junk"' },
  ])
  const again = await engine.ingest([rollout('c', 'p', 0, 1)])
  t.same(again, { acked: ['c'], rejected: [], duplicates: 1 }, 'a logged id is acknowledged, not counted again')
  t.same(engine.stats().ingest, { ingested: 2, rejected: { rewards: 1, shape: 1 }, duplicate: 2 })
  t.same(await engine.ingest([]), { acked: [], rejected: [], duplicates: 0 })
  await engine.settled()
  t.equal(committed.length, 0, 'one group is not a batch yet')
  await engine.close()
  await t.rejects(engine.ingest([rollout('z', 'p', 1, 1)]), /closed/)
  await t.rejects(engine.acknowledge(1), /the engine is closed/, 'an ack racing a shutdown is refused, not written to a closed store')
  await engine.close()
})

t.test('batches are committed with λ, delivered in step order, acknowledged, and survive a restart', async (t) => {
  const dataDir = tempDir()
  let { engine, committed } = await openEngine(dataDir)
  // a group left waiting from the start: the low-water mark stays at its first rollout
  await engine.ingest([rollout('w0', 'w', 1, 1)])
  await engine.ingest(prompts(0, 5))
  await engine.settled()
  t.same(
    committed.map((c) => c.outbox.step),
    [1, 2],
  )
  const first = committed[0].outbox
  t.equal(first.type, 'batch')
  t.same(
    first.rollouts.map((r) => r.id),
    ['p0-0', 'p0-1', 'p1-0', 'p1-1'],
  )
  t.ok(committed[0].latencyMs >= 0)
  t.same(
    engine.pendingBatches().map((b) => b.step),
    [1, 2],
  )
  t.equal(await engine.acknowledge(1), true)
  t.equal(await engine.acknowledge(1), false, 'a second ack of the same step is harmless')
  t.same(
    engine.pendingBatches().map((b) => b.step),
    [2],
  )
  const before = engine.stats()
  t.match(before, { step: 2, pendingRollouts: 3, outbox: 1, nextSeq: 11 })
  await engine.close()

  ;({ engine, committed } = await openEngine(dataDir))
  t.match(engine.stats(), { step: 2, lambda: before.lambda, pendingRollouts: 3, outbox: 1, nextSeq: 11 }, 'state and pipeline contents restored')
  t.same(
    engine.pendingBatches().map((b) => b.step),
    [2],
    'the unacknowledged batch is still there for redelivery',
  )
  await engine.ingest(prompts(5, 8))
  await engine.settled()
  t.same(
    committed.map((c) => c.outbox.step),
    [3, 4],
  )
  t.same(
    committed[0].outbox.rollouts.map((r) => r.id),
    ['p4-0', 'p4-1', 'p5-0', 'p5-1'],
    'the group pending at shutdown joins the next batch',
  )
  const live = [...engine.store.summaries()].map((s) => (s.summary as { lambda: object }).lambda)
  await engine.close()

  const replayed: object[] = []
  const result = await replayLog(parseConfig(base), dataDir, (b) => replayed.push(b.lambda))
  t.same(result, { records: 17, batches: 4 })
  t.same(replayed, live, 'replaying the log gives the same λ per step')
})

t.test('a trainer policy version is logged and makes old rollouts stale, the same way on replay', async (t) => {
  const dataDir = tempDir()
  const config = { ...base, maxStaleness: 1 }
  const { engine, drops } = await openEngine(dataDir, config)
  await engine.ingest(prompts(0, 2).map((r) => ({ ...r, policyVersion: 0 })))
  await engine.settled()
  await engine.acknowledge(1, 2)
  await engine.ingest([rollout('old', 'q', 1, 1, { policyVersion: 0 }), rollout('new', 'q', 1, 1, { policyVersion: 1 })])
  await engine.settled()
  t.same(
    drops.map((d) => [d.reason, d.rollouts[0].id]),
    [['stale', 'old']],
  )
  t.equal(engine.stats().pipeline.stale, 1)
  await engine.close()
  const reopened = await openEngine(dataDir, config)
  // the drop came after the last commit, so it was not persisted; the restart makes it again
  t.equal(reopened.engine.stats().pipeline.stale, 1, 'counted exactly once across the restart')
  await reopened.engine.close()
})

t.test('group timeouts run on logged watermarks: replay and restart agree', async (t) => {
  const dataDir = tempDir()
  const clock = new VirtualClock(1000)
  const config = { ...base, groupTimeoutMs: 100, minGroupSize: 1 }
  const engine = await DurableEngine.open({ config: parseConfig(config), dataDir, scheduler: clock, watermarkIntervalMs: 5 })
  const committed: CommittedBatch[] = []
  const drops: DropEvent[] = []
  engine.committed.subscribe((c) => committed.push(c))
  engine.drops.subscribe((d) => drops.push(d))
  await engine.ingest([rollout('a', 'p', 1, 1)])
  await engine.settled()
  clock.advance(50) // watermarks every 5 ms while p waits
  await engine.ingest([rollout('b', 'q', 0, 1)])
  await engine.settled()
  t.equal(committed.length, 0, 'nothing has timed out yet')
  clock.advance(60) // p times out at the watermark of 1100
  await engine.settled()
  t.equal(committed.length, 0, 'p waits in the batch being filled')
  clock.advance(60) // q too, at 1150
  await engine.settled()
  t.same(
    committed.map((c) => c.outbox.rollouts.map((r) => r.id)),
    [['a', 'b']],
    'two partial groups of one form a batch',
  )
  t.equal(committed[0].summary.partialGroups, committed[0].summary.groups)
  t.equal(drops.length, 0)
  await engine.close()
  const replayed: string[][] = []
  await replayLog(parseConfig(config), dataDir, (b) => replayed.push(b.groups.flatMap((g) => g.rollouts.map((r) => r.id))))
  t.same(replayed, [['a', 'b']])
})

t.test('event times come from `now` when given, else from the scheduler; no watermark is logged while nothing waits', async (t) => {
  const clock = new VirtualClock(7000)
  const dataDir = tempDir()
  const timed = await DurableEngine.open({ config: parseConfig({ ...base, groupTimeoutMs: 100 }), dataDir, scheduler: clock, now: () => 5000 })
  await timed.ingest(prompts(0, 1))
  await timed.settled()
  clock.advance(200)
  await timed.settled()
  t.equal(timed.stats().nextSeq, 2, 'the clock of `now` stood still: no watermark')
  t.equal(clock.actions.length, 1, 'the watermark timer is scheduled on the clock')
  await timed.close()
  t.equal(clock.actions.length, 0, 'and cancelled by close()')
  clock.advance(1000)
  const scheduled = await DurableEngine.open({ config: parseConfig(base), dataDir, scheduler: clock })
  await scheduled.ingest(prompts(1, 2))
  await scheduled.close()
  const store = EngineStore.open(dataDir, { readOnly: true })
  t.same(
    [...store.records(0)].map((r) => (r.kind === 'rollout' ? r.rollout.ts : r.kind)),
    [5000, 5000, 8200, 8200],
  )
  await store.close()
})

t.test('a restart restores the policy version logged before the low-water mark', async (t) => {
  const dataDir = tempDir()
  const config = { ...base, maxStaleness: 0 }
  const { engine } = await openEngine(dataDir, config)
  await engine.ingest(prompts(0, 2).map((r) => ({ ...r, policyVersion: 0 })))
  await engine.settled()
  await engine.acknowledge(1, 1) // logged at seq 4
  await engine.ingest([rollout('waiting', 'w', 1, 1, { policyVersion: 1 })]) // seq 5 stays inside: the mark
  await engine.ingest(prompts(2, 4).map((r) => ({ ...r, policyVersion: 1 })))
  await engine.settled()
  t.equal(engine.stats().step, 2)
  await engine.close()
  const reopened = await openEngine(dataDir, config)
  await reopened.engine.ingest([rollout('late', 'q', 1, 1, { policyVersion: 0 })])
  await reopened.engine.settled()
  t.same(
    reopened.drops.map((d) => d.rollouts[0].id),
    ['late'],
    'version 1, logged below the mark, is in effect after the restart',
  )
  await reopened.engine.close()
})

t.test('helpers', (t) => {
  t.equal(defaultWatermarkInterval(parseConfig(base)), 0)
  t.equal(defaultWatermarkInterval(parseConfig({ ...base, groupTimeoutMs: 100 })), 50)
  t.equal(defaultWatermarkInterval(parseConfig({ ...base, groupTimeoutMs: 10_000, batchMaxWaitMs: 2000 })), 500)
  t.equal(defaultWatermarkInterval(parseConfig({ ...base, batchMaxWaitMs: 60_000 })), 1000)
  t.equal(rejectionReason('rewards.accuracy'), 'rewards')
  t.equal(rejectionReason('(rollout)'), 'shape')
  t.end()
})

t.test('dualstream replay --log reads a data folder read-only and writes its batches', async (t) => {
  const { runCli } = await import('../support/cli.js')
  const { writeFileSync } = await import('node:fs')
  const dataDir = tempDir()
  const { engine } = await openEngine(dataDir)
  await engine.ingest(prompts(0, 4))
  await engine.close()
  const configPath = join(tempDir(), 'tau.json')
  // the counterfactual: what would λ have done with τ = 0.5?
  writeFileSync(configPath, JSON.stringify({ ...base, constraints: [{ ...base.constraints![0], threshold: 0.5 }] }))
  const result = await runCli(['replay', '-c', configPath, '--log', dataDir])
  t.equal(result.code, 0, result.stderr)
  const records = result.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l))
  t.same(
    records.map((r) => r.step),
    [1, 2],
  )
  t.same(
    records.map((r) => r.lambda.consistency.before),
    [0, 0],
    'τ = 0.5 is met: λ stays 0',
  )
  t.match(result.stderr, 'replay: 8 log records → 2 batches')
  const missing = await runCli(['replay', '-c', configPath, '--log', join(dataDir, 'nope')])
  t.equal(missing.code, 1)
  t.match(missing.stderr, /no engine log in .*nope \(expected .*data\.mdb/)
})

t.test('frames logged as they arrived (MessagePack and JSON) replay exactly, refused items and duplicates left out', async (t) => {
  const { wirePackr } = await import('../../src/state/codec.js')
  const dataDir = tempDir()
  const { engine, committed } = await openEngine(dataDir)
  const binary = { type: 'rollouts', rollouts: [...prompts(0, 1), { id: 'bad', promptId: 'p', rewards: { accuracy: 'x' } }] }
  const text = { type: 'rollouts', rollouts: [prompts(0, 1)[0], ...prompts(1, 2)] }
  const first = await engine.ingest(wirePackr.unpack(wirePackr.pack(binary)).rollouts, { bytes: wirePackr.pack(binary), format: 'msgpack' })
  t.same(first, {
    acked: ['p0-0', 'p0-1'],
    rejected: [{ index: 2, id: 'bad', field: 'rewards.accuracy', reason: 'must be a finite number or null, got the string "x"' }],
    duplicates: 0,
  })
  const json = Buffer.from(JSON.stringify(text))
  const second = await engine.ingest(JSON.parse(json.toString()).rollouts, { bytes: json, format: 'json' })
  t.same(second.duplicates, 1)
  await engine.settled()
  t.same(
    committed.map((c) => c.outbox.rollouts.map((r) => r.id)),
    [['p0-0', 'p0-1', 'p1-0', 'p1-1']],
  )
  await engine.close()
  const replayed: string[][] = []
  t.same(await replayLog(parseConfig(base), dataDir, (b) => replayed.push(b.groups.flatMap((g) => g.rollouts.map((r) => r.id)))), { records: 4, batches: 1 })
  t.same(replayed, [['p0-0', 'p0-1', 'p1-0', 'p1-1']])
  const reopened = await openEngine(dataDir)
  t.match(reopened.engine.stats(), { step: 1, nextSeq: 4, pendingRollouts: 0 })
  await reopened.engine.close()
})

t.test('a group cut short below minGroupSize is dropped and counted', async (t) => {
  const clock = new VirtualClock()
  const engine = await DurableEngine.open({
    config: parseConfig({ ...base, groupTimeoutMs: 10 }),
    dataDir: tempDir(),
    scheduler: clock,
  })
  const drops: DropEvent[] = []
  engine.drops.subscribe((d) => drops.push(d))
  await engine.ingest([rollout('lonely', 'p', 1, 1)])
  await engine.settled()
  clock.advance(50) // the default watermark period for a 10 ms timeout is 50 ms: one watermark, at 50
  await engine.settled()
  t.same(
    drops.map((d) => [d.reason, d.count]),
    [['incomplete-group', 1]],
  )
  t.match(engine.stats().pipeline, { incompleteGroups: 1, incompleteGroupRollouts: 1 })
  await engine.close()
})

t.test('a store that cannot commit stops the engine with the reason; nothing more is accepted', async (t) => {
  const { engine } = await openEngine(tempDir())
  engine.store.commitBatch = () => Promise.reject(new Error('MDB_MAP_FULL: mapsize reached'))
  await engine.ingest(prompts(0, 2))
  await engine.settled()
  t.match(String(engine.error), 'MDB_MAP_FULL')
  await t.rejects(engine.ingest(prompts(2, 3)), /MDB_MAP_FULL/)
  await engine.close()
})

t.test('a log whose records do not score (written by something else) fails the replay with the rollout and channel', async (t) => {
  const dataDir = tempDir()
  const store = EngineStore.open(dataDir)
  const bad = { id: 'nan', promptId: 'p', rewards: { accuracy: NaN }, seq: 0, ts: 0 }
  await store.transact((tx) => {
    for (const id of ['nan', 'nan1', 'nan2', 'nan3']) tx.claim(id)
    tx.append(
      [0, 1, 2, 3].map((seq) => ({ kind: 'rollout' as const, seq, rollout: { ...bad, id: seq === 0 ? 'nan' : `nan${seq}`, promptId: `p${seq >> 1}`, seq } })),
    )
    tx.append([{ kind: 'watermark', seq: 4, ts: 1 }])
    return { ingested: 4, rejected: {}, duplicate: 0 }
  })
  await store.close()
  await t.rejects(
    replayLog(parseConfig(base), dataDir, () => {}),
    /rollout "nan" \(prompt "p0"\): rewards\.accuracy is NaN/,
  )
  // the same bad batch, reached only when the end of the log flushes it
  const short = tempDir()
  const store2 = EngineStore.open(short)
  await store2.transact((tx) => (tx.claim(bad.id), tx.append([{ kind: 'rollout', seq: 0, rollout: { ...bad } }]), { ingested: 1, rejected: {}, duplicate: 0 }))
  await store2.close()
  await t.rejects(
    replayLog(parseConfig({ ...base, minGroupSize: 1 }), short, () => {}),
    /rewards\.accuracy is NaN/,
  )
  const { runCli } = await import('../support/cli.js')
  const { writeFileSync } = await import('node:fs')
  const configPath = join(tempDir(), 'c.json')
  writeFileSync(configPath, JSON.stringify(base))
  const result = await runCli(['replay', '-c', configPath, '--log', dataDir])
  t.equal(result.code, 1, 'an unexpected failure exits 1 with the whole story')
  t.match(result.stderr, /^dualstream: RangeError: rollout "nan"/)
})

t.test('a restart replays the watermarks and policy versions logged after the low-water mark', async (t) => {
  const dataDir = tempDir()
  const config = { ...base, maxStaleness: 0 }
  const { engine } = await openEngine(dataDir, config)
  await engine.ingest(prompts(0, 2).map((r) => ({ ...r, policyVersion: 0 })))
  await engine.settled()
  await engine.ingest([rollout('pending', 'q', 1, 1, { policyVersion: 0 })])
  await engine.acknowledge(1, 1)
  await engine.close()
  const reopened = await openEngine(dataDir, config)
  await reopened.engine.ingest([rollout('late', 'q', 1, 1, { policyVersion: 0 })])
  await reopened.engine.settled()
  t.same(
    reopened.drops.map((d) => d.rollouts[0].id),
    ['late'],
    'version 1 was restored from the log: a version-0 rollout is now stale',
  )
  await reopened.engine.close()
})

t.test(
  'payloads are written once: pending rollouts drop their bytes once logged, the outbox holds references, delivery splices the logged bytes',
  async (t) => {
    const { wirePackr } = await import('../../src/state/codec.js')
    const { decodeRolloutsFrame } = await import('../../src/state/rawPayload.js')
    const dataDir = tempDir()
    const { engine, committed } = await openEngine(dataDir)
    const big = (i: number) => ({ tokens: Buffer.alloc(4096, i), logprobs: new Float32Array(64).fill(i / 10) })
    const items = prompts(0, 2).map((r, i) => ({ ...r, payload: big(i) }))
    const bytes = Buffer.from(wirePackr.pack({ type: 'rollouts', rollouts: items }))
    const decoded = (decodeRolloutsFrame(bytes) as { rollouts: { payload: RawPayload }[] }).rollouts
    const payloadBytes = decoded.map((d) => Buffer.from(d.payload.bytes!))
    await engine.ingest(decoded, { bytes, format: 'msgpack' })
    await engine.settled()
    t.ok(
      decoded.every((d) => d.payload.bytes === undefined && d.payload.entry === 0),
      'the rollouts hold where their payloads are, not the bytes',
    )
    t.equal(committed.length, 1)
    const record = engine.store.outbox.getBinary(1)!
    t.ok(record.length < 4096, `the outbox record holds no payload bytes (${record.length} bytes for ${4 * 4096} of payloads)`)
    const sent = committed[0].delivery.bytes
    const spliced = (decodeRolloutsFrame(sent) as { rollouts: { payload: RawPayload }[] }).rollouts.map((r) => Buffer.from(r.payload.bytes!))
    t.same(spliced, payloadBytes, 'the batch sent carries the producer’s bytes')
    t.same(engine.pendingDeliveries()[0].bytes, sent, 'and so does a redelivery')

    // a payload still as bytes, given without its frame's bytes, is logged as its value
    const loose = (
      decodeRolloutsFrame(wirePackr.pack({ type: 'rollouts', rollouts: [rollout('l0', 'l', 1, 1, { payload: { a: 1 } })] })) as { rollouts: object[] }
    ).rollouts
    await engine.ingest(loose)
    await engine.settled()
    const [logged] = [...engine.store.records(4)] as { rollout: { payload: unknown } }[]
    t.same(logged.rollout.payload, { a: 1 })
    await engine.close()
  },
)
