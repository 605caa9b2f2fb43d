/**
 * maxAsync with the Python package: the trainer's reported policy version reaches producers in
 * credit frames (`trainer_version`, `min_policy_version`, `wait_for_trainer_version`; `wait_for_credit`), and a
 * rollout sampled by a version below T - maxAsync is refused as a stale item.
 */
import t from 'tap'
import { baseConfig, startServer } from '../serve/support.js'
import { missing, scenario } from './support.js'

t.test('the producer follows the trainer’s policy version; stale rollouts are refused by index', { skip: missing }, async (t) => {
  const served = await startServer({ config: { ...baseConfig, maxAsync: 1 } })
  t.teardown(() => served.close())
  const result = await scenario(['max-async', '--ingest', served.url('/ingest'), '--batches', served.url('/batches')])
  t.same(result.before, { trainerVersion: null, minPolicyVersion: null }, 'no version before the trainer reports one')
  t.equal(result.reached, 3)
  t.same(result.after, { trainerVersion: 3, minPolicyVersion: 2 })
  t.equal(result.refused.length, 1, 'only the rollout of version 1 (below 3 - 1) is refused')
  t.match(result.refused[0], { index: 1, id: 'w1', field: 'policyVersion', reason: /^stale: / })
  t.equal(result.room, 4096, 'wait_for_credit: the whole credit is room once every frame is answered')
  t.equal(result.credit, 4096)
})
