/**
 * Answers in frame order under load (issue 10): three producers pipeline ≈ 450 KB frames
 * (some with items the engine refuses) within a large credit, twenty times over, each run on
 * a fresh engine. LMDB finishes writes in whatever order its flushes complete; every producer
 * must still get each `rejected` and each `ack` for its oldest unanswered frame.
 */
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { mulberry32 } from '../../examples/support/random.js'
import { tempDir } from '../serve/support.js'
import { FaultProducer, requireBuild, startServe, type Item } from './support.js'

const RUNS = Number(process.env.DUALSTREAM_FIFO_RUNS ?? 20)
const FRAME = 500
const FRAMES = 6
const PAYLOAD = 880

function items(producer: number, run: number): Item[] {
  const random = mulberry32(run * 31 + producer)
  const out: Item[] = []
  for (let k = 0; k < FRAME * FRAMES; k++) {
    if (producer === 1 && k % 97 === 13) {
      const id = `bad-${run}-${k}`
      out.push({ id, body: { id, promptId: 'bad', rewards: { accuracy: Infinity } }, invalid: 'rewards.accuracy' })
      continue
    }
    const id = `f${run}-${producer}-${k}`
    out.push({
      id,
      body: {
        id,
        promptId: `f${run}-${producer}-${Math.floor(k / 2)}`,
        rewards: { accuracy: random() < 0.5 ? 1 : 0, consistency: 1 },
        payload: { text: 'y'.repeat(PAYLOAD) },
      },
    })
  }
  return out
}

t.test(`answers in frame order: ${RUNS} runs of 3 producers pipelining ≈ 450 KB frames`, { skip: requireBuild() }, async (t) => {
  let violations = 0
  let answers = 0
  for (let run = 0; run < RUNS; run++) {
    const dir = tempDir('dualstream-fifo-')
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ groupSize: 2, batchGroups: 8, objectives: [{ channel: 'accuracy' }] }))
    const served = await startServe(['-c', join(dir, 'config.json'), '-d', join(dir, 'data'), '--credit', String(FRAME * FRAMES)])
    const producers = [0, 1, 2].map((k) => new FaultProducer(`run ${run} producer ${k}`, items(k, run), { frameSize: FRAME, json: k === 2 }))
    const results = await Promise.all(producers.map((p) => p.life(served.url('/ingest'))))
    for (const p of producers) p.client?.ws.close()
    served.kill('SIGTERM')
    await served.exited
    t.same(results, ['done', 'done', 'done'], `run ${run}: every frame answered`)
    for (const p of producers) {
      violations += p.violations.length
      answers += p.answers
      t.same(p.violations, [], `${p.name}: answers in frame order`)
      t.ok(p.done, `${p.name}: every valid item acknowledged, every invalid one refused`)
    }
  }
  t.equal(violations, 0, `${answers} answers, all for the oldest unanswered frame`)
})
