import t from 'tap'
import fc from 'fast-check'
import { partitionOf, runLayout } from '../../src/state/cluster/runLayout.js'

/** The definition, as written: FNV-1a over the bytes TextEncoder gives, modulo the partitions. */
function reference(promptId: string, partitions: number): number {
  let hash = 0x811c9dc5
  for (const byte of new TextEncoder().encode(promptId)) {
    hash ^= byte
    hash = Math.imul(hash, 0x01000193) >>> 0
  }
  return hash % partitions
}

t.test('partitionOf is FNV-1a (32 bits) of the UTF-8 bytes', async (t) => {
  // the published FNV-1a test vectors, taken modulo 2^32 - 1 partitions' worth: the hash itself
  const whole = 2 ** 32
  t.equal(partitionOf('', whole), 0x811c9dc5)
  t.equal(partitionOf('a', whole), 0xe40c292c)
  t.equal(partitionOf('foobar', whole), 0xbf9cf968)
  // two-, three- and four-byte characters, a lone surrogate at the end and one in the middle
  for (const s of ['é', 'prompt-€', '𝔸𝔹', 'a\ud800', '\udc00b', '\ud83d\ude00x'] as const)
    t.equal(partitionOf(s, whole), reference(s, whole), JSON.stringify(s))
})

t.test('partitionOf equals the reference for any string and any partition count', async (t) => {
  fc.assert(
    fc.property(fc.oneof(fc.string({ unit: 'binary' }), fc.string({ unit: 'grapheme' }), fc.string()), fc.integer({ min: 1, max: 1024 }), (s, partitions) => {
      return partitionOf(s, partitions) === reference(s, partitions)
    }),
    { numRuns: 2000 },
  )
  t.pass('2000 strings')
})

t.test('runLayout refuses a name NATS could not carry', async (t) => {
  t.throws(() => runLayout('a.b'), /run name "a.b"/)
  t.equal(runLayout('exp7').subjects.partition(3), 'ds.exp7.part.3')
})
