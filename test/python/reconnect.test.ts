/**
 * The Python producer and trainer across a `dualstream serve` SIGKILLed and restarted on the
 * same data folder and port: the producer's frames in flight when the server died (it was
 * stopped first, so they are surely unanswered) are sent again after it reconnects, the trainer
 * reconnects and goes on, and every rollout ends up in exactly one applied batch.
 */
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { baseConfig, tempDir } from '../serve/support.js'
import { missing, python, serve, type Line } from './support.js'

const FIRST = 40
const SECOND = 200
const STEPS = (FIRST + SECOND) / 4 // batches of 2 groups of 2

t.test('serve SIGKILLed mid-stream and restarted: the producer resends, the trainer reconnects, each rollout applied once', { skip: missing }, async (t) => {
  const dir = tempDir('dualstream-py-reconnect-')
  const configPath = join(dir, 'config.json')
  const dataDir = join(dir, 'data')
  writeFileSync(configPath, JSON.stringify(baseConfig))
  const tokens = { DUALSTREAM_PRODUCER_TOKEN: 'producer-secret', DUALSTREAM_TRAINER_TOKEN: 'trainer-secret' }
  const env = { ...process.env, ...tokens }

  const first = await serve(configPath, dataDir, 0, env)
  t.teardown(() => first.watched.child.kill('SIGKILL'))
  const trainer = python(['reconnecting-trainer', '--batches', first.url('/batches'), '--state', join(dir, 'trainer.json'), '--steps', String(STEPS)], {
    env: tokens,
    name: 'trainer',
  })
  const producer = python(['resend', '--url', first.url('/ingest'), '--first', String(FIRST), '--second', String(SECOND), '--frame', '20'], {
    env: tokens,
    name: 'producer',
  })
  await producer.waitFor((line) => line.event === 'first acked', 'the first rollouts acknowledged')
  await trainer.waitFor((line) => line.event === 'batch' && line.step === FIRST / 4, 'the first rollouts’ batches')

  // stopped, the server reads nothing more: the next frames stay unanswered until it dies
  first.watched.child.kill('SIGSTOP')
  producer.send('go')
  const inFlight = await producer.waitFor((line) => line.event === 'second in flight', 'frames in flight')
  t.ok(inFlight.unanswered > 0, 'frames were on the wire when the server died')
  first.watched.child.kill('SIGKILL')
  t.match(await first.watched.exited, { signal: 'SIGKILL' })

  const second = await serve(configPath, dataDir, first.port, env)
  t.teardown(() => second.watched.child.kill('SIGKILL'))
  t.equal(second.port, first.port, 'restarted on the same port')

  const produced = await producer.result()
  t.match(produced, { acked: FIRST + SECOND, connections: 2 })
  t.ok(produced.resent >= inFlight.unanswered, 'the unanswered rollouts were sent again')
  const trained = await trainer.result()
  t.same(
    trained.applied,
    Array.from({ length: STEPS }, (_, i) => i + 1),
    'every step applied once, in order',
  )
  t.ok(trained.connections >= 2, 'the trainer reconnected')
  const ids = trainer.lines.filter((line) => line.event === 'batch').flatMap((line: Line) => line.ids as string[])
  t.equal(ids.length, FIRST + SECOND)
  t.equal(new Set(ids).size, FIRST + SECOND, 'each rollout in exactly one applied batch')
})
