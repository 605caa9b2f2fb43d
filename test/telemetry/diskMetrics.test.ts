/** `/metrics` says where the data folder's disk stands: free bytes, the reserve, and whether rollouts are refused. */
import t from 'tap'
import { parseConfig } from '../../src/core/config.js'
import { DurableEngine } from '../../src/state/durableEngine.js'
import { EngineTelemetry } from '../../streams/telemetry/telemetry.js'
import { baseConfig, tempDir } from '../serve/support.js'
import { VirtualClock } from '../support/virtualTime.js'

const MiB = 1024 * 1024

t.test('disk gauges follow the guard', async (t) => {
  let free = 100 * MiB
  const clock = new VirtualClock()
  const engine = await DurableEngine.open({
    config: parseConfig(baseConfig),
    dataDir: tempDir(),
    watermarkIntervalMs: 0,
    scheduler: clock,
    diskReserveBytes: 10 * MiB,
    statfs: async () => ({ free, total: 200 * MiB }),
  })
  const telemetry = new EngineTelemetry(engine, { processMetrics: false })
  t.teardown(async () => {
    telemetry.close()
    await engine.close()
  })
  const text = () => telemetry.metrics.registry.metrics()
  t.match(await text(), /dualstream_disk_free_bytes 104857600\n[\s\S]*dualstream_disk_reserve_bytes 10485760\n[\s\S]*dualstream_disk_full 0\n/)
  free = 5 * MiB
  await engine.disk!.check()
  t.match(await text(), /dualstream_disk_free_bytes 5242880\n[\s\S]*dualstream_disk_full 1\n/)
})

t.test('no disk gauges without a guard', async (t) => {
  const engine = await DurableEngine.open({ config: parseConfig(baseConfig), dataDir: tempDir(), watermarkIntervalMs: 0 })
  const telemetry = new EngineTelemetry(engine, { processMetrics: false })
  t.teardown(async () => {
    telemetry.close()
    await engine.close()
  })
  t.notMatch(await telemetry.metrics.registry.metrics(), /dualstream_disk/)
})
