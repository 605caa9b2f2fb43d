/**
 * The Python producer matches answers to frames first-in first-out (examples/python/producer.py):
 * with many frames in flight, refused items in several of them, and an engine whose writes
 * finish in swapped pairs, every `rejected` item it reports is the item it sent at that
 * index (the engine's own id agrees), and every valid rollout is acknowledged once.
 */
import { execFile } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import t from 'tap'
import { PYTHON, pythonMissing } from '../support/python.js'
import { swapPairsOfWrites } from '../support/reorder.js'
import { startServer, tempDir } from './support.js'

const examples = fileURLToPath(new URL('../../examples/python/', import.meta.url))
const missing = pythonMissing(['msgpack', 'websockets'], ['python3-msgpack', 'python3-websockets'])
const run = promisify(execFile)

t.test('python producer: refused items attributed to the right frame while writes finish out of order', { skip: missing }, async (t) => {
  const served = await startServer({ credit: 400 })
  t.teardown(() => served.close())
  swapPairsOfWrites(served.engine)
  const dir = tempDir('dualstream-python-fifo-')
  const input = join(dir, 'rollouts.jsonl')
  const lines: string[] = []
  const bad: string[] = []
  for (let i = 0; i < 600; i++) {
    lines.push(JSON.stringify({ id: `r${i}`, promptId: `p${i >> 1}`, rewards: { accuracy: i % 2, consistency: 1 } }))
    if (i % 37 === 5) {
      bad.push(`bad${i}`)
      lines.push(JSON.stringify({ id: `bad${i}`, promptId: 'x', rewards: { accuracy: 'high' } }))
    }
  }
  writeFileSync(input, `${lines.join('\n')}\n`)
  const produced = await run(PYTHON, [join(examples, 'producer.py'), '--url', served.url('/ingest'), '--input', input, '--frame', '25'])
  const summary = JSON.parse(produced.stdout)
  t.match(summary, { rollouts: 600 + bad.length, acked: 600, unacknowledged: 0, errors: [], misattributed: [] })
  t.same(
    summary.rejected.map((e: { id: string }) => e.id),
    bad,
    'each refused item reported once, as the item sent at that index',
  )
})
