/**
 * Cluster nodes' engines against a real nats-server, behind real engine servers: a trainer's
 * acknowledgement on one node shrinks the other node's outbox; a step acknowledged before a
 * node read it is shown (committed, `acknowledged`) but not delivered to that node's trainer;
 * a node opened later starts with the cluster's step and only the unacknowledged steps; and a
 * producer frame a node cannot store (its NATS server killed) is answered `unavailable`.
 */
import { request } from 'node:http'
import t from 'tap'
import { jetstreamManager } from '@nats-io/jetstream'
import { parseConfig } from '../../src/core/config.js'
import { ClusterEngine, type ClusterCommittedBatch } from '../../src/state/cluster/clusterEngine.js'
import { ClusterRoles } from '../../src/state/cluster/clusterRoles.js'
import { decodeAckMessage, decodeMessage, encodeMessage, type AckEntry } from '../../src/state/cluster/messages.js'
import { clusterStatus } from '../../src/state/cluster/clusterStatus.js'
import { openRun } from '../../src/state/cluster/clusterRun.js'
import { connectNats } from '../../src/state/cluster/natsConnect.js'
import { IngestRefused } from '../../src/state/engine.js'
import { EngineServer } from '../../streams/engineServer.js'
import { baseConfig, Client, prompts } from '../serve/support.js'
import { natsMissing, startNats, waitFor } from '../support/natsServers.js'

const config = parseConfig(baseConfig)

const health = (port: number): Promise<{ step: number; outbox: number }> =>
  new Promise((resolve, reject) => {
    request({ host: '127.0.0.1', port, path: '/healthz' }, (res) => {
      let body = ''
      res.on('data', (c: Buffer) => (body += c.toString()))
      res.on('end', () => resolve(JSON.parse(body) as { step: number; outbox: number }))
    })
      .on('error', reject)
      .end()
  })

t.test('two nodes of one run: acknowledgements through either, deliveries only of what is unacknowledged', { skip: natsMissing }, async (t) => {
  const nats = await startNats({ servers: 1 })
  t.teardown(() => nats.stop())
  const nc = await connectNats({ servers: nats.url, name: 'test' })
  t.teardown(() => nc.close())
  const { layout, record } = await openRun({ nc, run: 'eng', config, partitions: 2 })
  const open = async (node: string) => {
    const engine = await ClusterEngine.open({ nc, layout, config, partitions: record.partitions, node })
    const server = new EngineServer({ engine })
    const { port } = await server.listen(0, '127.0.0.1')
    const committed: ClusterCommittedBatch[] = []
    engine.committed.subscribe((batch) => committed.push(batch))
    const elsewhere: number[] = []
    engine.acknowledgedElsewhere.subscribe((step) => elsewhere.push(step))
    return { engine, server, port, committed, elsewhere, url: (path: string) => `ws://127.0.0.1:${port}${path}` }
  }
  const a = await open('a')
  const b = await open('b')
  const roles = await ClusterRoles.start({ js: a.engine.js, jsm: a.engine.jsm, layout, record, node: 'a', engine: a.engine, leaseMs: 1500 })
  t.teardown(async () => {
    await roles.stop()
    for (const node of [a, b]) {
      await node.server.close()
      await node.engine.close()
    }
  })

  // step 1: on both nodes' outboxes, delivered to B's trainer, which acknowledges it there
  const outcome = await a.engine.ingest(prompts('s', 2))
  t.equal(outcome.acked.length, 4)
  await waitFor('step 1 on both nodes', () => a.committed.length === 1 && b.committed.length === 1)
  for (const node of [a, b]) {
    t.equal(node.committed[0].acknowledged, false)
    t.same(node.committed[0].outbox.rollouts.map((r) => r.id).sort(), ['s0-0', 's0-1', 's1-0', 's1-1'], 'the payloads assembled from the logged frame')
  }
  t.equal((await health(a.port)).outbox, 1)
  const trainerB = await Client.open(b.url('/batches'))
  t.teardown(() => trainerB.close())
  const delivered = await trainerB.nth('batch', 1)
  t.equal(delivered.step, 1)
  trainerB.send({ type: 'ack', step: 1, policyVersion: 1 })
  await waitFor('node a to read the acknowledgement', () => a.elsewhere.length === 1)
  t.same(a.elsewhere, [1], 'acknowledged elsewhere')
  t.same(b.elsewhere, [], 'not elsewhere for the node that took it')
  t.equal(a.engine.policyVersion, 1, "the trainer's policy version reaches every node")
  t.same(a.engine.pendingDeliveries(), [])
  await waitFor("node a's server outbox to shrink", async () => (await health(a.port)).outbox === 0)

  // step 2 is acknowledged (by a quick trainer on b) before node a reads it: shown, not delivered
  const trainerA = await Client.open(a.url('/batches'))
  t.teardown(() => trainerA.close())
  t.equal(await b.engine.acknowledge(2, 2), false, 'not pending on b yet: recorded for its policy version')
  await waitFor('node a to read the early acknowledgement', () => a.engine.policyVersion === 2)
  await a.engine.ingest(prompts('t', 2))
  await waitFor('step 2 on node a', () => a.committed.length === 2)
  t.equal(a.committed[1].acknowledged, true)
  t.equal(a.committed[1].delivery.bytes.length, 0, 'no payloads fetched for it')
  t.equal(a.engine.stats().step, 2)
  t.equal(a.engine.stats().outbox, 0)
  // step 3 is delivered to node a's trainer: the first batch it gets
  await a.engine.ingest(prompts('u', 2))
  const first = await trainerA.nth('batch', 1)
  t.equal(first.step, 3, "step 2 was never sent to node a's trainer")
  t.equal((await health(a.port)).outbox, 1)

  // a node opened now starts at the cluster's step, with only step 3 unacknowledged
  const c = await ClusterEngine.open({ nc, layout, config, partitions: record.partitions, node: 'c' })
  t.equal(c.stats().step, 3)
  t.equal(c.lastBatch?.step, 3, 'the last BatchEntry it read')
  t.equal(c.lastBatch?.pipeline.batches, 3)
  t.same(
    c.pendingDeliveries().map((d) => d.step),
    [3],
  )
  t.equal(c.policyVersion, 2)
  t.same(
    [...c.store.summaries()].map((s) => s.step),
    [1, 2, 3],
  )
  t.same(
    [...c.store.summaries(2, 2)].map((s) => s.step),
    [2],
  )
  t.equal(c.store.auxiliary('history'), undefined)
  await c.store.saveAuxiliary('history', {})
  t.equal(await c.failureCause(), undefined)
  t.equal(await c.acknowledge(3), true, 'a pending step acknowledged here')
  t.equal(await c.acknowledge(3), false, 'and not twice')
  await c.close()
  await c.close()
  await t.rejects(c.ingest(prompts('v', 1)), /the engine is closed/)
  await t.rejects(c.acknowledge(4), /the engine is closed/)
})

t.test('a frame a node cannot store is answered unavailable, and nothing is acknowledged', { skip: natsMissing }, async (t) => {
  const nats = await startNats({ servers: 1 })
  t.teardown(() => nats.stop())
  const nc = await connectNats({ servers: nats.url, name: 'test' })
  t.teardown(() => nc.close())
  const { layout, record } = await openRun({ nc, run: 'down', config, partitions: 2 })
  const engine = await ClusterEngine.open({ nc, layout, config, partitions: record.partitions, node: 'a', publishTimeoutMs: 500 })
  const server = new EngineServer({ engine })
  const { port } = await server.listen(0, '127.0.0.1')
  t.teardown(async () => {
    await server.close()
    await engine.close()
  })
  // too many items for a frame's rollout seqs, and a frame of only invalid items: refused before NATS
  await t.rejects(engine.ingest(new Array(16_385).fill({})), /a frame of 16385 rollouts: a cluster node takes at most 16384/)
  const invalid = await engine.ingest([{ id: 'x' }])
  t.same({ acked: invalid.acked, rejected: new Set(invalid.rejected.map((r) => r.index)).size }, { acked: [], rejected: 1 })

  const producer = await Client.open(`ws://127.0.0.1:${port}/ingest`)
  t.teardown(() => producer.close())
  await nats.kill(0)
  producer.send({ type: 'rollouts', rollouts: prompts('k', 1) })
  const error = await producer.nth('error', 1, 15_000)
  t.equal(error.code, 'unavailable')
  t.match(error.reason, /the cluster could not store this frame .*send it again/)
  t.equal(producer.count('ack'), 0)
  await t.rejects(engine.ingest(prompts('j', 1)), IngestRefused)
  t.equal(engine.stats().ingest.ingested, 0)
})

t.test('an acknowledgement NATS does not take is tried again, and given up in time without failing the node', { skip: natsMissing }, async (t) => {
  const nats = await startNats({ servers: 1 })
  t.teardown(() => nats.stop())
  const nc = await connectNats({ servers: nats.url, name: 'test' })
  t.teardown(() => nc.close())
  const { layout, record } = await openRun({ nc, run: 'acks', config, partitions: 1 })
  // the acknowledgements' lines (the followers log their consumers' trouble while NATS is paused too)
  const lines: string[] = []
  const log = (line: string) => void (line.startsWith('the acknowledgement') && lines.push(line))
  const engine = await ClusterEngine.open({ nc, layout, config, partitions: record.partitions, node: 'a', publishTimeoutMs: 300, log })
  const impatient = await ClusterEngine.open({ nc, layout, config, partitions: record.partitions, node: 'b', publishTimeoutMs: 300, ackRetryMs: 0, log })
  const acks = async () => {
    const jsm = await jetstreamManager(nc)
    const entries: AckEntry[] = []
    const info = await jsm.streams.info(layout.streams.acks)
    for (let seq = info.state.first_seq; seq <= info.state.last_seq && info.state.messages > 0; seq++)
      entries.push(decodeMessage<AckEntry>((await jsm.streams.getMessage(layout.streams.acks, { seq }))!.data))
    return entries
  }

  nats.pause(0)
  const stored = engine.acknowledge(1, 7)
  await waitFor('a first attempt refused', () => lines.length === 1)
  t.match(lines[0], /^the acknowledgement of step 1 was not stored \(.+\); trying again$/)
  // three at once: the first alone, the two that came while it was being stored together
  await Promise.all([impatient.acknowledge(2, 8), impatient.acknowledge(4, 10), impatient.acknowledge(5, 11)])
  t.match(lines[1], /^the acknowledgement of step 2 was not stored \(.+\): the step may be delivered again$/, 'no time to try again: given up')
  t.match(lines[2], /^the acknowledgement of steps 4, 5 was not stored \(.+\): the steps may be delivered again$/)
  nats.resume(0)
  t.equal(await stored, false, 'step 1 was not pending here (only its policy version was news)')
  t.match(lines[3], /^the acknowledgement of step 1 is stored \(attempt \d+\)$/)
  // (step 2's attempt, given up, may have been stored after all: it was sent before the pause ended)
  t.same(
    (await acks()).filter((entry) => entry.steps.includes(1)),
    [{ steps: [1], node: 'a', policyVersion: 7 }],
    'stored once NATS answered, once (an attempt that timed out and its retry share a message id)',
  )
  t.equal((await engine.ingest(prompts('q', 1))).acked.length, 2, 'a frame given as items (no raw bytes): stored as bytes')

  nats.pause(0)
  const closing = engine.acknowledge(3, 9)
  await waitFor('a first attempt refused', () => lines.length === 5)
  await engine.close()
  await closing
  t.match(lines[5], /^the acknowledgement of step 3 was not stored \(.+\): the step may be delivered again$/, 'the engine closed meanwhile: given up')
  nats.resume(0)
  await impatient.close()
})

t.test(
  'acknowledgements that come while one is being stored go together in the next message; a foreign ACKS message is skipped',
  { skip: natsMissing },
  async (t) => {
    const nats = await startNats({ servers: 1 })
    t.teardown(() => nats.stop())
    const nc = await connectNats({ servers: nats.url, name: 'test' })
    t.teardown(() => nc.close())
    const { layout, record } = await openRun({ nc, run: 'coalesce', config, partitions: 1 })
    const a = await ClusterEngine.open({ nc, layout, config, partitions: record.partitions, node: 'a' })
    t.teardown(() => a.close())
    // twenty acknowledgements at once, each with a policy version (news, so each is stored)
    const stored = await Promise.all(Array.from({ length: 20 }, (_, k) => a.acknowledge(k + 1, k + 1)))
    t.same(stored, new Array(20).fill(false), 'every one resolves (none of the steps was pending)')
    const jsm = await jetstreamManager(nc)
    const info = await jsm.streams.info(layout.streams.acks)
    const messages: AckEntry[] = []
    for (let seq = 1; seq <= info.state.last_seq; seq++)
      messages.push(decodeAckMessage((await jsm.streams.getMessage(layout.streams.acks, { seq }))!.data, `seq ${seq}`))
    t.same(
      messages,
      [
        { steps: [1], node: 'a', policyVersion: 1 },
        { steps: Array.from({ length: 19 }, (_, k) => k + 2), node: 'a', policyVersion: 20 },
      ],
      'the first alone (nothing was being stored), the nineteen that came meanwhile in one message with their highest policy version',
    )

    // a message that is not this version's acknowledgement: a node reading ACKS says so and goes on
    await a.js.publish(layout.subjects.acks, encodeMessage({ step: 21, node: 'old' } as unknown as AckEntry))
    await a.js.publish(layout.subjects.acks, encodeMessage({ steps: [21], node: 'new', policyVersion: 30 }))
    const lines: string[] = []
    const b = await ClusterEngine.open({ nc, layout, config, partitions: record.partitions, node: 'b', log: (line) => lines.push(line) })
    t.teardown(() => b.close())
    t.equal(b.policyVersion, 30, 'the messages after it are read')
    t.match(lines, [
      /^DS_coalesce_ACKS seq 3: not an acknowledgement message of this dualstream version \(\{steps: \[step ≥ 1\], node, policyVersion\?\}\): .*: skipped$/,
    ])
    const status = await clusterStatus(nc, 'coalesce')
    t.same(status.lastAck, { step: 21, node: 'new', policyVersion: 30 })
  },
)
