/**
 * The SIGKILL storm (issue 10): `dualstream serve` as a child process, three producers (one
 * speaking JSON, one with items the engine must refuse) pipelining frames and resending what
 * was not acknowledged, a trainer that drops its connection between a batch and its ack, a
 * hostile client, and at least ten SIGKILLs at seeded random points (the seed is printed;
 * `DUALSTREAM_FAULT_SEED=n` repeats a run). Then: every answer was for the producer's oldest
 * unanswered frame, every valid rollout is in exactly one delivered batch, redeliveries are
 * identical, every hostile frame was answered, and λ at every step equals
 * `dualstream replay --log` over the same data folder.
 */
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { mulberry32 } from '../../examples/support/random.js'
import { tempDir } from '../serve/support.js'
import { replayLines, DroppingTrainer, FaultProducer, health, HostileClient, requireBuild, startServe, until, type Item } from './support.js'

const SEED = Number(process.env.DUALSTREAM_FAULT_SEED ?? Math.floor(Math.random() * 2 ** 31))
const KILLS = Number(process.env.DUALSTREAM_FAULT_KILLS ?? 12)
const G = 4
const PROMPTS_PER_PRODUCER = 160
const BATCH_GROUPS = 4
const STEPS = (3 * PROMPTS_PER_PRODUCER) / BATCH_GROUPS

const config = {
  groupSize: G,
  batchGroups: BATCH_GROUPS,
  objectives: [{ channel: 'accuracy' }],
  constraints: [
    { channel: 'consistency', sense: '>=', threshold: 0.9, sampleThreshold: 0.5, dual: { rule: 'sgd', lr: 0.2, max: 5 } },
    { channel: 'grounding', sense: '>=', threshold: 0.8, dual: { rule: 'pid', kp: 0.5, ki: 0.1, kd: 0.1, delay: 3 } },
  ],
}

/** A producer's items: its prompts' rollouts, interleaved across prompts, plus a refused item every 40th. */
function itemsOf(producer: number, random: () => number): Item[] {
  const items: Item[] = []
  for (let block = 0; block < PROMPTS_PER_PRODUCER; block += 5) {
    for (let i = 0; i < G; i++) {
      for (let p = block; p < block + 5; p++) {
        const id = `q${producer}-${p}-${i}`
        items.push({
          id,
          body: {
            id,
            promptId: `q${producer}-${p}`,
            rewards: { accuracy: random() < 0.5 ? 1 : 0, consistency: random() < 0.8 ? 1 : 0, grounding: random() < 0.05 ? null : random() },
            payload: { tokens: [producer, p, i], text: 'x'.repeat(Math.floor(random() * 200)) },
          },
        })
        if (producer === 1 && items.length % 40 === 0) {
          const bad = `bad${producer}-${items.length}`
          items.push({ id: bad, body: { id: bad, promptId: 'bad', rewards: { accuracy: 'high' } }, invalid: 'rewards.accuracy' })
        }
      }
    }
  }
  return items
}

t.test('SIGKILL storm: FIFO answers, exactly once, λ equal to replay --log', { skip: requireBuild() }, async (t) => {
  t.comment(`seed ${SEED} (DUALSTREAM_FAULT_SEED=${SEED} repeats this run), ${KILLS} kills`)
  const random = mulberry32(SEED)
  const dir = tempDir('dualstream-storm-')
  const configPath = join(dir, 'config.json')
  const dataDir = join(dir, 'data')
  writeFileSync(configPath, JSON.stringify(config))
  const args = ['-c', configPath, '-d', dataDir, '--heartbeat-ms', '0', '--credit', '120']

  // one event counter per life: producer answers and trainer batches both count; the life's
  // kill falls on the event that reaches its mark, on the spot
  let events = 0
  let kill = () => {}
  const onEvent = () => {
    events++
    kill()
  }
  const producers = [0, 1, 2].map(
    (k) => new FaultProducer(`producer ${k}`, itemsOf(k, mulberry32(SEED + k + 1)), { frameSize: 10 + k * 7, json: k === 2, onAnswer: onEvent }),
  )
  const trainer = new DroppingTrainer(() => random() < 0.15, onEvent)
  const hostile = new HostileClient()
  const restarts: number[] = []
  const recoveries: number[] = []

  for (let life = 0; life <= KILLS; life++) {
    const last = life === KILLS
    const child = await startServe(args)
    restarts.push(child.startMs)
    events = 0
    const lifeStart = performance.now()
    const batchesBefore = trainer.batches
    // the kill falls after a random number of events of this life (1 … 40)
    const killAt = 1 + Math.floor(random() * 40)
    let killed = false
    kill = () => {
      if (life > 0 && recoveries.length < life && trainer.batches > batchesBefore) recoveries.push(performance.now() - lifeStart)
      if (last || killed || events < killAt) return
      killed = true
      child.kill('SIGKILL')
    }
    await trainer.connect(child.url('/batches'))
    await hostile.connect(child.url('/ingest'))
    const lives = producers.map((p) => p.life(child.url('/ingest')))
    const poking = setInterval(() => hostile.poke(events), 20)
    if (!last) {
      const { signal } = await child.exited
      t.equal(signal, 'SIGKILL', `life ${life}: killed at event ${killAt} (${events} seen before it died)`)
      await Promise.all(lives)
    } else {
      t.same(await Promise.all(lives), ['done', 'done', 'done'], 'last life: every producer done')
      await until(() => trainer.deliveries.size === STEPS && trainer.ackedSteps.size === STEPS, 60_000, 'every step delivered and acknowledged').catch(
        async (error: Error) => {
          const { body } = await health(child.port)
          throw new Error(
            `${error.message}: ${trainer.deliveries.size} steps delivered, ${trainer.ackedSteps.size} acknowledged (missing ${Array.from(
              { length: STEPS },
              (_, i) => i + 1,
            )
              .filter((s) => !trainer.deliveries.has(s))
              .join(
                ',',
              )}; unacked ${[...trainer.deliveries.keys()].filter((s) => !trainer.ackedSteps.has(s)).join(',')}; trainer socket ${trainer.client?.ws.readyState} closed ${JSON.stringify(trainer.client?.closed)}, drops ${trainer.drops}); healthz ${JSON.stringify(body)}`,
          )
        },
      )
      await until(() => hostile.answered === hostile.sent, 10_000, 'every hostile frame answered')
      trainer.stop()
      child.kill('SIGTERM')
      const exit = await child.exited
      if (!t.same(exit, { code: 0, signal: null }, 'clean stop on SIGTERM')) t.comment(child.output())
      t.match(child.output(), /dualstream serve: stopped/)
    }
    clearInterval(poking)
    trainer.stop()
  }

  for (const p of producers) {
    t.same(p.violations, [], `${p.name}: every answer was for its oldest unanswered frame`)
    t.ok(p.done, `${p.name}: every valid item acknowledged, every invalid one refused`)
  }
  t.ok(producers[1].refused.size > 0, `refused items were reported with their index and field (${producers[1].refused.size})`)

  const steps = [...trainer.deliveries.keys()].sort((a, b) => a - b)
  t.same(
    steps,
    Array.from({ length: STEPS }, (_, i) => i + 1),
    'every step delivered',
  )
  const differing = steps.filter((s) => new Set(trainer.deliveries.get(s)).size > 1)
  t.same(differing, [], 'every redelivery identical to the first delivery')
  const count = new Map<string, number>()
  const firstOf = (s: number) => JSON.parse(trainer.deliveries.get(s)![0]) as { rollouts: { id: string; advantage: number }[]; lambda: unknown }
  for (const s of steps) for (const r of firstOf(s).rollouts) count.set(r.id, (count.get(r.id) ?? 0) + 1)
  const valid = producers.flatMap((p) => p.items.filter((i) => i.invalid === undefined).map((i) => i.id))
  t.equal(count.size, valid.length, 'every valid rollout in a delivered batch')
  t.ok(
    [...count.values()].every((n) => n === 1),
    'each in exactly one',
  )
  t.ok(trainer.drops >= 1, `the trainer dropped ${trainer.drops} connections between a batch and its ack`)

  const replay = replayLines(['-c', configPath, '--log', dataDir])
  t.equal(replay.status, 0, replay.stderr)
  const records = replay.lines
  t.same(
    records.map((r) => r.step),
    steps,
    'replay --log gives the same steps',
  )
  t.same(
    records.map((r) => r.lambda),
    steps.map((s) => firstOf(s).lambda),
    'λ (before and after) at every step equals replay --log',
  )
  t.same(
    records.map((r) => r.advantages),
    steps.map((s) => Object.fromEntries(firstOf(s).rollouts.map((r) => [r.id, r.advantage]))),
    'and so does every advantage',
  )

  const sorted = (xs: number[]) => [...xs].sort((a, b) => a - b)
  const median = (xs: number[]) => (xs.length === 0 ? NaN : sorted(xs)[Math.floor(xs.length / 2)])
  t.comment(
    `kills ${KILLS}; restart → listening median ${median(restarts).toFixed(0)} ms (max ${Math.max(...restarts).toFixed(0)}); ` +
      `restart → first batch median ${median(recoveries).toFixed(0)} ms (max ${recoveries.length === 0 ? NaN : Math.max(...recoveries).toFixed(0)}); ` +
      `trainer drops ${trainer.drops}; hostile frames ${hostile.total.sent + hostile.sent} (${hostile.total.answered + hostile.answered} answered; those sent to a dying server may not be)`,
  )
})
