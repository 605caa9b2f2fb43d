import fc from 'fast-check'
import t from 'tap'
import { SeqWindow } from '../../src/state/seqWindow.js'

t.test('the lowest seq inside, against a Set, for any adds and removes', (t) => {
  fc.assert(
    fc.property(fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 1, max: 5000 }), fc.nat()), { maxLength: 400 }), fc.nat(100), (ops, start) => {
      const window = new SeqWindow()
      const reference = new Set<number>()
      let next = start
      for (const [add, gap, pick] of ops) {
        if (add || reference.size === 0) {
          next += gap
          window.add(next)
          reference.add(next)
        } else {
          const victim = [...reference][pick % reference.size]
          window.remove(victim)
          reference.delete(victim)
        }
        window.remove(next + 1) // never added: ignored
        const expected = reference.size === 0 ? -1 : Math.min(...reference)
        if (window.lowest(-1) !== expected || window.size !== reference.size) return false
      }
      return true
    }),
  )
  t.end()
})

t.test('removing below the window is ignored', (t) => {
  const window = new SeqWindow()
  window.add(10)
  window.remove(3)
  t.equal(window.lowest(-1), 10)
  t.equal(window.size, 1)
  t.end()
})
