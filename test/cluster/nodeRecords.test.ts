/**
 * A run's node records read without a consumer (src/state/cluster/clusterRoles.ts
 * `readNodeRecords`), against a real nats-server: none in an empty bucket; each node's last
 * record; a deleted node's record left out.
 */
import t from 'tap'
import { jetstreamManager } from '@nats-io/jetstream'
import { Kvm } from '@nats-io/kv'
import { readNodeRecords, type NodeRecord } from '../../src/state/cluster/clusterRoles.js'
import { connectNats } from '../../src/state/cluster/natsConnect.js'
import { natsMissing, startNats } from '../support/natsServers.js'

const record = (node: string, step: number): NodeRecord => ({ node, sequencer: false, partitions: [], step, at: new Date(0).toISOString() })

t.test('node records: none, the last of each node, a deleted one left out', { skip: natsMissing }, async (t) => {
  const nats = await startNats()
  t.teardown(() => nats.stop())
  const nc = await connectNats({ servers: nats.url, name: 'node records' })
  t.teardown(() => nc.close())
  const jsm = await jetstreamManager(nc)
  const bucket = 'DS_nr_NODES'
  const kv = await new Kvm(nc).create(bucket, { history: 1 })
  t.same(await readNodeRecords(jsm, kv, bucket), [], 'an empty bucket')
  await kv.put('node.a', JSON.stringify(record('a', 1)))
  await kv.put('node.b', JSON.stringify(record('b', 1)))
  await kv.put('node.a', JSON.stringify(record('a', 2)))
  await kv.put('node.c', JSON.stringify(record('c', 1)))
  await kv.delete('node.c')
  const records = await readNodeRecords(jsm, kv, bucket)
  t.same(records.map((r) => [r.node, r.step]).sort(), [
    ['a', 2],
    ['b', 1],
  ])
})
