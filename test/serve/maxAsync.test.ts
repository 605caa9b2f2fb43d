/**
 * Staleness by admission (`maxAsync`, PROTOCOL.md "Credit"): credit frames carry the trainer's
 * policy version, and with `maxAsync: k` the oldest version admitted; older rollouts are refused
 * at the door instead of being logged and dropped as stale later.
 */
import t from 'tap'
import { ConfigError, parseConfig } from '../../src/core/config.js'
import { Client, baseConfig, rollout, startServer } from './support.js'

const versioned = (prefix: string, version: number | undefined) =>
  [0, 1].map((i) => rollout(`${prefix}-${i}`, prefix, i, 1, version === undefined ? {} : { policyVersion: version }))

t.test('credit frames carry the trainer version; without maxAsync every version is admitted', async (t) => {
  const served = await startServer({ config: { ...baseConfig, maxStaleness: 1 } })
  t.teardown(() => served.close())
  const producer = await Client.open(served.url('/ingest'))
  const trainer = await Client.open(served.url('/batches'))
  await producer.nth('credit')
  t.same(producer.of('credit')[0], { type: 'credit', credit: 4096 }, 'no version before a trainer reported one')
  producer.send({ type: 'rollouts', rollouts: [...versioned('a', 0), ...versioned('b', 0)] })
  const batch = await trainer.nth('batch')
  trainer.send({ type: 'ack', step: batch.step, policyVersion: 5 })
  await producer.until(() => producer.of('credit').some((c) => c.policyVersion === 5), 10_000, 'a credit frame with the version')
  t.same(producer.of('credit').at(-1), { type: 'credit', credit: 4096, policyVersion: 5 })
  // version 1 is 4 behind: admitted (no maxAsync), then dropped by dropStale (maxStaleness 1)
  producer.send({ type: 'rollouts', rollouts: versioned('c', 1) })
  await producer.nth('ack', 2)
  t.same(producer.of('ack')[1].ids, ['c-0', 'c-1'])
  t.equal(producer.of('rejected').length, 0)
  await served.engine.settled()
  t.equal(served.engine.stats().pipeline.stale, 2, 'dropped as stale after being logged')
  // the same version reported again changes nothing: no new credit frame
  const credits = producer.of('credit').length
  trainer.send({ type: 'ack', step: batch.step, policyVersion: 5 })
  trainer.send({ type: 'probe' })
  await trainer.nth('error')
  await served.server.acknowledgementsApplied()
  t.equal(producer.of('credit').length, credits)
  await Promise.all([producer.close(), trainer.close()])
})

t.test('maxAsync: k — credit says the oldest version admitted; older rollouts are refused as items, by name', async (t) => {
  const served = await startServer({ config: { ...baseConfig, maxStaleness: 3, maxAsync: 2 } })
  t.teardown(() => served.close())
  const producer = await Client.open(served.url('/ingest'))
  const trainer = await Client.open(served.url('/batches'))
  producer.send({ type: 'rollouts', rollouts: [...versioned('a', 0), ...versioned('b', 0)] })
  const batch = await trainer.nth('batch')
  trainer.send({ type: 'ack', step: batch.step, policyVersion: 7 })
  await producer.until(() => producer.of('credit').some((c) => c.policyVersion === 7), 10_000, 'a credit frame with the version')
  t.same(producer.of('credit').at(-1), { type: 'credit', credit: 4096, policyVersion: 7, minPolicyVersion: 5 })
  producer.send({ type: 'rollouts', rollouts: [...versioned('old', 4), ...versioned('ok', 5), ...versioned('none', undefined)] })
  await producer.nth('ack', 2)
  const reason = 'stale: sampled by policy version 4, the trainer is at 7 and maxAsync is 2 (needs >= 5): sync the weights'
  t.same(producer.of('rejected')[0].errors, [
    { index: 0, id: 'old-0', field: 'policyVersion', reason },
    { index: 1, id: 'old-1', field: 'policyVersion', reason },
  ])
  t.same(producer.of('ack')[1].ids, ['ok-0', 'ok-1', 'none-0', 'none-1'], 'version 5 and unversioned rollouts are admitted')
  t.equal(served.engine.stats().ingest.rejected.stale, 2)
  await served.engine.settled()
  t.equal(served.engine.stats().pipeline.stale, 0, 'nothing logged was dropped as stale')
  await Promise.all([producer.close(), trainer.close()])

  // the version survives a restart (read from the log)
  const dataDir = served.dataDir
  await served.close()
  const again = await startServer({ config: { ...baseConfig, maxStaleness: 3, maxAsync: 2 }, dataDir })
  t.teardown(() => again.close())
  t.equal(again.engine.policyVersion, 7)
  const next = await Client.open(again.url('/ingest'))
  t.same(await next.nth('credit'), { type: 'credit', credit: 4096, policyVersion: 7, minPolicyVersion: 5 })
  await next.close()
})

t.test('maxAsync must not exceed maxStaleness (admitted rollouts would be dropped later)', async (t) => {
  t.throws(() => parseConfig({ ...baseConfig, maxStaleness: 1, maxAsync: 2 }), new ConfigError(['maxAsync: must be <= maxStaleness (1)']))
  t.equal(parseConfig({ ...baseConfig, maxAsync: 2 }).maxAsync, 2, 'without maxStaleness, any k')
  t.throws(() => parseConfig({ ...baseConfig, maxAsync: -1 }), /maxAsync: must be >= 0/)
})
