/**
 * Exactly-once training with the Python trainer killed (SIGKILL) between its update and its
 * ack, and again between persisting its state and sending the ack: after each restart it
 * resumes from the checkpoint its state names, and the final checkpoint lists every step once.
 */
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { Client, produce, prompts, startServer, tempDir } from '../serve/support.js'
import { missing, python } from './support.js'

const script = fileURLToPath(new URL('./ckpt_trainer.py', import.meta.url))
const STEPS = 8
const readJson = (path: string) => JSON.parse(readFileSync(path, 'utf8'))

t.test('a trainer killed between update and ack applies every step exactly once', { skip: missing }, async (t) => {
  const served = await startServer()
  t.teardown(() => served.close())
  const producer = await Client.open(served.url('/ingest'))
  await produce(producer, prompts('e', STEPS * 2), 8)
  await producer.close()
  const dir = tempDir('dualstream-py-exactly-once-')
  const state = join(dir, 'trainer.json')
  const run = (...extra: string[]) =>
    python(['--batches', served.url('/batches'), '--dir', dir, '--steps', String(STEPS), ...extra], { script, name: 'ckpt_trainer' })

  // killed after writing ckpt-3 (the update), before acknowledging step 3
  const first = run('--kill-at-step', '3')
  t.match(await first.exited, { signal: 'SIGKILL' })
  t.same(readJson(join(dir, 'ckpt-3.json')).applied, [1, 2, 3], 'step 3 was applied before the kill')
  t.match(readJson(state), { lastStep: 2, state: { checkpoint: join(dir, 'ckpt-2.json') } }, 'its state still names step 2')

  // resumes from ckpt-2, so step 3 is applied again on top of the model that lacks it; killed
  // once the state for step 5 is on disk, before its ack is sent
  const second = run('--kill-after-state', '5')
  t.match(await second.exited, { signal: 'SIGKILL' })
  t.match(second.lines[0], { event: 'started', lastStep: 2, applied: [1, 2] })
  t.match(readJson(state), { lastStep: 5, state: { checkpoint: join(dir, 'ckpt-5.json') } })

  // step 5 comes again (never acknowledged): skipped, acknowledged; 6..8 applied
  const third = run()
  const result = await third.result()
  t.match(third.lines[0], { event: 'started', lastStep: 5, applied: [1, 2, 3, 4, 5] })
  t.same(result, { applied: [1, 2, 3, 4, 5, 6, 7, 8], skipped: 1, lastStep: STEPS })
  const final = readJson(state)
  t.equal(final.state.checkpoint, join(dir, `ckpt-${STEPS}.json`))
  t.same(readJson(final.state.checkpoint).applied, [1, 2, 3, 4, 5, 6, 7, 8], 'the final checkpoint lists each step exactly once')
  t.notOk(existsSync(`${state}.tmp`), 'no temporary state file left behind')

  await served.server.close()
  t.equal(served.server.health().outbox, 0, 'every step acknowledged')
})
