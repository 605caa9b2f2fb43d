/**
 * The weight-bounded LRU map behind a cluster node's caches: the least recently used goes
 * first when the bound is passed, `get` refreshes and `peek` does not, and a value heavier
 * than the bound is not kept (nor evicts anything).
 */
import t from 'tap'
import { WeightedLru } from '../../src/state/cluster/weightedLru.js'

t.test('bounded by weight, least recently used out first', async (t) => {
  const lru = new WeightedLru<number, string>(10, (s) => s.length)
  lru.set(1, 'aaaa')
  lru.set(2, 'bbbb')
  t.equal(lru.get(1), 'aaaa', 'a read makes 1 the most recently used')
  t.equal(lru.peek(2), 'bbbb', 'a peek leaves 2 the least recently used')
  lru.set(3, 'cccc')
  t.notOk(lru.has(2), '12 > 10: 2 went')
  t.ok(lru.has(1))
  t.ok(lru.has(3))
  lru.set(4, 'x'.repeat(11))
  t.notOk(lru.has(4), 'heavier than the bound: not kept')
  t.ok(lru.has(1) && lru.has(3), 'and nothing evicted for it')
  t.equal(lru.get(9), undefined)
  lru.set(5, 'x'.repeat(10))
  t.same([lru.has(1), lru.has(3), lru.has(5)], [false, false, true], 'exactly the bound: everything else goes')
  lru.set(5, 'yy')
  lru.set(6, 'z'.repeat(8))
  t.same([lru.get(5), lru.get(6)], ['yy', 'z'.repeat(8)], 'a value set again replaces the old one and its weight')
})

t.test('getOrLoad: one load for concurrent reads, kept; a failed load is not kept', async (t) => {
  const lru = new WeightedLru<string, string>(100, (s) => s.length)
  let loads = 0
  const load = async () => {
    loads++
    return 'value'
  }
  t.same(await Promise.all([lru.getOrLoad('k', load), lru.getOrLoad('k', load)]), ['value', 'value'])
  t.equal(loads, 1)
  t.equal(await lru.getOrLoad('k', load), 'value')
  t.equal(loads, 1, 'kept')
  await t.rejects(
    lru.getOrLoad('bad', () => Promise.reject(new Error('gone'))),
    /gone/,
  )
  t.equal(await lru.getOrLoad('bad', load), 'value', 'tried again')
})
