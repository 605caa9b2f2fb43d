import t from 'tap'
import { parseConfig } from '../../src/core/config.js'
import { DurableEngine } from '../../src/state/durableEngine.js'
import { baseConfig, prompts, tempDir } from './support.js'

t.test('a step acknowledged twice at once counts once (the outbox count stays right)', async (t) => {
  const engine = await DurableEngine.open({ config: parseConfig(baseConfig), dataDir: tempDir(), watermarkIntervalMs: 0 })
  t.teardown(() => engine.close())
  await engine.ingest(prompts('a', 4))
  await engine.settled()
  t.equal(engine.stats().outbox, 2)
  t.same(await Promise.all([engine.acknowledge(1), engine.acknowledge(1), engine.acknowledge(2)]), [true, false, true])
  t.equal(engine.stats().outbox, 0)
  t.same(await engine.acknowledge(1), false)
  t.equal(engine.stats().outbox, 0)
})
