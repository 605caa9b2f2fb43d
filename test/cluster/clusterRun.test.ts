/**
 * Creating and joining a cluster run: `firstDifference` names where two configs differ,
 * `clusterSize` counts the NATS servers a connection sees, and `openRun` records a new run
 * and refuses a node that asks for what the run is not (bad partitions or replicas, more
 * replicas than servers, another config, other partitions or replicas than the run's, a run
 * whose messages are of another format).
 */
import t from 'tap'
import { jetstream, jetstreamManager } from '@nats-io/jetstream'
import { Kvm } from '@nats-io/kv'
import { connect } from '@nats-io/transport-node'
import { parseConfig } from '../../src/core/config.js'
import { clusterSize, DEFAULT_PARTITIONS, firstDifference, MESSAGES_FORMAT, openRun, RunMismatchError } from '../../src/state/cluster/clusterRun.js'
import { replayRun } from '../../src/state/cluster/replayRun.js'
import { natsMissing, startNats } from '../support/natsServers.js'

const config = parseConfig({
  groupSize: 2,
  batchGroups: 2,
  objectives: [{ channel: 'accuracy' }],
  constraints: [{ channel: 'consistency', sense: '>=', threshold: 0.9, sampleThreshold: 0.5, dual: { rule: 'sgd', lr: 0.5 } }],
})

t.test('firstDifference names the first path where two values differ', async (t) => {
  t.equal(firstDifference({ a: 1, b: [1, 2] }, { a: 1, b: [1, 2] }), undefined)
  t.equal(firstDifference({ groupSize: 8 }, { groupSize: 4 }), 'groupSize: 8 vs 4')
  t.equal(firstDifference({ c: [{ lr: 1 }, { lr: 2 }] }, { c: [{ lr: 1 }, { lr: 3 }] }), 'c[1].lr: 2 vs 3')
  t.equal(firstDifference({ a: { b: { c: 1 } } }, { a: { b: {} } }), 'a.b.c: 1 vs undefined')
  t.equal(firstDifference({ a: 1 }, { a: 1, extra: true }), 'extra: undefined vs true', 'a key only the second has')
  t.equal(firstDifference({ a: [1] }, { a: { 0: 1 } }), 'a: [1] vs {"0":1}', 'an array is not an object with the same keys')
  t.equal(firstDifference({ a: null }, { a: {} }), 'a: null vs {}')
  t.equal(firstDifference(1, 2), '(the whole config): 1 vs 2')
  t.equal(firstDifference(Number.NaN, Number.NaN), undefined, 'NaN equals itself (Object.is)')
})

t.test('one server', { skip: natsMissing }, async (t) => {
  const nats = await startNats({ servers: 1 })
  t.teardown(() => nats.stop())
  const nc = await connect({ servers: nats.urls })
  t.teardown(() => nc.close())

  t.equal(clusterSize(nc), 1)

  t.test('bad partitions and replicas are refused before anything is created', async (t) => {
    for (const partitions of [0, 1025, 2.5, Number.NaN])
      await t.rejects(openRun({ nc, run: 'bad', config, partitions }), {
        name: 'RunMismatchError',
        message: new RegExp(`^partitions: must be an integer from 1 to 1024, got ${partitions}$`),
      })
    for (const replicas of [0, 6, 1.5])
      await t.rejects(openRun({ nc, run: 'bad', config, replicas }), {
        name: 'RunMismatchError',
        message: new RegExp(`^replicas: must be an integer from 1 to 5, got ${replicas}$`),
      })
    await t.rejects(openRun({ nc, run: 'bad', config, replicas: 2 }), {
      name: 'RunMismatchError',
      message: 'replicas: 2 asked, but the NATS cluster has 1 server',
    })
    const jsm = await jetstreamManager(nc)
    const streams: string[] = []
    for await (const name of jsm.streams.names()) streams.push(name)
    t.same(streams, [], 'no stream nor bucket was made')
  })

  t.test('the first node creates the run; the next joins it, or is refused with the difference named', async (t) => {
    const first = await openRun({ nc, run: 'r1', config })
    t.equal(first.created, true)
    t.same({ partitions: first.record.partitions, replicas: first.record.replicas }, { partitions: DEFAULT_PARTITIONS, replicas: 1 })
    t.equal(first.record.config, config)
    const info = await first.jsm.streams.info(first.layout.streams.rollouts)
    t.equal(info.config.num_replicas, 1)

    const joined = await openRun({ nc, run: 'r1', config, partitions: DEFAULT_PARTITIONS, replicas: 1 })
    t.equal(joined.created, false)
    t.equal(joined.record.created, first.record.created, "the run record is the first node's")
    // an unset λmax is Infinity, which JSON stores as null: a joining node must not run with λmax null (every λ clipped to 0)
    t.equal(joined.record.config.constraints[0].dual.max, Infinity)
    t.equal(joined.record.config, config, "a joining node runs with its own parsed config (equal to the run's)")

    const other = { ...config, groupSize: 4 }
    const refused = await openRun({ nc, run: 'r1', config: other }).catch((error: unknown) => error)
    t.ok(refused instanceof RunMismatchError)
    t.equal((refused as Error).message, "run r1 was created with another config; this node's differs at groupSize: 4 vs 2 (this node vs the run)")
    await t.rejects(openRun({ nc, run: 'r1', config, partitions: 4 }), {
      name: 'RunMismatchError',
      message: 'run r1 has 8 partitions; --partitions 4 cannot change that',
    })

    await openRun({ nc, run: 'r2', config, partitions: 2 })
    const r2 = await openRun({ nc, run: 'r2', config })
    t.equal(r2.record.partitions, 2, "a joining node that names no partition count takes the run's")
  })

  t.test('a run whose messages are of another format is refused by a joining node and by replay', async (t) => {
    const first = await openRun({ nc, run: 'old', config })
    t.equal(first.record.format, MESSAGES_FORMAT, 'a new run records the format of its messages')
    // as the version before columnar GROUPS recorded a run: no format
    const bucket = await new Kvm(jetstream(nc)).open(first.layout.buckets.run)
    const { format: _format, ...before } = first.record
    await bucket.put('run', JSON.stringify(before))
    const message = `run old was created by a dualstream whose cluster messages are format 1; this one reads and writes format ${MESSAGES_FORMAT}: finish the run with the version that created it, or start a new run`
    await t.rejects(openRun({ nc, run: 'old', config }), { name: 'RunMismatchError', message })
    await t.rejects(
      replayRun({ nc, run: 'old' }, () => {}),
      { name: 'RunMismatchError', message },
    )
  })
})

t.test('three servers: replicas default to 3, and no more than there are servers', { skip: natsMissing }, async (t) => {
  const nats = await startNats({ servers: 3 })
  t.teardown(() => nats.stop())
  const nc = await connect({ servers: nats.urls[0] })
  t.teardown(() => nc.close())
  t.equal(clusterSize(nc), 3, "the servers the connection's INFO names (itself and its routes)")
  await t.rejects(openRun({ nc, run: 'r3', config, replicas: 4 }), {
    name: 'RunMismatchError',
    message: 'replicas: 4 asked, but the NATS cluster has 3 servers',
  })
  const opened = await openRun({ nc, run: 'r3', config, partitions: 2 })
  t.equal(opened.record.replicas, 3)
  t.equal((await opened.jsm.streams.info(opened.layout.streams.batches)).config.num_replicas, 3)
  await t.rejects(openRun({ nc, run: 'r3', config, replicas: 1 }), {
    name: 'RunMismatchError',
    message: 'run r3 has 3 replicas; --replicas 1 cannot change that',
  })
})
