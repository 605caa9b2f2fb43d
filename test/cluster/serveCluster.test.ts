import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { parseConfig } from '../../src/core/config.js'
import { serveCluster, type ClusterReport, type ClusterServeOptions } from '../../src/apps/serveCluster.js'
import { ServeError } from '../../src/apps/serve.js'
import { Client, baseConfig, prompts, type Received } from '../serve/support.js'
import { partitionOf } from '../../src/state/cluster/runLayout.js'
import { jetstream } from '@nats-io/jetstream'
import { connectNats } from '../../src/state/cluster/natsConnect.js'
import { runCli } from '../support/cli.js'
import { natsMissing, startNats, waitFor, type NatsServers } from '../support/natsServers.js'

const getText = (port: number, path: string): Promise<string> =>
  new Promise((resolve, reject) => {
    request({ host: '127.0.0.1', port, path }, (res) => {
      let body = ''
      res.on('data', (c: Buffer) => (body += c.toString()))
      res.on('end', () => resolve(body))
    })
      .on('error', reject)
      .end()
  })

const getJson = async <T>(port: number, path: string): Promise<T> => JSON.parse(await getText(port, path)) as T

interface Node {
  port: number
  output: () => string
  stop: () => Promise<number>
  url: (path: string) => string
}

/** A cluster node in this process, on a free port. */
async function startNode(nats: NatsServers, node: string, extra: Partial<ClusterServeOptions> = {}): Promise<Node> {
  let output = ''
  const io = { stdout: { write: (s: string) => ((output += s), true) } as unknown as NodeJS.WritableStream }
  const stop = new AbortController()
  let listening!: (port: number) => void
  const port = new Promise<number>((resolve) => (listening = resolve))
  const done = serveCluster(
    {
      config: parseConfig(baseConfig),
      nats: nats.url,
      run: 'e2e',
      partitions: 4,
      host: '127.0.0.1',
      port: 0,
      tokens: {},
      node,
      leaseMs: 1500,
      onListening: (parts) => listening(parts.port),
      ...extra,
    },
    io,
    stop.signal,
  )
  const bound = await Promise.race([port, done.then((code) => Promise.reject(new Error(`node ${node} stopped (${code}) before listening:\n${output}`)))])
  return {
    port: bound,
    output: () => output,
    stop: async () => {
      stop.abort()
      return done
    },
    url: (path) => `ws://127.0.0.1:${bound}${path}`,
  }
}

t.test('a cluster of two nodes on one NATS server: producers on both, one trainer, every rollout in exactly one batch', { skip: natsMissing }, async (t) => {
  const nats = await startNats({ servers: 1 })
  t.teardown(() => nats.stop())
  const a = await startNode(nats, 'a')
  const b = await startNode(nats, 'b')
  t.teardown(async () => {
    await a.stop()
    await b.stop()
  })
  t.match(a.output(), /node a created run e2e \(4 partitions, 1 replica\)/)
  t.match(b.output(), /node b joined run e2e/)

  const onA = await Client.open(a.url('/ingest'))
  const onB = await Client.open(b.url('/ingest'))
  const sent = [...prompts('a', 8), ...prompts('b', 8)]
  onA.send({ type: 'rollouts', rollouts: sent.slice(0, 16) })
  onB.send({ type: 'rollouts', rollouts: sent.slice(16) })
  t.same((await onA.nth('ack')).ids.length, 16)
  t.same((await onB.nth('ack')).ids.length, 16)
  // a resend (the producer did not hear its ack) is acknowledged again and counted once
  onB.send({ type: 'rollouts', rollouts: sent.slice(16, 20) })
  await onB.nth('ack', 2)
  // one more batch, of prompts in the partitions of the resent ones: their groups come after the
  // duplicates in those partitions, so the batch carries the counts
  const more = ['b0', 'b1'].map((promptId) => {
    let k = 0
    while (partitionOf(`c${k}`, 4) !== partitionOf(promptId, 4)) k++
    return [0, 1].map((i) => ({ ...sent[0], id: `c${k}-${promptId}-${i}`, promptId: `c${k}` }))
  })
  onA.send({ type: 'rollouts', rollouts: more.flat() })
  await onA.nth('ack', 2)
  const expected = [...sent, ...more.flat()]

  const trainer = await Client.open(b.url('/batches'))
  const batches: Received[] = []
  for (let step = 1; step <= 9; step++) {
    const batch = await trainer.nth('batch', step)
    batches.push(batch)
    trainer.send({ type: 'ack', step: batch.step, policyVersion: step })
  }
  t.same(
    batches.map((batch) => batch.step),
    [1, 2, 3, 4, 5, 6, 7, 8, 9],
  )
  const ids = batches.flatMap((batch) => batch.rollouts.map((r: { id: string }) => r.id)).sort()
  t.same(ids, expected.map((r) => r.id).sort(), 'every rollout in exactly one batch')

  // both nodes show the cluster's step and outbox, not their own
  await waitFor('node a to read every acknowledgement', async () => {
    const health = await getJson<{ step: number; outbox: number; policyVersion?: number }>(a.port, '/healthz')
    return health.step === 9 && health.outbox === 0 && health.policyVersion === 9
  })
  // a joined first and took every partition; once b is up a gives back one a round until each holds its share
  const reports = await waitFor('the partitions to settle, two a node', async () => {
    const now = [await getJson<ClusterReport>(a.port, '/cluster'), await getJson<ClusterReport>(b.port, '/cluster')]
    return now.every((r) => r.roles.partitions.length === 2) && now
  })
  t.equal(reports.filter((r) => r.roles.sequencer).length, 1, 'one sequencer')
  t.same(reports.flatMap((r) => r.roles.partitions).sort(), [0, 1, 2, 3], 'every partition owned once')
  // the dashboard names the node and the sequencer; /metrics has the roles
  await waitFor('node a to count both nodes', async () => /^dualstream_cluster_nodes 2$/m.test(await getText(a.port, '/metrics')))
  const viewer = await Client.open(a.url('/telemetry'))
  const hello = await viewer.nth('hello')
  const sequencerNode = reports.find((r) => r.roles.sequencer)!.node
  t.match(hello.cluster, { run: 'e2e', node: 'a', partitions: 4, sequencer: sequencerNode, nodes: 2 })
  t.equal(hello.step, 9, "the run's step, whichever node sequenced it")
  viewer.close()
  const metrics = await getText(a.port, '/metrics')
  t.match(metrics, /^dualstream_cluster_sequencer [01]$/m)
  t.match(metrics, /^dualstream_cluster_partitions_owned [1-4]$/m)
  t.match(metrics, /^dualstream_cluster_nodes 2$/m)
  const health = await getJson<{ pipeline: { rolloutsInBatches: number }; ingest: { duplicate: number } }>(b.port, '/healthz')
  t.equal(health.pipeline.rolloutsInBatches, 36)
  t.equal(health.ingest.duplicate, 4, 'the resent rollouts are counted as duplicates by their partitions')

  // replay --nats: the same batches and λ as delivered, every group and batch equal to the stored ones
  const dir = mkdtempSync(join(tmpdir(), 'dualstream-cluster-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const configFile = join(dir, 'config.json')
  writeFileSync(configFile, JSON.stringify(baseConfig))
  const replayed = await runCli(['replay', '--config', configFile, '--nats', nats.url, '--run', 'e2e'])
  t.equal(replayed.code, 0, replayed.stderr)
  t.match(replayed.stderr, /→ 9 batches; every group and batch equals the stored one/)
  const lines = replayed.stdout
    .trim()
    .split('\n')
    .map((line) => JSON.parse(line) as { step: number; lambda: Record<string, { after: number }>; advantages: Record<string, number> })
  t.same(
    lines.map((line) => [line.step, line.lambda.consistency.after]),
    batches.map((batch) => [batch.step, batch.lambda.consistency.after]),
    'λ at every step as delivered',
  )
  t.same(lines[0].advantages, Object.fromEntries(batches[0].rollouts.map((r: { id: string; advantage: number }) => [r.id, r.advantage])))
  // under another config: a counterfactual, not compared
  writeFileSync(configFile, JSON.stringify({ ...baseConfig, batchGroups: 3 }))
  const counterfactual = await runCli(['replay', '--config', configFile, '--nats', nats.url, '--run', 'e2e'])
  t.equal(counterfactual.code, 0)
  t.match(counterfactual.stderr, /under another config than the run's: not compared/)

  // cluster status: read from NATS alone
  const status = await runCli(['cluster', 'status', '--nats', nats.url, '--run', 'e2e'])
  t.equal(status.code, 0, status.stderr)
  t.match(status.stdout, /run e2e: 4 partitions, 1 replica/)
  t.match(status.stdout, /step 9, λ consistency=/)
  t.match(status.stdout, /0 steps not acknowledged; last ack: step 9 \(policy version 9\) via b/)
  t.match(status.stdout, /sequencer: [ab]\n/)
  t.match(status.stdout, /nodes \(2\):\n {2}a http:\/\/127\.0\.0\.1:\d+: /)
  const json = JSON.parse((await runCli(['cluster', 'status', '--nats', nats.url, '--run', 'e2e', '--json'])).stdout) as {
    owners: string[]
    streams: Record<string, { messages: number }>
  }
  t.same(json.owners.filter((owner) => owner === 'a' || owner === 'b').length, 4)
  // the 9 steps in as many messages as the sequencer's publishes made (it sends together the steps made while one is in flight)
  const batchesMessages = json.streams.DS_e2e_BATCHES.messages
  t.ok(batchesMessages >= 1 && batchesMessages <= 9, `${batchesMessages} BATCHES messages`)

  const sequencerGauge = (text: string) => Number(/^dualstream_cluster_sequencer (\d)$/m.exec(text)![1])
  t.equal(sequencerGauge(metrics) + sequencerGauge(await getText(b.port, '/metrics')), 1, 'exactly one node reports itself the sequencer')

  onA.close()
  onB.close()
  trainer.close()
  // a message no sequencer wrote, appended to BATCHES once the nodes are gone: replay names it and exits 1
  await a.stop()
  await b.stop()
  const nc = await connectNats({ servers: nats.url })
  const js = jetstream(nc)
  const last = await (await js.jetstreamManager()).streams.getMessage('DS_e2e_BATCHES', { last_by_subj: 'ds.e2e.batches' })
  await js.publish('ds.e2e.batches', last!.data)
  await nc.close()
  writeFileSync(configFile, JSON.stringify(baseConfig))
  const forged = await runCli(['replay', '--config', configFile, '--nats', nats.url, '--run', 'e2e'])
  t.equal(forged.code, 1)
  t.match(forged.stderr, `replay: 1 differences from the stored run:\nBATCHES seq ${batchesMessages + 1}: stored, but the replay of GROUPS does not reach it`)
})

t.test('replay --nats and cluster status say what is wrong in one line', { skip: natsMissing }, async (t) => {
  const nats = await startNats({ servers: 1 })
  t.teardown(() => nats.stop())
  const dir = mkdtempSync(join(tmpdir(), 'dualstream-cluster-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const configFile = join(dir, 'config.json')
  writeFileSync(configFile, JSON.stringify(baseConfig))
  const noRun = await runCli(['replay', '--config', configFile, '--nats', nats.url])
  t.equal(noRun.code, 2)
  t.match(noRun.stderr, /--run <name> is required with --nats/)
  const missing = await runCli(['replay', '--config', configFile, '--nats', nats.url, '--run', 'nothing'])
  t.equal(missing.code, 1)
  t.match(missing.stderr, /dualstream replay: .*nothing/)
  const status = await runCli(['cluster', 'status', '--nats', nats.url, '--run', 'nothing'])
  t.equal(status.code, 1)
  t.match(status.stderr, /dualstream cluster status: .*nothing/)
  const unreachable = await runCli(['replay', '--config', configFile, '--nats', 'nats://127.0.0.1:1', '--run', 'x'])
  t.equal(unreachable.code, 1)
  t.match(unreachable.stderr, /dualstream replay: .*127\.0\.0\.1:1/)
})

t.test('a node whose config differs from the run is refused with the difference named', { skip: natsMissing }, async (t) => {
  const nats = await startNats({ servers: 1 })
  t.teardown(() => nats.stop())
  const a = await startNode(nats, 'a')
  t.teardown(() => a.stop())
  await t.rejects(startNode(nats, 'b', { config: parseConfig({ ...baseConfig, groupSize: 4 }) }), ServeError)
  await t.rejects(startNode(nats, 'b', { config: parseConfig({ ...baseConfig, groupSize: 4 }) }), /differs at groupSize: 4 vs 2/)
  await t.rejects(startNode(nats, 'c', { partitions: 8 }), /has 4 partitions; --partitions 8 cannot change that/)
})
