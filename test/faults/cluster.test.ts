/**
 * The cluster under faults (issue 11): dualstream nodes as child processes (the compiled CLI)
 * on a NATS JetStream cluster. 1. Chaos: three nodes on three NATS servers, two producers
 * resending what was not acknowledged and moving to another node when theirs dies, a trainer
 * that moves between nodes; at seeded random points (the seed is printed;
 * `DUALSTREAM_FAULT_SEED=n` repeats a run) the sequencer's node, then a partition owner's node
 * and one NATS server are SIGKILLed and restarted. Then: every rollout in exactly one delivered
 * step, redeliveries identical, λ at every step equal to `replay --nats` (which finds no
 * difference), and the failover time printed. 2. Lease fencing: the sequencer's node is
 * SIGSTOPped past its lease, another takes over, and after SIGCONT the old one publishes
 * nothing (the BATCHES stream stays one contiguous history). 3. Bad input to a cluster node is
 * answered exactly as one node answers it.
 */
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { jetstreamManager } from '@nats-io/jetstream'
import { connect } from '@nats-io/transport-node'
import t from 'tap'
import { mulberry32 } from '../../examples/support/random.js'
import { decodeBatchesMessage, decodeMessage } from '../../src/state/cluster/messages.js'
import { runLayout } from '../../src/state/cluster/runLayout.js'
import { readLastBatch } from '../../src/state/cluster/sequencer.js'
import { baseConfig, Client, pack, prompts, tempDir, upgradeStatus, type Received } from '../serve/support.js'
import { natsMissing, startNats, waitFor, type NatsServers } from '../support/natsServers.js'
import { replayLines, FaultProducer, requireBuild, startServe, type Item, type ServeChild } from './support.js'

const SEED = Number(process.env.DUALSTREAM_FAULT_SEED ?? Math.floor(Math.random() * 2 ** 31))
const skip = natsMissing || requireBuild()
const PARTITIONS = 4
const LEASE_MS = 1500

interface ClusterView {
  node: string
  roles: { sequencer: boolean; partitions: number[] }
  step: number
}

/** The step of the last entry in the chaos run's BATCHES stream. */
async function lastStoredStep(nats: NatsServers): Promise<number> {
  const nc = await connect({ servers: nats.urls })
  try {
    return (await readLastBatch(await jetstreamManager(nc), runLayout('chaos'))).entry?.step ?? 0
  } finally {
    await nc.close()
  }
}

/** `/cluster` of a node, or undefined when it does not answer within a second (killed, paused). */
async function clusterOf(child: ServeChild | undefined): Promise<ClusterView | undefined> {
  if (child === undefined) return undefined
  try {
    const response = await fetch(`http://127.0.0.1:${child.port}/cluster`, { signal: AbortSignal.timeout(1000) })
    return (await response.json()) as ClusterView
  } catch {
    return undefined
  }
}

/** Dualstream cluster nodes by name, each a `serve --nats` child process; `start` (re)starts one under the same name. */
class Nodes {
  readonly children = new Map<string, ServeChild | undefined>()
  readonly restarts: number[] = []

  constructor(
    private readonly args: (node: string) => string[],
    private readonly env?: NodeJS.ProcessEnv,
  ) {}

  async start(node: string): Promise<ServeChild> {
    const child = await startServe(this.args(node), { env: this.env })
    this.restarts.push(child.startMs)
    this.children.set(node, child)
    return child
  }

  async kill(node: string): Promise<void> {
    const child = this.children.get(node)!
    this.children.set(node, undefined)
    child.kill('SIGKILL')
    await child.exited
  }

  alive(): [string, ServeChild][] {
    return [...this.children].filter((entry): entry is [string, ServeChild] => entry[1] !== undefined)
  }

  /** The node holding the sequencer's lease (asked of every live node), once exactly one says so. */
  sequencer(timeoutMs = 15_000): Promise<string> {
    return waitFor(
      'a node holding the sequencer lease',
      async () => {
        const views = await Promise.all(this.alive().map(([, child]) => clusterOf(child)))
        const holders = views.filter((v) => v?.roles.sequencer === true)
        return holders.length === 1 ? holders[0]!.node : undefined
      },
      timeoutMs,
      100,
    )
  }

  async stopAll(): Promise<void> {
    for (const [, child] of this.alive()) {
      child.kill('SIGKILL')
      await child.exited
    }
  }
}

function clusterArgs(configPath: string, nats: NatsServers, run: string): (node: string) => string[] {
  return (node) => [
    '--config',
    configPath,
    '--nats',
    nats.url,
    '--run',
    run,
    '--partitions',
    String(PARTITIONS),
    '--node',
    node,
    '--lease-ms',
    String(LEASE_MS),
    '--heartbeat-ms',
    '0',
  ]
}

/** What a delivery of a step must repeat exactly: its rollouts' ids and advantages, and λ. */
const contentsOf = (batch: Received) =>
  JSON.stringify({ rollouts: batch.rollouts.map((r: { id: string; advantage: number }) => [r.id, r.advantage]), lambda: batch.lambda })

/**
 * A trainer that acknowledges every batch with policyVersion = step, records each delivery's
 * contents by step, and can move to another node (`connect` closes its previous connection).
 */
class MovingTrainer {
  readonly deliveries = new Map<number, string[]>()
  readonly firstDelivery = new Map<number, Received>()
  readonly deliveredAt = new Map<number, number>()
  client: Client | undefined
  node: string | undefined

  async connect(node: string, child: ServeChild): Promise<boolean> {
    const old = this.client
    this.client = undefined
    old?.ws.terminate()
    let client: Client
    try {
      client = await Client.open(child.url('/batches'))
    } catch {
      return false
    }
    this.client = client
    this.node = node
    const onFrame = (frame: Received) => {
      if (frame.type !== 'batch' || this.client !== client) return
      const step = frame.step as number
      this.deliveries.set(step, [...(this.deliveries.get(step) ?? []), contentsOf(frame)])
      if (!this.firstDelivery.has(step)) {
        this.firstDelivery.set(step, frame)
        this.deliveredAt.set(step, performance.now())
      }
      client.send({ type: 'ack', step, policyVersion: step })
    }
    for (const frame of client.frames) onFrame(frame)
    client.onFrame(onFrame)
    return true
  }

  get connected(): boolean {
    return this.client !== undefined && this.client.closed === undefined
  }

  get maxStep(): number {
    return Math.max(0, ...this.deliveries.keys())
  }
}

/** `count` prompts of two rollouts, ids `${prefix}${p}-${i}`, as fault producer items. */
const itemsOf = (prefix: string, from: number, count: number): Item[] =>
  prompts(prefix, from + count)
    .slice(2 * from)
    .map((body) => ({ id: body.id, body }))

// Every consumer of the nodes is a StreamFollower: with a NATS server killed, nats.js's ordered
// consumers could sit silent for good (owners of three partitions stalled at once in a CI run,
// seed 14330810); a follower replaces a consumer that keeps it waiting while its stream holds more.
t.test('chaos: sequencer, partition owner and NATS server killed; exactly once, λ equal to replay --nats', { skip, timeout: 240_000 }, async (t) => {
  t.comment(`seed ${SEED} (DUALSTREAM_FAULT_SEED=${SEED} repeats this run)`)
  const random = mulberry32(SEED)
  const nats = await startNats({ servers: 3 })
  t.teardown(() => nats.stop())
  const dir = tempDir('dualstream-cluster-chaos-')
  const configPath = join(dir, 'config.json')
  writeFileSync(configPath, JSON.stringify(baseConfig))
  const nodes = new Nodes(clusterArgs(configPath, nats, 'chaos'))
  t.teardown(() => nodes.stopAll())
  for (const name of ['a', 'b', 'c']) await nodes.start(name)

  // two producers, each a sequence of waves (4 prompts: 2 batches) paced a little apart so that
  // the faults fall while rollouts flow; a wave resends what was not acknowledged on another node
  // waves go on until the faults are over, then three more each: the faults fall while rollouts flow
  const PROMPTS_PER_WAVE = 4
  let faultsDone = false
  const waves: FaultProducer[][] = [[], []]
  const homes = ['a', 'b']
  let producing = true
  const produceAll = async (k: number) => {
    let after = 3
    for (let w = 0; producing && (!faultsDone || after-- > 0); w++) {
      const producer = new FaultProducer(`producer ${k} wave ${w}`, itemsOf(`p${k}w${w}-`, 0, PROMPTS_PER_WAVE), { frameSize: 3 })
      waves[k].push(producer)
      while (!producer.done && producing) {
        const alive = nodes.alive()
        const home = alive.find(([name]) => name === homes[k]) ?? alive[Math.floor(random() * alive.length)]
        if (home === undefined) {
          await new Promise((resolve) => setTimeout(resolve, 100))
          continue
        }
        homes[k] = home[0]
        // a node cut off from NATS keeps the connection but answers nothing: give up on it after a while
        const life = await producer.life(home[1].url('/ingest'), 8000).catch(() => 'stuck' as const)
        producer.client?.ws.terminate()
        if (life !== 'done') homes[k] = alive[(alive.findIndex(([name]) => name === home[0]) + 1) % alive.length][0]
      }
      await new Promise((resolve) => setTimeout(resolve, 500 + random() * 400))
    }
  }
  const producersDone = Promise.all([produceAll(0), produceAll(1)])

  const trainer = new MovingTrainer()
  let trainerMoves = 0
  /** Keeps the trainer connected: to `prefer` when given, else to any live node. */
  const keepTrainer = async (prefer?: string) => {
    while (watching) {
      const alive = nodes.alive().filter(([name]) => prefer === undefined || name === prefer)
      if (alive.length === 0) {
        await new Promise((resolve) => setTimeout(resolve, 100))
        continue
      }
      const [name, child] = alive[Math.floor(random() * alive.length)]
      const before = trainer.node
      if (await trainer.connect(name, child)) {
        if (before !== undefined && before !== name) trainerMoves++
        return
      }
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  }
  let watching = true
  // a failing check ends the test: the loops stop with it
  t.teardown(() => {
    watching = false
    producing = false
  })
  await keepTrainer('c')
  const watcher = (async () => {
    while (watching) {
      if (!trainer.connected) await keepTrainer()
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  })()

  /** What each node says and where each partition's rollouts stopped, for a failure's message. */
  const diagnose = async (): Promise<string> => {
    // what each node says, for the failure message
    const views = await Promise.all(
      nodes.alive().map(async ([name, child]) => {
        const health = await fetch(`http://127.0.0.1:${child.port}/healthz`, { signal: AbortSignal.timeout(1000) }).then(
          (r) => r.text(),
          (e: Error) => e.message,
        )
        return `${name}: /cluster ${JSON.stringify(await clusterOf(child))} /healthz ${health.slice(0, 400)}\n${child.output().slice(-1500)}`
      }),
    )
    // where the rollouts stopped: each partition's index against what its owner has published
    const nc = await connect({ servers: nats.urls })
    const jsm = await jetstreamManager(nc)
    const layout = runLayout('chaos')
    const streams: string[] = []
    for (let p = 0; p < PARTITIONS; p++) {
      const index = await jsm.streams.getMessage(layout.streams.rollouts, { last_by_subj: layout.subjects.partition(p) }).catch(() => null)
      const groups = await jsm.streams.getMessage(layout.streams.groups, { last_by_subj: layout.subjects.groups(p) }).catch(() => null)
      const last = groups === null ? undefined : decodeMessage<{ n: number; through: number }>(groups.data)
      streams.push(`partition ${p}: index last seq ${index?.seq}, groups last n ${last?.n} through ${last?.through}`)
    }
    await nc.close()
    return `trainer on ${trainer.node} (connected ${trainer.connected})\n${streams.join('\n')}\n${views.join('\n')}`
  }
  const untilStep = (step: number, what: string, timeoutMs = 30_000) =>
    waitFor(`${what} (step ${step}; the trainer has ${trainer.maxStep})`, () => trainer.maxStep >= step, timeoutMs).catch(async (error: Error) => {
      throw new Error(`${error.message}; ${await diagnose()}`)
    })

  // 1. the sequencer's node
  const killSequencerAt = 4 + Math.floor(random() * 8)
  await untilStep(killSequencerAt, 'steps before the sequencer kill')
  const sequencer = await nodes.sequencer()
  const killedAt = performance.now()
  await nodes.kill(sequencer)
  // the newest step the dead sequencer published (the trainer may not have it yet): what BATCHES holds once
  // the bytes it sent before dying are processed (no other sequencer can publish before its lease expires)
  await new Promise((resolve) => setTimeout(resolve, 200))
  const stepAtKill = await lastStoredStep(nats)
  t.comment(`step ${stepAtKill}: SIGKILLed node ${sequencer}, the sequencer`)
  await untilStep(stepAtKill + 1, 'a new step after the sequencer kill')
  const failoverMs = trainer.deliveredAt.get(stepAtKill + 1)! - killedAt
  t.comment(`failover: sequencer SIGKILL → next new step at the trainer in ${failoverMs.toFixed(0)} ms (issue 11 wants ≤ 10 s; lease ${LEASE_MS} ms)`)
  t.ok(failoverMs <= 10_000, `failover within 10 s (${failoverMs.toFixed(0)} ms)`)
  await nodes.start(sequencer)

  // the trainer moves to another node at least once
  await untilStep(stepAtKill + 2, 'steps before the trainer moves')
  await keepTrainer(nodes.alive().find(([name]) => name !== trainer.node)![0])

  // 2. a partition owner's node (not the sequencer's, which was killed already)
  const killOwnerAt = trainer.maxStep + 3 + Math.floor(random() * 6)
  await untilStep(killOwnerAt, 'steps before the partition owner kill')
  const owners = await waitFor(
    'partition owners',
    async () => {
      const views = await Promise.all(nodes.alive().map(([, child]) => clusterOf(child)))
      const owning = views.filter((v): v is ClusterView => v !== undefined && v.roles.partitions.length > 0 && !v.roles.sequencer)
      return owning.length > 0 ? owning : undefined
    },
    15_000,
    100,
  ).catch(async () =>
    (await Promise.all(nodes.alive().map(([, child]) => clusterOf(child)))).filter((v): v is ClusterView => v !== undefined && v.roles.partitions.length > 0),
  )
  const owner = owners[Math.floor(random() * owners.length)]
  t.comment(`step ${trainer.maxStep}: SIGKILLed node ${owner.node}, owner of partitions ${owner.roles.partitions.join(',')}`)
  await nodes.kill(owner.node)
  await untilStep(trainer.maxStep + 1, 'a new step after the partition owner kill')
  await nodes.start(owner.node)

  // 3. one NATS server
  const server = Math.floor(random() * 3)
  const killNatsAt = trainer.maxStep + 2 + Math.floor(random() * 6)
  await untilStep(killNatsAt, 'steps before the NATS server kill')
  t.comment(`step ${trainer.maxStep}: SIGKILLed NATS server ${server}`)
  await nats.kill(server)
  await untilStep(trainer.maxStep + 1, 'a new step with a NATS server down')
  await nats.restart(server)
  t.comment(`step ${trainer.maxStep}: NATS server ${server} restarted`)

  faultsDone = true
  await Promise.race([
    producersDone,
    new Promise((_, reject) =>
      setTimeout(
        () =>
          void diagnose().then((d) =>
            reject(
              new Error(
                `producers not done within 120 s; ${waves
                  .flat()
                  .filter((p) => !p.done)
                  .map((p) => p.name)
                  .join(', ')} not done; ${d}`,
              ),
            ),
          ),
        120_000,
      ).unref(),
    ),
  ])
  const STEPS = waves.flat().length * (PROMPTS_PER_WAVE / 2)
  await untilStep(STEPS, 'every step delivered', 60_000)
  watching = false
  await watcher
  producing = false
  trainer.client?.ws.terminate()

  for (const producer of waves.flat()) {
    t.same(producer.violations, [], `${producer.name}: every answer was for its oldest unanswered frame`)
  }
  t.ok(
    waves.flat().every((p) => p.done),
    'every rollout acknowledged to its producer',
  )
  t.ok(trainerMoves >= 1, `the trainer moved between nodes ${trainerMoves} times`)
  const steps = [...trainer.deliveries.keys()].sort((a, b) => a - b)
  t.same(
    steps,
    Array.from({ length: STEPS }, (_, i) => i + 1),
    'every step delivered',
  )
  t.same(
    steps.filter((s) => new Set(trainer.deliveries.get(s)).size > 1),
    [],
    'a step delivered more than once always with identical contents',
  )
  const count = new Map<string, number>()
  for (const s of steps) for (const r of trainer.firstDelivery.get(s)!.rollouts as { id: string }[]) count.set(r.id, (count.get(r.id) ?? 0) + 1)
  const sent = waves.flat().flatMap((p) => p.items.map((i) => i.id))
  t.same([...count.keys()].sort(), [...sent].sort(), 'every rollout id in a delivered step')
  t.same(
    [...count].filter(([, n]) => n !== 1),
    [],
    'each in exactly one',
  )

  const replay = replayLines(['--config', configPath, '--nats', nats.url, '--run', 'chaos'])
  t.equal(replay.status, 0, `replay --nats finds no difference: ${replay.stderr.slice(0, 2000)}`)
  const records = replay.lines
  t.same(
    records.map((r) => r.step),
    steps,
    'replay --nats gives the same steps',
  )
  t.same(
    records.map((r) => r.lambda),
    steps.map((s) => trainer.firstDelivery.get(s)!.lambda),
    'λ at every delivered step equals replay --nats',
  )
  t.same(
    records.map((r) => r.advantages),
    steps.map((s) => Object.fromEntries((trainer.firstDelivery.get(s)!.rollouts as { id: string; advantage: number }[]).map((r) => [r.id, r.advantage]))),
    'and so does every advantage',
  )
  t.comment(`node restart → listening max ${Math.max(...nodes.restarts).toFixed(0)} ms; trainer moves ${trainerMoves}`)
})

t.test('lease fencing: a sequencer paused past its lease publishes nothing when it wakes', { skip, timeout: 120_000 }, async (t) => {
  const nats = await startNats({ servers: 1 })
  t.teardown(() => nats.stop())
  const dir = tempDir('dualstream-cluster-fence-')
  const configPath = join(dir, 'config.json')
  writeFileSync(configPath, JSON.stringify(baseConfig))
  const nodes = new Nodes(clusterArgs(configPath, nats, 'fence'))
  t.teardown(() => nodes.stopAll())
  await nodes.start('a')
  await nodes.start('b')
  const paused = await nodes.sequencer()
  const other = paused === 'a' ? 'b' : 'a'
  const otherChild = nodes.children.get(other)!
  const pausedChild = nodes.children.get(paused)!

  const producer = await Client.open(otherChild.url('/ingest'))
  const trainer = (await Client.open(otherChild.url('/batches'))).autoAck()
  let acks = 0
  const send = async (prefix: string) => {
    producer.send({ type: 'rollouts', rollouts: prompts(prefix, 4) })
    await producer.nth('ack', ++acks, 20_000)
  }
  await send('before')
  await trainer.nth('batch', 2, 20_000)

  pausedChild.kill('SIGSTOP')
  t.teardown(() => pausedChild.kill('SIGCONT'))
  await waitFor(`node ${other} to take the sequencer lease`, async () => (await clusterOf(otherChild))?.roles.sequencer === true, 20_000, 100)
  await send('during')
  await trainer.nth('batch', 4, 20_000)
  pausedChild.kill('SIGCONT')
  await waitFor(`node ${paused} to notice it no longer holds the sequencer`, async () => (await clusterOf(pausedChild))?.roles.sequencer === false, 20_000, 100)
  t.pass(`node ${paused}'s /cluster shows it no longer holds the sequencer`)
  await send('after')
  await trainer.nth('batch', 6, 20_000)

  const nc = await connect({ servers: nats.urls })
  t.teardown(() => nc.close())
  const jsm = await jetstreamManager(nc)
  const stream = runLayout('fence').streams.batches
  const info = await jsm.streams.info(stream)
  const steps: number[] = []
  for (let seq = info.state.first_seq; seq <= info.state.last_seq; seq++) {
    for (const entry of decodeBatchesMessage((await jsm.streams.getMessage(stream, { seq }))!.data)) steps.push(entry.step)
  }
  t.same(
    steps,
    Array.from({ length: steps.length }, (_, i) => i + 1),
    `the BATCHES stream holds steps 1…${steps.length} once each, in order`,
  )
  t.equal(steps.length, 6, 'and nothing more than the six batches')
  t.same(
    trainer.of('batch').map((b) => b.step),
    [1, 2, 3, 4, 5, 6],
    'the trainer got each step once',
  )
  await producer.close()
  await trainer.close()
})

t.test('bad input to a cluster node is answered exactly as one node answers it', { skip, timeout: 120_000 }, async (t) => {
  const nats = await startNats({ servers: 1 })
  t.teardown(() => nats.stop())
  const dir = tempDir('dualstream-cluster-bad-')
  const configPath = join(dir, 'config.json')
  writeFileSync(configPath, JSON.stringify(baseConfig))
  const tokens = { DUALSTREAM_PRODUCER_TOKEN: 'prod-secret', DUALSTREAM_TRAINER_TOKEN: 'train-secret', DUALSTREAM_VIEWER_TOKEN: 'view-secret' }
  const env = { ...process.env, ...tokens }
  const single = await startServe(['-c', configPath, '-d', join(dir, 'data'), '--heartbeat-ms', '0'], { env })
  t.teardown(() => single.kill())
  const nodes = new Nodes(clusterArgs(configPath, nats, 'bad'), env)
  t.teardown(() => nodes.stopAll())
  const node = await nodes.start('a')

  /** Every case against one server: what it answered, in order. */
  const answers = async (server: ServeChild): Promise<unknown[]> => {
    const out: unknown[] = []
    const http = async (path: string, token?: string) => {
      const response = await fetch(`http://127.0.0.1:${server.port}${path}`, { headers: token === undefined ? {} : { authorization: `Bearer ${token}` } })
      return { path, status: response.status, body: path === '/healthz' ? undefined : await response.text() }
    }
    out.push(await http('/nope'))
    out.push(await http('/healthz', tokens.DUALSTREAM_VIEWER_TOKEN))
    out.push(await http('/ingest', tokens.DUALSTREAM_PRODUCER_TOKEN))
    out.push({ ingest: await upgradeStatus(server.url('/ingest')) })
    out.push({ ingestWrong: await upgradeStatus(server.url('/ingest'), { authorization: 'Bearer wrong' }) })
    out.push({ ingestTrainerToken: await upgradeStatus(server.url('/ingest'), { authorization: `Bearer ${tokens.DUALSTREAM_TRAINER_TOKEN}` }) })
    out.push({ batchesWrong: await upgradeStatus(server.url('/batches'), { authorization: 'Bearer wrong' }) })
    out.push({ batchesQueryWrong: await upgradeStatus(`${server.url('/batches')}?token=wrong`) })

    const producer = await Client.open(server.url('/ingest'), { headers: { authorization: `Bearer ${tokens.DUALSTREAM_PRODUCER_TOKEN}` } })
    const frames: (Buffer | string)[] = [
      Buffer.from([0xc1, 0x00]), // not MessagePack
      Buffer.from([0x92, 0x01]), // an array that lies about its length
      '{"type":', // not JSON
      pack({ type: 'nonsense' }), // an unknown frame type
      pack({ type: 'ack', step: 1 }), // a trainer's frame on /ingest
      pack([1, 2, 3]),
      pack({ type: 'rollouts', rollouts: 'many' }),
      pack({ type: 'rollouts', rollouts: new Array(10_001).fill(0) }), // too many rollouts
      pack({
        type: 'rollouts',
        rollouts: [
          { id: 'ok0', promptId: 'ok', rewards: { accuracy: 1, consistency: 1 } },
          { id: 'bad-nan', promptId: 'h', rewards: { accuracy: 'high' } },
          { id: 'ok1', promptId: 'ok', rewards: { accuracy: 0, consistency: 1 } },
          { id: 'bad-pv', promptId: 'h', rewards: {}, policyVersion: -1 },
          null,
          { id: 'ok2', promptId: 'ok2', rewards: { accuracy: 1, consistency: 0 } },
          { id: 'ok3', promptId: 'ok2', rewards: { accuracy: 0, consistency: 1 } },
        ],
      }),
    ]
    for (const frame of frames) producer.ws.send(frame)
    await producer.until(() => producer.count('ack') === 1, 20_000, 'the ack of the valid items')
    out.push({ producer: producer.frames.filter((f) => f.type !== 'credit') })
    await producer.close()

    const trainer = await Client.open(server.url('/batches'), { headers: { authorization: `Bearer ${tokens.DUALSTREAM_TRAINER_TOKEN}` } })
    // step 1 delivered first: a cluster node knows a step only once the sequencer has published
    // it, after the producer's ack, so the answer to an ack of step 7 names the same last step
    const batch = await trainer.nth('batch', 1, 20_000)
    const bad: unknown[] = [{ type: 'rollouts', rollouts: [] }, { type: 'ack' }, { type: 'ack', step: 0 }, { type: 'ack', step: 1.5 }, { type: 'ack', step: 7 }]
    for (const frame of bad) trainer.send(frame)
    trainer.ws.send('{"type":')
    await trainer.until(() => trainer.count('error') === bad.length + 1, 20_000, 'every bad ack answered')
    trainer.send({ type: 'ack', step: batch.step, policyVersion: -1 })
    trainer.send({ type: 'ack', step: batch.step, policyVersion: 'x' })
    await trainer.until(() => trainer.count('error') === bad.length + 3, 20_000, 'the bad policy versions answered')
    out.push({
      trainer: {
        batches: trainer.of('batch').map((f) => ({ step: f.step, ids: f.rollouts.map((r: { id: string }) => r.id) })),
        answers: trainer.frames.filter((f) => f.type !== 'batch'),
      },
    })
    await trainer.close()
    return out
  }
  const expected = await answers(single)
  // a cluster node has one endpoint more, /cluster, which its 404 names
  const got = JSON.parse(JSON.stringify(await answers(node)).replace('/cluster, ', '')) as unknown[]
  t.same(got, JSON.parse(JSON.stringify(expected)), 'every code, status and reason as on one node (the 404 naming /cluster besides)')
  t.match(JSON.stringify(expected), /"status":401/, 'the cases include a 401')
  t.match(JSON.stringify(expected), /"status":404/, 'and a 404')
  t.match(JSON.stringify(expected), /too-many-rollouts/, 'and too many rollouts')
  t.match(JSON.stringify(expected), /"field":"rewards.accuracy"/, 'and an invalid item named by its field')
})
