/**
 * The cluster flags of the CLI: `serve --nats` needs `--run`, `serve` needs `--data` or
 * `--nats`, both refused with exit 2 and the flag named; and a `serve --nats` node started
 * through the CLI (in this process) creates its run, reports itself in `cluster status`, and
 * stops cleanly with exit 0 on SIGINT.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { clusterStatus } from '../../src/state/cluster/clusterStatus.js'
import { connectNats } from '../../src/state/cluster/natsConnect.js'
import { baseConfig } from '../serve/support.js'
import { runCli } from '../support/cli.js'
import { natsMissing, startNats, waitFor } from '../support/natsServers.js'

const dir = mkdtempSync(join(tmpdir(), 'dualstream-cluster-cli-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))
const configFile = join(dir, 'config.json')
writeFileSync(configFile, JSON.stringify(baseConfig))

t.test('serve --nats without --run: exit 2, the flag named', async (t) => {
  const result = await runCli(['serve', '--config', configFile, '--nats', 'nats://127.0.0.1:1', '--port', '0'])
  t.equal(result.code, 2)
  t.equal(result.stderr, 'dualstream serve: --run <name> with --nats is required\n')
})

t.test('serve without --data nor --nats: exit 2, both ways named', async (t) => {
  const result = await runCli(['serve', '--config', configFile, '--port', '0'])
  t.equal(result.code, 2)
  t.equal(result.stderr, 'dualstream serve: --data <dir> (or --nats <urls> --run <name> for a cluster node) is required\n')
})

t.test('serve --nats through the CLI: a node that creates its run and stops on SIGINT', { skip: natsMissing }, async (t) => {
  const nats = await startNats({ servers: 1 })
  t.teardown(() => nats.stop())
  const nc = await connectNats({ servers: nats.url, name: 'test' })
  t.teardown(() => nc.close())
  const serving = runCli([
    'serve',
    '--config',
    configFile,
    '--nats',
    nats.url,
    '--run',
    'cli',
    '--node',
    'n1',
    '--partitions',
    '2',
    '--port',
    '0',
    '--lease-ms',
    '1500',
  ])
  const status = await waitFor(
    'node n1 to report itself with its roles',
    async () => {
      const s = await clusterStatus(nc, 'cli')
      return s.nodes.length === 1 && s.sequencer === 'n1' && s.owners.every((owner) => owner === 'n1') ? s : undefined
    },
    20_000,
  )
  t.equal(status.partitions, 2)
  t.equal(status.nodes[0].node, 'n1')
  process.kill(process.pid, 'SIGINT')
  const result = await serving
  t.equal(result.code, 0, result.stderr)
  t.match(result.stdout, /dualstream serve: node n1 created run cli \(2 partitions, 1 replica\): step 0, λ consistency=0\.000, 0 batches unacknowledged\n/)
  t.match(result.stdout, /sequencer: taken[^]*sequencer: stopped \(the node is stopping\)/)
  const after = await clusterStatus(nc, 'cli')
  t.equal(after.sequencer, undefined, 'its leases were given back on the way out')
  t.same(after.nodes, [], 'and its node record removed')
})
