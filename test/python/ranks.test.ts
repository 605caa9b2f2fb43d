/**
 * Data-parallel trainers with the Python package: W = 1, 2, 3 ranks (`/batches?rank=&world=`)
 * each receive their shard of every batch; the shards are disjoint, cover the batch, differ in
 * size by at most one, carry the whole batch's size, and a step is acknowledged once every rank
 * acknowledged it. A rank whose world differs from the connected ones raises RankError.
 */
import t from 'tap'
import type { ConfigInput } from '../../src/core/config.js'
import type { DurableEngine } from '../../src/state/durableEngine.js'
import { Client, produce, prompts, startServer, type Received } from '../serve/support.js'
import { missing, python, scenario, type Line } from './support.js'

const config: ConfigInput = {
  groupSize: 4,
  batchGroups: 4,
  objectives: [{ channel: 'accuracy' }],
  constraints: [{ channel: 'consistency', sense: '>=', threshold: 0.9, dual: { rule: 'sgd', lr: 0.1 } }],
}
const STEPS = 5
const N = 16 // rollouts per batch

/** The batches the engine commits, as sent to a single trainer; resolves once there are `steps`. */
function wholeBatches(engine: DurableEngine, steps: number): Promise<Map<number, Received>> {
  const batches = new Map<number, Received>()
  return new Promise((resolve) => {
    const subscription = engine.committed.subscribe((committed) => {
      batches.set(committed.delivery.step, committed.outbox)
      if (batches.size < steps) return
      subscription.unsubscribe()
      resolve(batches)
    })
  })
}

for (const world of [1, 2, 3]) {
  t.test(`${world} rank(s): shards partition every batch`, { skip: missing }, async (t) => {
    const served = await startServer({ config })
    t.teardown(() => served.close())
    const committed = wholeBatches(served.engine, STEPS)
    const producer = await Client.open(served.url('/ingest'))
    await produce(producer, prompts('k', STEPS * 4, 4), 20)
    await producer.close()
    const whole = await committed

    const ranks = Array.from({ length: world }, (_, rank) =>
      python(['rank', '--batches', served.url('/batches'), '--rank', String(rank), '--world', String(world), '--steps', String(STEPS)], {
        name: `rank ${rank}`,
      }),
    )
    const results = await Promise.all(ranks.map((r) => r.result()))
    t.same(results, Array(world).fill({ done: true, lastStep: STEPS }))

    for (let step = 1; step <= STEPS; step++) {
      const batch = whole.get(step)!
      const shards = ranks.map((r) => r.lines.find((line) => line.event === 'batch' && line.step === step) as Line)
      const covered: number[] = []
      for (const [rank, shard] of shards.entries()) {
        t.equal(shard.batchSize, N, `step ${step} rank ${rank}: the whole batch's size`)
        if (world === 1) {
          t.equal(shard.shard, null, 'one rank: no shard field')
          t.same(
            shard.ids,
            batch.rollouts.map((r: Received) => r.id),
          )
          continue
        }
        t.match(shard.shard, { rank, world, rollouts: N })
        const indices = shard.shard.indices as number[]
        t.same(
          indices,
          [...indices].sort((a, b) => a - b),
          'indices ascending',
        )
        t.same(
          shard.ids,
          indices.map((i) => batch.rollouts[i].id),
          'the shard’s rollouts are the batch’s at those indices',
        )
        t.same(
          shard.advantages,
          indices.map((i) => batch.rollouts[i].advantage),
        )
        covered.push(...indices)
      }
      if (world > 1) {
        t.same(
          covered.sort((a, b) => a - b),
          Array.from({ length: N }, (_, i) => i),
          `step ${step}: each rollout in exactly one shard`,
        )
        const sizes = shards.map((s) => s.ids.length as number)
        t.ok(Math.max(...sizes) - Math.min(...sizes) <= 1, `step ${step}: shard sizes ${sizes.join(', ')} within one`)
      }
    }
    await served.server.close()
    t.equal(served.server.health().outbox, 0, 'every step acknowledged by all ranks')
  })
}

t.test('a rank connecting with another world size raises RankError (bad-rank, 4002), without reconnecting', { skip: missing }, async (t) => {
  const served = await startServer({ config })
  t.teardown(() => served.close())
  // rank 0 of 2 holds the run's world size while the odd one connects
  const holder = python(['rank', '--batches', served.url('/batches'), '--rank', '0', '--world', '2', '--steps', '1', '--idle', '30'], { name: 'holder' })
  await holder.waitFor((line) => line.event === 'connected', 'rank 0 of 2 connected')
  const odd = await scenario(['rank', '--batches', served.url('/batches'), '--rank', '1', '--world', '3', '--steps', '1'])
  t.match(odd.raised, { type: 'RankError', rank: 1, world_size: 3, close_code: 4002 })
  t.match(odd.raised.message, /^rank 1 of 3: ./)
  holder.child.kill('SIGKILL')

  // out of range: refused before connecting
  const outOfRange = await scenario(['rank', '--batches', served.url('/batches'), '--rank', '2', '--world', '2'])
  t.match(outOfRange.raised, { type: 'RankError', rank: 2, world_size: 2, close_code: null })
})
