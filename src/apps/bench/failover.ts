/**
 * The failover bench (issue 11, part of `npm run bench -- --cluster`): three `dualstream serve
 * --nats` nodes as child processes on a NATS server, a producer sending rollouts without pause
 * and a trainer acknowledging every batch, both on nodes other than the sequencer's. Each
 * round SIGKILLs the node that holds the sequencer's lease and times kill → the first step
 * newer than any committed before the kill arriving at the trainer (lease expiry included),
 * then restarts the node under its name and waits until every partition has an owner again.
 *
 * The nodes run the compiled CLI (`dist/`, built by `npm run bench`), with the default lease
 * unless one is given.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { jetstreamManager } from '@nats-io/jetstream'
import WebSocket from 'ws'
import { connectNats } from '../../state/cluster/natsConnect.js'
import { runLayout } from '../../state/cluster/runLayout.js'
import { readLastBatch } from '../../state/cluster/sequencer.js'
import { startNats, type NatsServers } from '../natsServers.js'
import { benchConfigSource } from './core.js'
import { median } from './measure.js'

export interface FailoverBenchOptions {
  /** Sequencer kills (default 10). */
  kills?: number
  /** The nodes' lease (ms; default: serve's own, 3000). */
  leaseMs?: number
  partitions?: number
  /** An existing NATS to use (default: a 1-server NATS started here). */
  nats?: NatsServers
  log?: (line: string) => void
}

export interface FailoverReport {
  kills: number
  leaseMs: number | undefined
  /** Each kill → the next new step at the trainer (ms), in kill order. */
  failoverMs: number[]
  p50: number
  max: number
  /** Each restart of a killed node → it listens (ms). */
  restartMs: number[]
}

/** The repository's compiled CLI, from this file in `src/` or in `dist/src/`. */
function compiledCli(): string {
  let dir = dirname(fileURLToPath(import.meta.url))
  while (!existsSync(join(dir, 'package.json'))) dir = dirname(dir)
  return join(dir, 'dist', 'src', 'apps', 'main.js')
}

interface NodeChild {
  name: string
  process: ChildProcess
  port: number
  exited: Promise<void>
}

interface ClusterView {
  node: string
  roles: { sequencer: boolean; partitions: number[] }
  step: number
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** Polls `test` every `everyMs` until it gives a value (not undefined or false), failing after `timeoutMs`. */
async function poll<T>(what: string, test: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs: number, everyMs = 50): Promise<T> {
  const deadline = performance.now() + timeoutMs
  for (;;) {
    const value = await test()
    if (value !== undefined && value !== false) return value
    if (performance.now() > deadline) throw new Error(`failover bench: timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(everyMs)
  }
}

function startNode(cli: string, args: string[], name: string): Promise<NodeChild> {
  const child = spawn(process.execPath, [cli, 'serve', '--port', '0', '--node', name, '--heartbeat-ms', '0', ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()))
  return new Promise((resolve, reject) => {
    child.stdout!.on('data', (chunk: Buffer) => {
      output += chunk.toString()
      const match = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(output)
      if (match !== null) resolve({ name, process: child, port: Number(match[1]), exited })
    })
    void exited.then(() => reject(new Error(`failover bench: node ${name} exited before listening:\n${output}`)))
  })
}

async function viewOf(node: NodeChild): Promise<ClusterView | undefined> {
  try {
    const response = await fetch(`http://127.0.0.1:${node.port}/cluster`, { signal: AbortSignal.timeout(1000) })
    return (await response.json()) as ClusterView
  } catch {
    return undefined
  }
}

/**
 * Sends frames of 8 groups of 8 rollouts to a node's /ingest, one at a time, each after the
 * previous one's ack; a frame whose connection closed before its ack goes again, to whichever
 * node `pick` names then.
 */
class Producer {
  private running = true
  private frame = 0
  private socket: WebSocket | undefined
  acked = 0
  readonly done: Promise<void>

  constructor(private readonly pick: () => NodeChild) {
    this.done = this.loop()
  }

  private async loop(): Promise<void> {
    while (this.running) {
      const node = this.pick()
      try {
        await this.session(node)
      } catch {
        // the node went away: the unacknowledged frame goes to another
      }
      if (this.running) await sleep(50)
    }
  }

  private session(node: NodeChild): Promise<void> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(`ws://127.0.0.1:${node.port}/ingest?format=json`)
      this.socket = ws
      const send = () => {
        const f = this.frame
        const rollouts = Array.from({ length: 64 }, (_, k) => ({
          id: `f${f}-${k}`,
          promptId: `f${f}-p${k >> 3}`,
          rewards: { accuracy: k % 2, consistency: k % 5 === 0 ? 0 : 1, grounding: ((k * 37) % 100) / 100 },
        }))
        ws.send(JSON.stringify({ type: 'rollouts', rollouts }))
      }
      ws.on('open', send)
      ws.on('message', (data, isBinary) => {
        if (isBinary) return
        const message = JSON.parse(data.toString()) as { type: string }
        if (message.type !== 'ack') return
        this.frame++
        this.acked += 64
        // a modest pace: the bench times failover, not a saturated machine
        if (this.running) setTimeout(() => ws.readyState === WebSocket.OPEN && send(), 10)
      })
      ws.on('close', () => (this.running ? reject(new Error('closed')) : resolve()))
      ws.on('error', () => {})
    })
  }

  /** Moves to the node `pick` names now (its connection is closed; the frame in flight is sent again). */
  move(): void {
    this.socket?.terminate()
  }

  async stop(): Promise<void> {
    this.running = false
    this.socket?.close()
    await this.done
  }
}

/** Acknowledges every batch of a node's /batches and notes when each step first arrived. */
class Trainer {
  readonly firstSeen = new Map<number, number>()
  maxStep = 0
  private socket: WebSocket | undefined

  connect(node: NodeChild): void {
    this.socket?.terminate()
    const ws = new WebSocket(`ws://127.0.0.1:${node.port}/batches?format=json`)
    this.socket = ws
    ws.on('message', (data) => {
      const message = JSON.parse(data.toString()) as { type: string; step?: number }
      if (message.type !== 'batch') return
      const step = message.step!
      if (!this.firstSeen.has(step)) this.firstSeen.set(step, performance.now())
      this.maxStep = Math.max(this.maxStep, step)
      ws.send(JSON.stringify({ type: 'ack', step, policyVersion: step }))
    })
    ws.on('error', () => {})
  }

  close(): void {
    this.socket?.terminate()
  }
}

/** Runs the failover bench: `kills` rounds of SIGKILL the sequencer's node, time the next new step, restart it. */
export async function benchFailover(options: FailoverBenchOptions = {}): Promise<FailoverReport> {
  const kills = options.kills ?? 10
  const partitions = options.partitions ?? 4
  const log = options.log ?? (() => {})
  const cli = compiledCli()
  if (!existsSync(cli)) throw new Error(`failover bench: the nodes run the compiled CLI, ${cli} is missing (npm run build)`)
  const ownNats = options.nats === undefined
  const nats = options.nats ?? (await startNats({ servers: 1 }))
  const dir = mkdtempSync(join(tmpdir(), 'dualstream-failover-'))
  const configPath = join(dir, 'config.json')
  writeFileSync(configPath, JSON.stringify(benchConfigSource))
  const run = `failover${process.pid}_${Date.now()}`
  const args = ['--config', configPath, '--nats', nats.url, '--run', run, '--partitions', String(partitions)]
  if (options.leaseMs !== undefined) args.push('--lease-ms', String(options.leaseMs))
  const nodes = new Map<string, NodeChild>()
  const nc = await connectNats({ servers: nats.url, name: 'dualstream failover bench' })
  const jsm = await jetstreamManager(nc)
  const layout = runLayout(run)
  const start = async (name: string) => {
    const started = performance.now()
    nodes.set(name, await startNode(cli, args, name))
    return performance.now() - started
  }
  let producer: Producer | undefined
  const trainer = new Trainer()
  const failoverMs: number[] = []
  const restartMs: number[] = []
  try {
    // the first node creates the run; the others join it
    await start('n0')
    await Promise.all([start('n1'), start('n2')])
    const views = async () => (await Promise.all([...nodes.values()].map(viewOf))).filter((v): v is ClusterView => v !== undefined)
    const settled = () =>
      poll(
        'one sequencer and every partition owned',
        async () => {
          const all = await views()
          const owned = new Set(all.flatMap((v) => v.roles.partitions))
          const sequencers = all.filter((v) => v.roles.sequencer)
          return all.length === nodes.size && owned.size === partitions && sequencers.length === 1 ? sequencers[0].node : undefined
        },
        60_000,
      )
    let sequencer = await settled()
    // producer and trainer on nodes other than the sequencer's (they move before each kill)
    let clientNode = [...nodes.values()].find((n) => n.name !== sequencer)!
    producer = new Producer(() => clientNode)
    trainer.connect(clientNode)
    await poll('the first steps at the trainer', () => trainer.maxStep >= 3, 60_000)
    for (let kill = 0; kill < kills; kill++) {
      sequencer = await settled()
      if (clientNode.name === sequencer) {
        clientNode = [...nodes.values()].find((n) => n.name !== sequencer)!
        producer.move()
        trainer.connect(clientNode)
      }
      // a few steps on the current sequencer first, so the kill lands mid-run
      const from = trainer.maxStep
      await poll('steps before the kill', () => trainer.maxStep >= from + 2, 60_000)
      const victim = nodes.get(sequencer)!
      const killedAt = performance.now()
      victim.process.kill('SIGKILL')
      await victim.exited
      nodes.delete(sequencer)
      // the steps the dead sequencer had published (some perhaps not yet at the trainer): what NATS
      // holds once the bytes it sent before dying are processed (the server reads a closed
      // socket's data first; the margin covers its turn to do so)
      await sleep(200)
      const stepAtKill = (await readLastBatch(jsm, layout)).entry?.step ?? 0
      const seenAt = await poll('the next new step after the kill', () => trainer.firstSeen.get(stepAtKill + 1), 60_000, 5)
      failoverMs.push(seenAt - killedAt)
      log(
        `failover ${kill + 1}/${kills}: SIGKILL node ${sequencer} (the sequencer) at step ${stepAtKill} → step ${stepAtKill + 1} at the trainer in ${(seenAt - killedAt).toFixed(0)} ms`,
      )
      restartMs.push(await start(sequencer))
    }
  } finally {
    trainer.close()
    await producer?.stop()
    for (const node of nodes.values()) {
      node.process.kill('SIGKILL')
      await node.exited
    }
    await nc.close()
    if (ownNats) await nats.stop()
    rmSync(dir, { recursive: true, force: true })
  }
  return { kills, leaseMs: options.leaseMs, failoverMs, p50: median(failoverMs), max: Math.max(...failoverMs), restartMs }
}
