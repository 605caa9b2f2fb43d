import { createServer } from 'node:net'
import t from 'tap'
import { parseConfig } from '../../src/core/config.js'
import { ServeError } from '../../src/apps/serve.js'
import { serveCluster } from '../../src/apps/serveCluster.js'
import { openRun } from '../../src/state/cluster/clusterRun.js'
import { clusterStatus, formatClusterStatus } from '../../src/state/cluster/clusterStatus.js'
import { connectNats } from '../../src/state/cluster/natsConnect.js'
import { runLayout } from '../../src/state/cluster/runLayout.js'
import { baseConfig } from '../serve/support.js'
import { natsMissing, startNats } from '../support/natsServers.js'

const io = { stdout: { write: () => true } as unknown as NodeJS.WritableStream }

t.test('a run name NATS could not carry is refused with the rule', async (t) => {
  t.throws(() => runLayout('exp.7'), /run name "exp\.7": use 1 to 64 letters, digits, "_" or "-"/)
  t.throws(() => runLayout(''), /run name ""/)
  t.equal(runLayout('exp_7-b').streams.batches, 'DS_exp_7-b_BATCHES')
})

t.test('serve --nats refuses before it connects: a host without tokens, bad TLS, NATS unreachable', async (t) => {
  const options = { config: parseConfig(baseConfig), run: 'x', port: 0, tokens: {} }
  const stop = new AbortController()
  await t.rejects(serveCluster({ ...options, nats: 'nats://127.0.0.1:1', host: '0.0.0.0' }, io, stop.signal), ServeError)
  await t.rejects(serveCluster({ ...options, nats: 'nats://127.0.0.1:1', host: '127.0.0.1', tls: { cert: 'no', key: 'no' } }, io, stop.signal), ServeError)
  await t.rejects(serveCluster({ ...options, nats: 'nats://127.0.0.1:1', host: '127.0.0.1' }, io, stop.signal), {
    name: 'ServeError',
    message: /127\.0\.0\.1:1/,
  })
})

t.test('cluster status of a run no node has served yet: no nodes, no leases, nothing acknowledged', { skip: natsMissing }, async (t) => {
  const nats = await startNats({ servers: 1 })
  t.teardown(() => nats.stop())
  const nc = await connectNats({ servers: nats.url })
  t.teardown(() => nc.close())
  await openRun({ nc, run: 'empty', config: parseConfig({ ...baseConfig, constraints: [] }), partitions: 2 })
  const status = await clusterStatus(nc, 'empty')
  t.match(status, {
    run: 'empty',
    partitions: 2,
    replicas: 1,
    nodes: [],
    sequencer: undefined,
    owners: [undefined, undefined],
    step: 0,
    lambda: {},
    pending: 0,
  })
  t.equal(status.lastAck, undefined)
  const text = formatClusterStatus(status)
  t.match(text, /^run empty: 2 partitions, 1 replica, created /)
  t.match(text, /step 0; 0 steps not acknowledged; last ack: none\n/)
  t.match(text, /sequencer: nobody \(free\)\npartitions: 0=- 1=-\nnodes \(0\):\nstreams:\n {2}DS_empty_ROLLOUTS: 0 messages, 0 bytes/)
  // one step pending, acknowledged without a policy version: the singular and the plain ack
  t.match(
    formatClusterStatus({ ...status, pending: 1, replicas: 3, lastAck: { step: 4, node: 'a' } }),
    /3 replicas.*\n.*1 step not acknowledged; last ack: step 4 via a\n/,
  )
  // a node that has not said where it serves yet, beside one that has
  const nodes = [
    { node: 'a', sequencer: true, partitions: [0], step: 3, at: 'then' },
    { node: 'b', url: 'http://10.0.0.2:8787', sequencer: false, partitions: [1], step: 3, at: 'then' },
  ]
  t.match(
    formatClusterStatus({ ...status, nodes }),
    /nodes \(2\):\n {2}a: sequencer, partitions \[0\], at step 3 \(reported then\)\n {2}b http:\/\/10\.0\.0\.2:8787: partitions \[1\]/,
  )
})

t.test('a cluster node with the default lease and no constraints starts, says so, and stops; a busy port is refused', { skip: natsMissing }, async (t) => {
  const nats = await startNats({ servers: 1 })
  t.teardown(() => nats.stop())
  let output = ''
  const lines = { stdout: { write: (s: string) => ((output += s), true) } as unknown as NodeJS.WritableStream }
  const stop = new AbortController()
  let port = 0
  const config = parseConfig({ ...baseConfig, constraints: [] })
  const options = { config, nats: nats.url, run: 'plain', host: '127.0.0.1', tokens: {}, node: 'solo' }
  const done = serveCluster({ ...options, port: 0, onListening: (parts) => ((port = parts.port), stop.abort()) }, lines, stop.signal)
  t.equal(await done, 0)
  t.match(output, /node solo created run plain \(8 partitions, 1 replica\): step 0, 0 batches unacknowledged\n/)
  t.match(output, /dualstream serve: stopped\n/)
  // the port it had, taken now by someone else
  const blocker = createServer()
  await new Promise<void>((resolve) => blocker.listen(port, '127.0.0.1', resolve))
  t.teardown(() => blocker.close())
  await t.rejects(serveCluster({ ...options, node: 'late', port }, lines, new AbortController().signal), {
    name: 'ServeError',
    message: /cannot listen on 127\.0\.0\.1:\d+/,
  })
})
