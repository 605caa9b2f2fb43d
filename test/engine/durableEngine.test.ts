import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { parseConfig, type ConfigInput } from '../../src/config.js'
import { DurableEngine, defaultWatermarkInterval, rejectionReason, type CommittedBatch } from '../../src/engine/durableEngine.js'
import { replayLog } from '../../src/engine/logReplay.js'
import type { DropEvent } from '../../src/types.js'

const base: ConfigInput = {
  groupSize: 2,
  batchGroups: 2,
  objectives: [{ channel: 'accuracy' }],
  constraints: [{ channel: 'consistency', sense: '>=', threshold: 0.9, sampleThreshold: 0.5, dual: { rule: 'sgd', lr: 0.5, max: 5 } }],
}
const tempDir = () => mkdtempSync(join(tmpdir(), 'dualstream-engine-'))
const rollout = (id: string, promptId: string, accuracy: number, consistency: number, extra: object = {}) => ({ id, promptId, rewards: { accuracy, consistency }, ...extra })
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
  const outcome = await engine.ingest([rollout('a', 'p', 1, 1), { id: 'b', promptId: 'p', rewards: { accuracy: NaN } }, 'junk', rollout('a', 'p', 1, 1), rollout('c', 'p', 0, 1)])
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
  await engine.close()
})

t.test('batches are committed with λ, delivered in step order, acknowledged, and survive a restart', async (t) => {
  const dataDir = tempDir()
  let { engine, committed } = await openEngine(dataDir)
  await engine.ingest(prompts(0, 5))
  await engine.settled()
  t.same(committed.map((c) => c.outbox.step), [1, 2])
  const first = committed[0].outbox
  t.equal(first.type, 'batch')
  t.same(first.rollouts.map((r) => r.id), ['p0-0', 'p0-1', 'p1-0', 'p1-1'])
  t.ok(committed[0].latencyMs >= 0)
  t.same(engine.pendingBatches().map((b) => b.step), [1, 2])
  t.equal(await engine.acknowledge(1), true)
  t.equal(await engine.acknowledge(1), false, 'a second ack of the same step is harmless')
  t.same(engine.pendingBatches().map((b) => b.step), [2])
  const before = engine.stats()
  t.match(before, { step: 2, pendingRollouts: 2, outbox: 1, nextSeq: 10 })
  await engine.close()

  ;({ engine, committed } = await openEngine(dataDir))
  t.match(engine.stats(), { step: 2, lambda: before.lambda, pendingRollouts: 2, outbox: 1, nextSeq: 10 }, 'state and pipeline contents restored')
  t.same(engine.pendingBatches().map((b) => b.step), [2], 'the unacknowledged batch is still there for redelivery')
  await engine.ingest(prompts(5, 8))
  await engine.settled()
  t.same(committed.map((c) => c.outbox.step), [3, 4])
  t.same(committed[0].outbox.rollouts.map((r) => r.id), ['p4-0', 'p4-1', 'p5-0', 'p5-1'], 'the group pending at shutdown joins the next batch')
  const live = [...engine.store.summaries()].map((s) => (s.summary as { lambda: object }).lambda)
  await engine.close()

  const replayed: object[] = []
  const result = await replayLog(parseConfig(base), dataDir, (b) => replayed.push(b.lambda))
  t.same(result, { records: 16, batches: 4 })
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
  t.same(drops.map((d) => [d.reason, d.rollouts[0].id]), [['stale', 'old']])
  t.equal(engine.stats().pipeline.stale, 1)
  await engine.close()
  const reopened = await openEngine(dataDir, config)
  // the drop came after the last commit, so it was not persisted; the restart makes it again
  t.equal(reopened.engine.stats().pipeline.stale, 1, 'counted exactly once across the restart')
  await reopened.engine.close()
})

t.test('group timeouts run on logged watermarks: replay and restart agree', async (t) => {
  const dataDir = tempDir()
  let clock = 1000
  const config = { ...base, groupTimeoutMs: 100, minGroupSize: 1 }
  const engine = await DurableEngine.open({ config: parseConfig(config), dataDir, now: () => clock, watermarkIntervalMs: 5 })
  const committed: CommittedBatch[] = []
  const drops: DropEvent[] = []
  engine.committed.subscribe((c) => committed.push(c))
  engine.drops.subscribe((d) => drops.push(d))
  await engine.ingest([rollout('a', 'p', 1, 1)])
  clock += 50
  await engine.ingest([rollout('b', 'q', 0, 1)])
  clock += 60 // p times out at the next watermark
  await new Promise((resolve) => setTimeout(resolve, 50))
  clock += 60 // q too
  await new Promise((resolve) => setTimeout(resolve, 50))
  await engine.settled()
  t.same(committed.map((c) => c.outbox.rollouts.map((r) => r.id)), [['a', 'b']], 'two partial groups of one form a batch')
  t.equal(committed[0].batch.groups.every((g) => g.partial), true)
  t.equal(drops.length, 0)
  await engine.close()
  const replayed: string[][] = []
  await replayLog(parseConfig(config), dataDir, (b) => replayed.push(b.groups.flatMap((g) => g.rollouts.map((r) => r.id))))
  t.same(replayed, [['a', 'b']])
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
  const records = result.stdout.trim().split('\n').map((l) => JSON.parse(l))
  t.same(records.map((r) => r.step), [1, 2])
  t.same(records.map((r) => r.lambda.consistency.before), [0, 0], 'τ = 0.5 is met: λ stays 0')
  t.match(result.stderr, 'replay: 8 log records → 2 batches')
  const missing = await runCli(['replay', '-c', configPath, '--log', join(dataDir, 'nope')])
  t.equal(missing.code, 1)
  t.match(missing.stderr, /no engine log in .*nope \(expected .*data\.mdb/)
})
