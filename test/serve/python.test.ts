/**
 * A real client in another language: examples/python/producer.py and trainer.py (Debian's
 * python3-msgpack and python3-websockets, installed by .ci/run) drive a full
 * produce → batch → ack round trip against the server, with tokens.
 */
import { execFile } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import t from 'tap'
import { PYTHON, pythonMissing } from '../support/python.js'
import { startServer, tempDir } from './support.js'

const examples = fileURLToPath(new URL('../../examples/python/', import.meta.url))
const missing = pythonMissing(['msgpack', 'websockets'], ['python3-msgpack', 'python3-websockets'])
const run = promisify(execFile)

t.test('python producer → engine → python trainer, with tokens, item errors and step dedup', { skip: missing }, async (t) => {
  const served = await startServer({
    config: {
      groupSize: 8,
      batchGroups: 4,
      objectives: [{ channel: 'accuracy' }],
      constraints: [{ channel: 'consistency', sense: '>=', threshold: 0.9, dual: { rule: 'sgd', lr: 0.1 } }],
    },
    tokens: { producer: 'producer-secret', trainer: 'trainer-secret' },
  })
  t.teardown(() => served.close())
  const dir = tempDir('dualstream-python-')
  const input = join(dir, 'rollouts.jsonl')
  const lines: string[] = []
  for (let i = 0; i < 1024; i++) {
    lines.push(
      JSON.stringify({
        id: `r${i}`,
        promptId: `p${i >> 3}`,
        rewards: { accuracy: i % 3 === 0 ? 1 : 0, consistency: i % 5 === 0 ? 0 : 1 },
        payload: { text: `completion ${i}` },
      }),
    )
    if (i === 100) lines.push('{"id": "bad-nan", "promptId": "x", "rewards": {"accuracy": NaN}}')
    if (i === 200) lines.push('{"id": "bad-type", "promptId": "x", "rewards": {"accuracy": "high"}}')
  }
  writeFileSync(input, `${lines.join('\n')}\n`)
  const env = { ...process.env, DUALSTREAM_PRODUCER_TOKEN: 'producer-secret', DUALSTREAM_TRAINER_TOKEN: 'trainer-secret' }

  const produced = await run(PYTHON, [join(examples, 'producer.py'), '--url', served.url('/ingest'), '--input', input, '--frame', '300'], { env })
  const summary = JSON.parse(produced.stdout)
  t.match(summary, { rollouts: 1026, acked: 1024, unacknowledged: 0, reconnects: 0, errors: [] })
  t.same(summary.rejected, [
    { index: 101, id: 'bad-nan', field: 'rewards.accuracy', reason: 'not a finite number (NaN)' },
    { index: 202, id: 'bad-type', field: 'rewards.accuracy', reason: 'must be a finite number or null, got the string "high"' },
  ])
  t.equal(served.server.health().step, 32)

  // the trainer already applied step 1 before a crash: it skips it (acknowledging it) and applies 2..32
  const state = join(dir, 'trainer-state.json')
  const out = join(dir, 'applied.jsonl')
  writeFileSync(state, JSON.stringify({ lastStep: 1, policyVersion: 0, applied: 1 }))
  const trained = await run(
    PYTHON,
    [join(examples, 'trainer.py'), '--url', served.url('/batches'), '--state', state, '--out', out, '--steps', '31', '--policy-version-every', '8'],
    { env },
  )
  t.same(JSON.parse(trained.stdout), { applied: 31, skipped: 1, lastStep: 32, policyVersion: 4 })
  const applied = readFileSync(out, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l))
  t.same(
    applied.map((a) => a.step),
    Array.from({ length: 31 }, (_, i) => i + 2),
  )
  const summaries = [...served.engine.store.summaries()].map((s) => s.summary as { lambda: Record<string, { after: number }> })
  t.same(
    applied.map((a) => a.lambda.consistency),
    summaries.slice(1).map((s) => s.lambda.consistency.after),
    'the trainer saw the engine’s λ',
  )
  const ids = applied.flatMap((a) => Object.keys(a.advantages))
  t.equal(new Set(ids).size, 1024 - 32, 'every rollout of steps 2..32 applied once')
  t.equal(JSON.parse(readFileSync(state, 'utf8')).lastStep, 32)

  // a wrong token: the producer gives up with the 401 reason
  const refused = await run(PYTHON, [join(examples, 'producer.py'), '--url', served.url('/ingest'), '--synthetic', '8', '--token', 'nope', '--retries', '0'], {
    env,
  }).catch((error: { code: number; stdout: string; stderr: string }) => error)
  t.equal((refused as { code: number }).code, 1)
  t.match((refused as { stderr: string }).stderr, /401/)
  t.match(JSON.parse((refused as { stdout: string }).stdout), { unacknowledged: 8 })

  // the trainer closed its connection after its last ack (so the server has read them all); closing
  // the server waits for the acknowledgements in flight
  await served.server.close()
  t.equal(served.server.health().outbox, 0, 'every batch acknowledged, the skipped one too')
})
