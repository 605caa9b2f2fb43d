import fc from 'fast-check'
import t from 'tap'
import { forEachHash, IdHasher, IdHashTable, packHashes } from '../../src/state/idHashes.js'

const hashOf = (hasher: IdHasher, id: string): [number, number] => (hasher.hash(id), [hasher.hi, hasher.lo])

t.test('the table holds exactly the hashes added, through growth and probe chains', (t) => {
  fc.assert(
    fc.property(fc.array(fc.tuple(fc.integer({ min: 0, max: 40 }), fc.integer({ min: 0, max: 3 })), { maxLength: 300 }), (pairs) => {
      // tiny ranges: many equal hashes and many equal slot indices (the slot is hi & mask)
      const table = new IdHashTable(1)
      const seen = new Set<string>()
      for (const [hi, lo] of pairs) {
        const key = `${hi}:${lo === 0 && hi === 0 ? 1 : lo}`
        if (table.add(hi >>> 0, lo >>> 0) !== !seen.has(key)) return false
        seen.add(key)
      }
      return table.size === seen.size && table.bytes >= 8 * table.size
    }),
  )
  t.end()
})

t.test('(0, 0) marks an empty slot, so that hash is folded onto (0, 1)', (t) => {
  const table = new IdHashTable()
  t.equal(table.add(0, 0), true)
  t.equal(table.add(0, 1), false, 'the same slot value')
  t.equal(table.size, 1)
  t.equal(table.bytes, 8 << 20, 'a million slots before the first growth')
  t.end()
})

t.test('hashes are deterministic per seed, differ between seeds, and do not collide on a million ids', (t) => {
  const a = new IdHasher(1, 2)
  const b = new IdHasher(1, 3)
  t.same(hashOf(a, 'rollout-7'), hashOf(new IdHasher(1, 2), 'rollout-7'))
  t.not(hashOf(a, 'rollout-7').join(), hashOf(b, 'rollout-7').join())
  // odd lengths, the empty string, non-ASCII and surrogate pairs all hash
  for (const id of ['', 'x', 'xy', 'é', '😀', 'a😀b'])
    t.ok(
      hashOf(a, id).every((lane) => Number.isInteger(lane) && lane >= 0 && lane < 2 ** 32),
      JSON.stringify(id),
    )
  t.not(hashOf(a, 'ab').join(), hashOf(a, 'ab\u0000').join(), 'a trailing NUL is not padding')
  const table = new IdHashTable()
  let collisions = 0
  for (let i = 0; i < 1_000_000; i++) if (!table.add(...hashOf(a, `r${i}`))) collisions++
  t.equal(collisions, 0)
  t.end()
})

t.test('packed hashes read back in order', (t) => {
  fc.assert(
    fc.property(fc.array(fc.integer({ min: 0, max: 2 ** 32 - 1 }), { maxLength: 40 }), (lanes) => {
      const pairs = lanes.length % 2 === 0 ? lanes : lanes.slice(1)
      const read: number[] = []
      // an unaligned view, as LMDB may hand back
      const bytes = packHashes(pairs)
      const unaligned = new Uint8Array(bytes.length + 1).fill(9)
      unaligned.set(bytes, 1)
      forEachHash(unaligned.subarray(1), (index, hi, lo) => {
        if (index !== read.length / 2) throw new Error(`index ${index}`)
        read.push(hi, lo)
      })
      return JSON.stringify(read) === JSON.stringify(pairs)
    }),
  )
  t.end()
})
