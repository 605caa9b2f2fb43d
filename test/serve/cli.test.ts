import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { PassThrough } from 'node:stream'
import t from 'tap'
import { parseConfig } from '../../src/core/config.js'
import { listeningLine, serve, ServeError } from '../../src/apps/serve.js'
import { runCli } from '../support/cli.js'
import { baseConfig, Client, configFile, prompts, startServeCli, tempDir } from './support.js'

const startCli = startServeCli

t.test('dualstream serve: prints where it listens, serves, stops on SIGINT and restores on restart', async (t) => {
  const config = configFile()
  const data = join(tempDir(), 'data')
  const listeners = () => process.listenerCount('SIGINT') + process.listenerCount('SIGTERM')
  const before = listeners()
  const first = await startCli([
    '-c',
    config,
    '-d',
    data,
    '--port',
    '0',
    '--credit',
    '100',
    '--max-outbox',
    '10',
    '--max-frame-bytes',
    '65536',
    '--heartbeat-ms',
    '0',
  ])
  t.match(first.output(), /^dualstream serve: data .*data: step 0, λ consistency=0\.000, 0 rollouts logged, 0 pending, 0 batches unacknowledged\n/)
  const producer = await Client.open(`ws://127.0.0.1:${first.port}/ingest`)
  t.equal((await producer.nth('credit')).credit, 100)
  producer.send({ type: 'rollouts', rollouts: prompts('c', 5) })
  await producer.nth('ack')
  process.emit('SIGINT')
  t.equal(await first.exit, 0)
  t.match(first.output(), /shutting down\ndualstream serve: stopped\n$/)
  t.equal(listeners(), before, 'signal handlers removed')

  const second = await startCli(['-c', config, '-d', data, '--port', '0'])
  t.match(second.output(), /step 2, λ consistency=[\d.]+, 10 rollouts logged, 2 pending, 2 batches unacknowledged/)
  process.emit('SIGTERM')
  t.equal(await second.exit, 0)
})

t.test('dualstream serve refuses what it cannot do', async (t) => {
  const config = configFile()
  const saved = { ...process.env }
  t.teardown(() => {
    process.env = saved
  })
  delete process.env.DUALSTREAM_PRODUCER_TOKEN
  delete process.env.DUALSTREAM_TRAINER_TOKEN
  delete process.env.DUALSTREAM_VIEWER_TOKEN
  const open = await runCli(['serve', '-c', config, '-d', tempDir(), '--host', '0.0.0.0', '--port', '0'])
  t.equal(open.code, 2)
  t.match(
    open.stderr,
    'dualstream serve: refusing to listen on 0.0.0.0 (not loopback) without tokens: set DUALSTREAM_PRODUCER_TOKEN, DUALSTREAM_TRAINER_TOKEN and DUALSTREAM_VIEWER_TOKEN',
  )
  const port = await runCli(['serve', '-c', config, '-d', tempDir(), '--port', '70000'])
  t.equal(port.code, 2)
  t.match(port.stderr, "option '-p, --port <n>' argument '70000' is invalid. must be an integer from 0 to 65535.")
  const credit = await runCli(['serve', '-c', config, '-d', tempDir(), '--credit', '0'])
  t.equal(credit.code, 2)
  t.match(credit.stderr, 'must be an integer >= 1.')
  const missing = await runCli(['serve', '-c', config])
  t.equal(missing.code, 2)
  t.match(missing.stderr, 'dualstream serve: --data <dir> (or --nats <urls> --run <name> for a cluster node) is required')

  const notAFolder = join(tempDir(), 'file')
  writeFileSync(notAFolder, 'not a folder')
  const unopenable = await runCli(['serve', '-c', config, '-d', notAFolder, '--port', '0'])
  t.equal(unopenable.code, 1, 'a data folder that cannot be opened is a failure, not a usage error')
  t.match(unopenable.stderr, /ENOTDIR|not a directory/i)

  const busy = await startCli(['-c', config, '-d', tempDir(), '--port', '0'])
  const clash = await runCli(['serve', '-c', config, '-d', tempDir(), '--port', String(busy.port)])
  t.equal(clash.code, 2)
  t.match(clash.stderr, `dualstream serve: cannot listen on 127.0.0.1:${busy.port}: listen EADDRINUSE`)
  process.emit('SIGTERM')
  t.equal(await busy.exit, 0)
})

t.test('serve() stops with 1 when the engine fails, and other errors propagate', async (t) => {
  let out = ''
  const stdout = new PassThrough()
  stdout.on('data', (c: Buffer) => (out += c.toString()))
  const stop = new AbortController()
  const code = serve(
    {
      config: parseConfig(baseConfig),
      dataDir: tempDir(),
      host: '127.0.0.1',
      port: 0,
      tokens: {},
      onListening: async ({ engine, port }) => {
        const producer = await Client.open(`ws://127.0.0.1:${port}/ingest`)
        await engine.store.env.close()
        producer.send({ type: 'rollouts', rollouts: prompts('x', 1) })
      },
    },
    { stdout },
    stop.signal,
  )
  t.equal(await code, 1)
  t.match(out, /engine failure, shutting down \(restart to recover from the log\): .*\ndualstream serve: stopped\n$/)

  const aborted = new AbortController()
  aborted.abort()
  out = ''
  const unconstrained = parseConfig({ groupSize: 2, batchGroups: 1, objectives: [{ channel: 'accuracy' }] })
  t.equal(
    await serve({ config: unconstrained, dataDir: tempDir(), host: 'localhost', port: 0, tokens: {} }, { stdout }, aborted.signal),
    0,
    'an aborted signal stops at once',
  )
  t.match(out, /: step 0, 0 rollouts logged/, 'no λ without constraints')
  await t.rejects(serve({ config: parseConfig(baseConfig), dataDir: tempDir(), host: '10.1.2.3', port: 0, tokens: {} }, { stdout }, aborted.signal), ServeError)
})

t.test('the listening line names IPv6 hosts in brackets', (t) => {
  t.equal(
    listeningLine('::1', 8787),
    'dualstream serve: listening on http://[::1]:8787 (WebSocket /ingest, /batches, /telemetry; GET /healthz, /metrics, /history; dashboard at /)\n',
  )
  t.end()
})
