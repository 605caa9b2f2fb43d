/**
 * Data-parallel trainer ranks on `/batches?rank=r&world=W` (PROTOCOL.md "Ranks"): shards,
 * acknowledgement by every rank, redelivery per rank, refusals.
 */
import t from 'tap'
import { wireUnpackr } from '../../src/state/codec.js'
import { parseRank } from '../../streams/trainerRanks.js'
import { Client, prompts, startServer, type Received } from './support.js'

const config = {
  groupSize: 2,
  batchGroups: 5,
  objectives: [{ channel: 'accuracy' }],
  constraints: [{ channel: 'consistency', sense: '>=' as const, threshold: 0.9, dual: { rule: 'sgd' as const, lr: 0.5 } }],
}

/** Once the server has read every frame `client` sent so far (a frame it answers proves it) and applied the acks among them. */
async function received(served: Awaited<ReturnType<typeof startServer>>, client: Client): Promise<void> {
  const errors = client.of('error').length
  client.send({ type: 'probe' })
  await client.until(() => client.of('error').length > errors, 10_000, 'the answer to a probe frame')
  await served.server.acknowledgementsApplied()
}

/** The whole batches pending in the outbox, decoded (what a single trainer would get). */
const wholeBatches = (served: Awaited<ReturnType<typeof startServer>>) => served.engine.pendingDeliveries().map((d) => wireUnpackr.unpack(d.bytes) as Received)

t.test('W = 1, 2, 3: shards partition every batch, balanced within one rollout', async (t) => {
  for (const world of [1, 2, 3]) {
    const served = await startServer({ config })
    t.teardown(() => served.close())
    const producer = await Client.open(served.url('/ingest'))
    producer.send({ type: 'rollouts', rollouts: prompts('a', 10).map((r, i) => ({ ...r, payload: Buffer.alloc(i * 7, i) })) })
    await producer.nth('ack')
    const ranks = await Promise.all(Array.from({ length: world }, (_, rank) => Client.open(served.url('/batches', `rank=${rank}&world=${world}`))))
    await Promise.all(ranks.map((rank) => rank.nth('batch', 2)))
    const whole = wholeBatches(served)
    t.equal(whole.length, 2)
    for (const [k, batch] of whole.entries()) {
      const shards = ranks.map((rank) => rank.of('batch')[k])
      if (world === 1) t.same(shards[0], batch, 'world 1: the whole batch, unchanged')
      else {
        const union = shards.flatMap((s) => s.shard.indices.map((i: number, j: number) => [i, s.rollouts[j]] as const)).sort((a, b) => a[0] - b[0])
        t.same(
          union.map(([, r]) => r),
          batch.rollouts,
          `world ${world}: the union of the shards is the batch, no overlap`,
        )
        const sizes = shards.map((s) => s.rollouts.length)
        t.ok(Math.max(...sizes) - Math.min(...sizes) <= 1, `sizes ${sizes} within one`)
        for (const [rank, s] of shards.entries()) {
          t.match(s, { step: batch.step, lambda: batch.lambda, constraints: batch.constraints, shard: { rank, world, rollouts: 10 } })
        }
      }
    }
    // the step is acknowledged once every rank acknowledged it
    for (const [rank, client] of ranks.entries()) {
      t.equal(served.server.health().outbox, 2, `before rank ${rank}'s ack`)
      client.send({ type: 'ack', step: 1 })
      await received(served, client)
    }
    t.equal(served.server.health().outbox, 1, 'after all ranks acked')
    t.same(served.server.health().trainerRanks, { world, ranks: Array.from({ length: world }, (_, r) => r) })
    await Promise.all([producer.close(), ...ranks.map((r) => r.close())])
  }
})

t.test('a rank reconnecting gets its shard of the steps it has not acknowledged; the lowest reported version is logged', async (t) => {
  const served = await startServer({ config })
  t.teardown(() => served.close())
  const producer = await Client.open(served.url('/ingest'))
  producer.send({ type: 'rollouts', rollouts: prompts('a', 15) })
  await producer.nth('ack')
  const rank0 = await Client.open(served.url('/batches', 'rank=0&world=2'))
  const rank1 = await Client.open(served.url('/batches', 'rank=1&world=2&format=json'))
  await Promise.all([rank0.nth('batch', 3), rank1.nth('batch', 3)])
  t.match(rank1.of('batch')[0].shard, { rank: 1, world: 2, rollouts: 10, indices: [1, 3, 5, 7, 9] }, 'a JSON rank gets its shard too')
  rank0.send({ type: 'ack', step: 1, policyVersion: 4 })
  rank0.send({ type: 'ack', step: 2, policyVersion: 4 })
  rank1.send({ type: 'ack', step: 1, policyVersion: 3 })
  await received(served, rank0)
  await received(served, rank1)
  t.equal(served.server.health().outbox, 2, 'step 1 done; step 2 waits for rank 1')
  t.equal(served.engine.policyVersion, 3, 'the lowest version the ranks reported')
  // rank 0 again: step 2 is acknowledged by it already, step 3 is not
  const again = await Client.open(served.url('/batches', 'rank=0&world=2'))
  await rank0.until(() => rank0.closed !== undefined)
  t.same(rank0.closed, { code: 4001, reason: 'replaced by a newer trainer connection' })
  await again.nth('batch')
  // a third batch committed now reaches the new connection after the redelivered step 3
  producer.send({ type: 'rollouts', rollouts: prompts('b', 5) })
  await again.nth('batch', 2)
  t.same(
    again.of('batch').map((b) => b.step),
    [3, 4],
  )
  t.same(again.of('batch')[0], rank0.of('batch')[2], 'the same shard again')
  // rank 1 again: steps 2, 3, 4
  const again1 = await Client.open(served.url('/batches', 'rank=1&world=2'))
  await again1.nth('batch', 3)
  t.same(
    again1.of('batch').map((b) => b.step),
    [2, 3, 4],
  )
  t.equal(served.server.health().delivered, 3 + 4 + 2 + 3, 'every batch sent, redeliveries included')
  await Promise.all([producer.close(), again.close(), again1.close(), rank1.close()])
})

t.test('a world that differs from the connected ranks, or a bad rank, is refused: error frame, then 4002', async (t) => {
  const served = await startServer({ config })
  t.teardown(() => served.close())
  const rank0 = await Client.open(served.url('/batches', 'rank=0&world=2'))
  const other = await Client.open(served.url('/batches', 'rank=1&world=3'))
  await other.until(() => other.closed !== undefined)
  t.same(other.of('error'), [
    {
      type: 'error',
      code: 'bad-rank',
      reason: 'world: 3, but the connected ranks (0) use world 2: every rank of a trainer must pass the same world',
    },
  ])
  t.same(other.closed, { code: 4002, reason: 'world differs from the connected ranks' })
  for (const [query, reason] of [
    ['rank=2&world=2', 'rank: must be below world (2), got 2'],
    ['rank=-1&world=2', 'rank: must be an integer >= 0, got "-1"'],
    ['world=0', 'world: must be between 1 and 1024, got 0'],
    ['world=two', 'world: must be an integer >= 0, got "two"'],
  ]) {
    const bad = await Client.open(served.url('/batches', query))
    await bad.until(() => bad.closed !== undefined)
    t.same(bad.of('error')[0], { type: 'error', code: 'bad-rank', reason }, query)
    t.same(bad.closed, { code: 4002, reason: 'bad rank or world' })
  }
  t.equal(served.server.health().frameErrors['bad-rank'], 5)
  t.same(served.server.health().trainerRanks, { world: 2, ranks: [0] })
  await rank0.close()
  t.same(served.server.health().trainerRanks, { world: undefined, ranks: [] })
  t.equal(served.server.health().trainer, false)
})

t.test('a new world once the old one is gone: acknowledgements of the old shards do not count', async (t) => {
  const served = await startServer({ config })
  t.teardown(() => served.close())
  const producer = await Client.open(served.url('/ingest'))
  producer.send({ type: 'rollouts', rollouts: prompts('a', 5) })
  await producer.nth('ack')
  const half = await Client.open(served.url('/batches', 'rank=0&world=2'))
  await half.nth('batch')
  half.send({ type: 'ack', step: 1 })
  await received(served, half)
  await half.close()
  // world 3 now: rank 0's ack of its world-2 shard is forgotten; all three must acknowledge
  const ranks = await Promise.all([0, 1, 2].map((rank) => Client.open(served.url('/batches', `rank=${rank}&world=3`))))
  await Promise.all(ranks.map((r) => r.nth('batch')))
  t.match(ranks[0].of('batch')[0].shard, { rank: 0, world: 3 }, 'rank 0 gets step 1 again, as a shard of three')
  ranks[0].send({ type: 'ack', step: 1 })
  ranks[1].send({ type: 'ack', step: 1 })
  await received(served, ranks[0])
  await received(served, ranks[1])
  t.equal(served.server.health().outbox, 1)
  ranks[2].send({ type: 'ack', step: 1 })
  await received(served, ranks[2])
  t.equal(served.server.health().outbox, 0)
  await Promise.all([producer.close(), ...ranks.map((r) => r.close())])
})

t.test('parseRank: defaults and bounds', async (t) => {
  const parse = (query: string) => parseRank(new URL(`http://x/batches?${query}`))
  t.same(parse(''), { rank: 0, world: 1 })
  t.same(parse('rank=3&world=4'), { rank: 3, world: 4 })
  t.equal(parse('world=1025'), 'world: must be between 1 and 1024, got 1025')
  t.equal(parse('rank=1.5&world=4'), 'rank: must be an integer >= 0, got "1.5"')
})
