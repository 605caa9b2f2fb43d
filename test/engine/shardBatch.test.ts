import fc from 'fast-check'
import t from 'tap'
import { wirePackr, wireUnpackr } from '../../src/state/codec.js'
import { batchLayout, planShards, shardBatch } from '../../src/state/shardBatch.js'

t.test('planShards: a deterministic partition, counts within one, sizes balanced', async (t) => {
  fc.assert(
    fc.property(fc.array(fc.nat(5000), { maxLength: 200 }), fc.integer({ min: 1, max: 9 }), (weights, world) => {
      const shards = planShards(weights, world)
      t.equal(shards.length, world)
      const all = shards.flat().sort((a, b) => a - b)
      t.same(
        all,
        weights.map((_, i) => i),
        'every rollout in exactly one shard',
      )
      const n = weights.length
      shards.forEach((shard, rank) => {
        t.equal(shard.length, Math.floor(n / world) + (rank < n % world ? 1 : 0), 'the first n mod W ranks take one more')
        t.same(
          shard,
          [...shard].sort((a, b) => a - b),
          'ascending',
        )
      })
      t.same(planShards(weights, world), shards, 'deterministic')
      // greedy largest-first: no rank ends more than one largest rollout above another, when counts leave it free
      if (n % world === 0 && n > 0) {
        const loads = shards.map((shard) => shard.reduce((sum, i) => sum + weights[i], 0))
        t.ok(Math.max(...loads) - Math.min(...loads) <= Math.max(...weights), `loads ${loads} within the largest rollout`)
      }
    }),
    { numRuns: 200 },
  )
})

t.test('planShards: equal sizes go round-robin; a bad world is refused', async (t) => {
  t.same(planShards([1, 1, 1, 1, 1], 2), [
    [0, 2, 4],
    [1, 3],
  ])
  t.same(planShards([], 3), [[], [], []])
  t.same(planShards([10, 1, 1, 1], 2), [
    [0, 3],
    [1, 2],
  ])
  t.throws(() => planShards([1], 0), /world must be an integer >= 1, got 0/)
  t.throws(() => planShards([1], 1.5), /got 1.5/)
})

const batch = (count: number) => ({
  type: 'batch',
  step: 7,
  lambda: { c: { before: 0.5, after: 0.25 } },
  constraints: { c: { mean: 0.5, violation: 0.1, sampleViolationRate: 0.2, count } },
  rollouts: Array.from({ length: count }, (_, i) => {
    const rollout: Record<string, unknown> = { id: `r${i}`, promptId: `p${i >> 1}`, advantage: i / 3 }
    if (i % 3 === 0) rollout.payload = { tokens: new Uint8Array(i * 11), nested: { logprobs: new Float32Array([i, -i]) } }
    if (i % 3 === 1) rollout.payload = Buffer.alloc(i, i)
    return rollout
  }),
})

t.test('shardBatch: each rank gets its rollouts with their bytes untouched, and says which they are', async (t) => {
  for (const count of [0, 5, 40]) {
    const whole = wirePackr.pack(batch(count))
    const full = wireUnpackr.unpack(whole) as ReturnType<typeof batch>
    const layout = batchLayout(whole)
    for (const world of [1, 2, 3]) {
      const seen: number[] = []
      for (let rank = 0; rank < world; rank++) {
        const bytes = shardBatch(whole, rank, world, rank === 0 ? layout : undefined)
        const shard = wireUnpackr.unpack(bytes) as ReturnType<typeof batch> & { shard: { rank: number; world: number; rollouts: number; indices: number[] } }
        t.same({ ...shard, rollouts: undefined, shard: undefined }, { ...full, rollouts: undefined, shard: undefined }, 'the rest of the frame as it was')
        t.match(shard.shard, { rank, world, rollouts: count })
        t.same(
          shard.rollouts,
          shard.shard.indices.map((i) => full.rollouts[i]),
          'the rollouts of its indices, in order',
        )
        // the rollouts' bytes are the whole batch's bytes
        for (const [k, i] of shard.shard.indices.entries()) {
          const [start, end] = layout.rollouts[i]
          const at = batchLayout(bytes).rollouts[k]
          t.ok(Buffer.from(bytes.subarray(at[0], at[1])).equals(Buffer.from(whole.subarray(start, end))))
        }
        seen.push(...shard.shard.indices)
      }
      t.same(
        seen.sort((a, b) => a - b),
        Array.from({ length: count }, (_, i) => i),
        `world ${world}: the union is the batch`,
      )
    }
  }
})

t.test('shardBatch: large arrays and map headers (16- and 32-bit counts)', async (t) => {
  const many = { type: 'batch', step: 1, rollouts: Array.from({ length: 70_000 }, (_, i) => i % 7) }
  const whole = wirePackr.pack(many)
  const one = wireUnpackr.unpack(shardBatch(whole, 0, 1)) as typeof many & { shard: { indices: number[] } }
  t.same(one.rollouts, many.rollouts, 'a 32-bit array count written again')
  const half = wireUnpackr.unpack(shardBatch(whole, 1, 2)) as typeof many & { shard: { indices: number[] } }
  t.equal(half.rollouts.length, 35_000, 'a 16-bit count')
  // a map with a 32-bit count (msgpackr writes small ones): hand-made
  const map32 = Buffer.concat([
    Buffer.from([0xdf, 0, 0, 0, 2]),
    wirePackr.pack('step'),
    wirePackr.pack(3),
    wirePackr.pack('rollouts'),
    wirePackr.pack(['a', 'b']),
  ])
  t.match(wireUnpackr.unpack(shardBatch(map32, 1, 2)), { step: 3, rollouts: ['b'], shard: { rank: 1, world: 2, rollouts: 2, indices: [1] } })
})

t.test('shardBatch: what is not a batch frame is refused by name', async (t) => {
  t.throws(() => shardBatch(wirePackr.pack([1, 2]), 0, 1), /not a batch frame: expected a MessagePack map at byte 0, found 0x92/)
  t.throws(() => shardBatch(wirePackr.pack({ type: 'batch' }), 0, 1), /not a batch frame: no "rollouts" array/)
  t.throws(() => shardBatch(wirePackr.pack({ rollouts: 'x' }), 0, 1), /expected a MessagePack array at byte 12, found 0xa1/)
  t.throws(() => shardBatch(wirePackr.pack({ rollouts: [] }), 2, 2), /rank must be an integer in \[0, 2\), got 2/)
})
