/**
 * `serve` of `dualstream/server` (src/apps/startServer.ts): the engine and its server started by
 * a call that resolves once listening, with the port, the url, the engine and a close().
 */
import t from 'tap'
import { createServer } from 'node:net'
import { PassThrough } from 'node:stream'
import { parseConfig } from '../../src/core/config.js'
import { startServer } from '../../src/apps/startServer.js'
import { ServeError } from '../../src/apps/serve.js'
import { Client, baseConfig, prompts, tempDir } from './support.js'

const config = parseConfig(baseConfig)

t.test('starts on a free port, answers /healthz, closes, and opens again on the same data', async (t) => {
  const dataDir = tempDir()
  const server = await startServer({ config, dataDir })
  t.equal(server.host, '127.0.0.1')
  t.ok(server.port > 0, `port ${server.port}`)
  t.equal(server.url, `http://127.0.0.1:${server.port}`)
  const health = await fetch(`${server.url}/healthz`)
  t.equal(health.status, 200)
  t.match(await health.json(), { status: 'ok', step: 0 })

  // a producer's rollouts through the engine it returns
  const producer = await Client.open(`ws://127.0.0.1:${server.port}/ingest`)
  producer.send({ type: 'rollouts', rollouts: prompts('a', 2) })
  await producer.nth('ack')
  t.equal(server.engine.stats().step, 1, 'two prompts of two: one batch')
  await producer.close()

  await server.close()
  t.equal(await server.stopped, 'closed')
  await server.close() // again: already closed
  await t.rejects(fetch(`${server.url}/healthz`), 'no longer listening')

  const again = await startServer({ config, dataDir })
  t.equal(again.engine.stats().step, 1, 'the state came back from the log')
  await again.close()
})

t.test('the status lines go to `log` when given', async (t) => {
  let out = ''
  const log = new PassThrough()
  log.on('data', (chunk: Buffer) => (out += chunk.toString()))
  const server = await startServer({ config, dataDir: tempDir(), host: 'localhost', log, heartbeatMs: 0 })
  t.equal(server.url, `http://localhost:${server.port}`)
  await server.close()
  t.match(out, /^dualstream serve: data .*: step 0, λ consistency=0\.000, 0 rollouts logged/)
  t.match(out, new RegExp(`listening on http://localhost:${server.port} `))
  t.match(out, /dualstream serve: stopped\n$/)
})

t.test('an IPv6 host is bracketed in the url', async (t) => {
  const server = await startServer({ config, dataDir: tempDir(), host: '::1' }).catch((error: Error) => error)
  // a machine without IPv6 loopback refuses the bind: nothing to check there
  if (server instanceof Error) return t.match(server, ServeError)
  t.equal(server.url, `http://[::1]:${server.port}`)
  await server.close()
})

t.test('what cannot be served rejects the start', async (t) => {
  await t.rejects(startServer({ config, dataDir: tempDir(), host: '0.0.0.0' }), ServeError, 'a reachable host without tokens')
  const busy = createServer()
  await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve))
  const port = (busy.address() as { port: number }).port
  await t.rejects(startServer({ config, dataDir: tempDir(), port }), { name: 'ServeError', message: /cannot listen on 127\.0\.0\.1:\d+/ }, 'a port in use')
  busy.close()
  const server = await startServer({ config, dataDir: tempDir(), host: '0.0.0.0', tokens: { producer: 'p', trainer: 't', viewer: 'v' } })
  t.equal(server.host, '0.0.0.0', 'with every role’s token it may')
  await server.close()
})

t.test('an engine failure while serving stops the server: `stopped` says so', async (t) => {
  const server = await startServer({ config, dataDir: tempDir() })
  const producer = await Client.open(`ws://127.0.0.1:${server.port}/ingest`)
  await server.engine.store.env.close()
  producer.send({ type: 'rollouts', rollouts: prompts('x', 1) })
  t.equal(await server.stopped, 'failed')
  await server.close()
  await producer.close()
})
