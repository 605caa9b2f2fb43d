/**
 * Crash-equivalence (DESIGN §5): `dualstream serve` as a child process, killed with SIGKILL
 * mid-ingest, mid-batch (delivered, unacknowledged) and just after a restart, restarted on the
 * same data folder each time. The producer resends everything unacknowledged (the engine
 * deduplicates); the trainer dedupes deliveries by step. In the end every rollout is in
 * exactly one delivered batch, redeliveries are identical, and λ per step (and every
 * advantage) equals `dualstream replay --log` over the same log.
 */
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { mainScript, runCli } from '../support/cli.js'
import { startServe } from '../support/serveProcess.js'
import { Client, produce, tempDir, type Received } from './support.js'

const G = 4
const PROMPTS = 400
const STEPS = PROMPTS / 4 // 4 groups per batch
const config = {
  groupSize: G,
  batchGroups: 4,
  objectives: [{ channel: 'accuracy' }],
  constraints: [
    { channel: 'consistency', sense: '>=', threshold: 0.9, sampleThreshold: 0.5, dual: { rule: 'sgd', lr: 0.2, max: 5 } },
    { channel: 'grounding', sense: '>=', threshold: 0.8, dual: { rule: 'pid', kp: 0.5, ki: 0.1, kd: 0.1, delay: 3 } },
  ],
}

/** Rollouts of interleaved prompts (groups complete out of order), deterministic. */
function makeRollouts() {
  const out = []
  let state = 7
  const random = () => (state = (Math.imul(state, 1103515245) + 12345) >>> 0) / 4294967296
  for (let block = 0; block < PROMPTS; block += 10) {
    for (let i = 0; i < G; i++) {
      for (let p = block; p < block + 10; p++) {
        out.push({
          id: `r${p}-${i}`,
          promptId: `p${p}`,
          rewards: { accuracy: random() < 0.5 ? 1 : 0, consistency: random() < 0.8 ? 1 : 0, grounding: random() < 0.05 ? null : random() },
          payload: { tokens: [p, i] },
        })
      }
    }
  }
  return out
}

/** `serve` under the test loader (coverage), with the options of this test. */
const serveArgs = (configPath: string, dataDir: string) => ['-c', configPath, '-d', dataDir, '--heartbeat-ms', '0', '--credit', '100']
const startCrashServe = (configPath: string, dataDir: string) => startServe(serveArgs(configPath, dataDir), { script: [...process.execArgv, mainScript] })

t.test('SIGKILL at several points, restart, resend: exactly once, and λ equal to replay --log', async (t) => {
  const dir = tempDir('dualstream-crash-')
  const configPath = join(dir, 'config.json')
  const dataDir = join(dir, 'data')
  writeFileSync(configPath, JSON.stringify(config))
  const rollouts = makeRollouts()
  const acked = new Set<string>()
  const deliveries = new Map<number, Received[]>()

  /**
   * One life of the server. `killWhen` is checked on every frame the producer or the trainer
   * receives; once it holds the server is killed with SIGKILL on the spot. `ackWhile` decides
   * whether the trainer acknowledges a batch it receives.
   */
  async function life(name: string, options: { killWhen?: (phase: { acks: number; batches: number }) => boolean; ackWhile?: (batches: number) => boolean }) {
    const child = await startCrashServe(configPath, dataDir)
    const phase = { acks: 0, batches: 0 }
    let killed = false
    const check = () => {
      if (!killed && options.killWhen?.(phase)) {
        killed = true
        child.process.kill('SIGKILL')
      }
    }
    const trainer = await Client.open(`ws://127.0.0.1:${child.port}/batches`)
    const onBatch = (frame: Received) => {
      if (frame.type !== 'batch') return
      phase.batches++
      deliveries.set(frame.step, [...(deliveries.get(frame.step) ?? []), frame])
      if (options.ackWhile?.(phase.batches) ?? true) trainer.send({ type: 'ack', step: frame.step, policyVersion: Math.floor(frame.step / 10) })
      check()
    }
    // redeliveries can come in the same read as the upgrade answer, before this line runs: those first
    for (const frame of trainer.frames) onBatch(frame)
    trainer.onFrame(onBatch)
    const producer = await Client.open(`ws://127.0.0.1:${child.port}/ingest`)
    producer.onFrame((frame) => {
      if (frame.type !== 'ack') return
      for (const id of frame.ids) acked.add(id)
      phase.acks += frame.ids.length
      check()
    })
    const unacked = rollouts.filter((r) => !acked.has(r.id))
    const producing = produce(producer, unacked, 20).then(
      () => 'done',
      (error: Error) => error.message,
    )
    if (options.killWhen !== undefined) {
      // should the kill condition never hold, the test fails rather than hangs
      const fallback = setTimeout(() => {
        if (killed) return
        t.fail(`${name}: the kill condition never held (${JSON.stringify(phase)})`)
        child.process.kill('SIGKILL')
      }, 20_000)
      const { signal } = await child.exited
      clearTimeout(fallback)
      t.equal(signal, 'SIGKILL', `${name}: killed (${phase.acks} acks, ${phase.batches} batches in this life)`)
      t.match(await producing, /done|connection closed/)
      return
    }
    t.equal(await producing, 'done', `${name}: every rollout acknowledged`)
    await trainer.until(() => deliveries.has(STEPS), 30_000, 'the last step')
    // the last acks go out before the close frames: the server has read them once the closes complete
    await Promise.all([producer.close(), trainer.close()])
    child.process.kill('SIGTERM')
    const exit = await child.exited
    if (!t.same(exit, { code: 0, signal: null }, `${name}: clean stop on SIGTERM`)) t.comment(child.output())
    t.match(child.output(), /dualstream serve: stopped/)
  }

  await life('mid-ingest', { killWhen: ({ acks }) => acks >= 300 })
  const afterFirst = acked.size
  t.ok(afterFirst >= 300 && afterFirst < rollouts.length, `some but not all acknowledged before the first kill (${afterFirst})`)
  await life('mid-batch', { ackWhile: (batches) => batches <= 3, killWhen: ({ acks, batches }) => batches >= 8 && acks >= 200 })
  await life('after restart', { killWhen: ({ acks, batches }) => batches >= 2 && acks >= 1 })
  await life('to the end', {})

  t.equal(acked.size, rollouts.length, 'every rollout acknowledged')
  const steps = [...deliveries.keys()].sort((a, b) => a - b)
  t.same(
    steps,
    Array.from({ length: STEPS }, (_, i) => i + 1),
    'every step delivered',
  )
  const redelivered = steps.filter((s) => deliveries.get(s)!.length > 1)
  t.ok(redelivered.length >= 3, `unacknowledged batches were redelivered after restarts (steps ${redelivered.join(', ')})`)
  const differing = redelivered.filter((s) => {
    const [first, ...again] = deliveries.get(s)!.map((batch) => JSON.stringify(batch))
    return again.some((copy) => copy !== first)
  })
  t.same(differing, [], 'every redelivery is identical to the first delivery')
  const count = new Map<string, number>()
  for (const step of steps) for (const r of deliveries.get(step)![0].rollouts) count.set(r.id, (count.get(r.id) ?? 0) + 1)
  t.equal(count.size, rollouts.length, 'every rollout in a delivered batch')
  t.ok(
    [...count.values()].every((n) => n === 1),
    'each in exactly one',
  )

  const replay = await runCli(['replay', '-c', configPath, '--log', dataDir])
  t.equal(replay.code, 0, replay.stderr)
  const records = replay.stdout
    .trim()
    .split('\n')
    .map((line) => JSON.parse(line))
  t.same(
    records.map((r) => r.step),
    steps,
    'replay --log gives the same steps',
  )
  t.same(
    records.map((r) => r.lambda),
    steps.map((s) => deliveries.get(s)![0].lambda),
    'λ (before and after) per step equals the replay',
  )
  t.same(
    records.map((r) => r.advantages),
    steps.map((s) => Object.fromEntries(deliveries.get(s)![0].rollouts.map((r: { id: string; advantage: number }) => [r.id, r.advantage]))),
    'and so does every advantage',
  )
})
