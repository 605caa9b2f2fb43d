import t from 'tap'
import { settleWithin } from '../../src/core/settleWithin.js'

t.test('true when the promise settles first, fulfilled or rejected', async (t) => {
  t.equal(await settleWithin(Promise.resolve(1), 1000), true)
  t.equal(await settleWithin(Promise.reject(new Error('no')), 1000), true, 'a rejection is settled too, and never thrown')
})

t.test('false after `ms` for a promise that never settles, and the loop stays alive meanwhile', async (t) => {
  const started = Date.now()
  t.equal(await settleWithin(new Promise(() => {}), 50), false)
  t.ok(Date.now() - started >= 45, 'waited the bound')
})
