/** Helpers for the serve tests: an engine server on a free port, and WebSocket clients that record frames. */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { PassThrough, Readable } from 'node:stream'
import { Packr, Unpackr } from 'msgpackr'
import WebSocket from 'ws'
import { run } from '../../src/apps/cli.js'
import { parseConfig, type ConfigInput } from '../../src/core/config.js'
import { DurableEngine } from '../../src/state/durableEngine.js'
import { EngineServer, type EngineServerOptions } from '../../streams/engineServer.js'

export const packr = new Packr({ useRecords: false })
export const unpackr = new Unpackr({ useRecords: false, int64AsType: 'number' })
export const pack = (value: unknown): Buffer => packr.pack(value)

export const baseConfig: ConfigInput = {
  groupSize: 2,
  batchGroups: 2,
  objectives: [{ channel: 'accuracy' }],
  constraints: [{ channel: 'consistency', sense: '>=', threshold: 0.9, sampleThreshold: 0.5, dual: { rule: 'sgd', lr: 0.5, max: 5 } }],
}

// temporary folders (LMDB data, configs) go when the test process exits
const made: string[] = []
process.on('exit', () => {
  for (const dir of made) rmSync(dir, { recursive: true, force: true })
})

export function tempDir(prefix = 'dualstream-serve-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  made.push(dir)
  return dir
}

export const rollout = (id: string, promptId: string, accuracy: number, consistency: number, extra: object = {}) => ({
  id,
  promptId,
  rewards: { accuracy, consistency },
  ...extra,
})

/** `count` prompts of `groupSize` rollouts each, ids `${prefix}${p}-${i}`. */
export function prompts(prefix: string, count: number, groupSize = 2) {
  const out = []
  for (let p = 0; p < count; p++) {
    for (let i = 0; i < groupSize; i++) out.push(rollout(`${prefix}${p}-${i}`, `${prefix}${p}`, (p + i) % 2, (p * 3 + i) % 4 === 0 ? 0 : 1))
  }
  return out
}

export interface Served {
  engine: DurableEngine
  server: EngineServer
  dataDir: string
  port: number
  url(path: string, query?: string): string
  close(): Promise<void>
}

/** Opens an engine in a fresh (or given) data folder behind a server on a free loopback port. */
export async function startServer(options: Partial<Omit<EngineServerOptions, 'engine'>> & { config?: ConfigInput; dataDir?: string } = {}): Promise<Served> {
  const { config = baseConfig, dataDir = tempDir(), ...rest } = options
  const engine = await DurableEngine.open({ config: parseConfig(config), dataDir, watermarkIntervalMs: 0 })
  const server = new EngineServer({ engine, ...rest })
  const { port } = await server.listen(0, '127.0.0.1')
  return {
    engine,
    server,
    dataDir,
    port,
    url: (path, query) => `ws://127.0.0.1:${port}${path}${query === undefined ? '' : `?${query}`}`,
    close: async () => {
      await server.close()
      await engine.close()
    },
  }
}

export type Received = Record<string, any> // eslint-disable-line @typescript-eslint/no-explicit-any

/** A WebSocket client that decodes and records every frame, with waits on what arrives. */
export class Client {
  readonly frames: Received[] = []
  private readonly counts = new Map<string, number>()
  private readonly listeners: ((frame: Received) => void)[] = []
  private waiters: { test: () => boolean; resolve: () => void }[] = []
  closed: { code: number; reason: string } | undefined

  constructor(readonly ws: WebSocket) {
    ws.on('message', (data: Buffer, isBinary) => {
      const frame = (isBinary ? unpackr.unpack(data) : JSON.parse(data.toString())) as Received
      this.frames.push(frame)
      this.counts.set(frame.type, (this.counts.get(frame.type) ?? 0) + 1)
      for (const listener of this.listeners) listener(frame)
      this.check()
    })
    ws.on('close', (code, reason) => {
      this.closed = { code, reason: reason.toString() }
      this.check()
    })
  }

  static open(url: string, options: WebSocket.ClientOptions = {}): Promise<Client> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, options)
      const client = new Client(ws)
      ws.once('open', () => resolve(client))
      ws.once('error', reject)
      ws.once('unexpected-response', (_req, res) => reject(Object.assign(new Error(`HTTP ${res.statusCode}`), { statusCode: res.statusCode })))
    })
  }

  private check(): void {
    this.waiters = this.waiters.filter((w) => {
      if (!w.test()) return true
      w.resolve()
      return false
    })
  }

  /** Resolves once `test` holds (checked on every frame and on close). */
  until(test: () => boolean, timeoutMs = 10_000, what = 'a condition'): Promise<void> {
    if (test()) return Promise.resolve()
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`timed out waiting for ${what}; frames: ${JSON.stringify(this.frames.slice(-5)).slice(0, 800)}`)),
        timeoutMs,
      )
      this.waiters.push({
        test,
        resolve: () => {
          clearTimeout(timer)
          resolve()
        },
      })
    })
  }

  /** Calls `listener` with every frame from now on. */
  onFrame(listener: (frame: Received) => void): this {
    this.listeners.push(listener)
    return this
  }

  /** Acknowledges every batch as it arrives (a trainer that keeps up). */
  autoAck(): this {
    return this.onFrame((frame) => {
      if (frame.type === 'batch') this.send({ type: 'ack', step: frame.step })
    })
  }

  /** How many frames of a type arrived. */
  count(type: string): number {
    return this.counts.get(type) ?? 0
  }

  of(type: string): Received[] {
    return this.frames.filter((f) => f.type === type)
  }

  /** Waits for the n-th frame of a type (1-based) and returns it. */
  async nth(type: string, n = 1, timeoutMs?: number): Promise<Received> {
    await this.until(() => this.count(type) >= n, timeoutMs, `${type} frame #${n}`)
    return this.of(type)[n - 1]
  }

  /** The latest credit announced. */
  get credit(): number {
    const credits = this.of('credit')
    return credits.length === 0 ? -1 : credits[credits.length - 1].credit
  }

  send(frame: unknown): void {
    this.ws.send(pack(frame))
  }

  async close(): Promise<void> {
    if (this.closed !== undefined) return
    this.ws.close()
    await this.until(() => this.closed !== undefined, 5000, 'close')
  }
}

/** The HTTP status of an upgrade attempt (101 when it opened). */
export function upgradeStatus(url: string, headers: Record<string, string> = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers })
    ws.once('open', () => {
      ws.close()
      resolve({ status: 101, body: '' })
    })
    ws.once('unexpected-response', (_req, res) => {
      let body = ''
      res.on('data', (c: Buffer) => (body += c.toString()))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
    })
    ws.once('error', reject)
  })
}

/**
 * Streams rollouts as a well-behaved producer: frames of at most `frameSize`, never more
 * than the announced credit unanswered. Resolves once every frame is acknowledged; rejects
 * if the connection closes first.
 */
export async function produce(client: Client, rollouts: readonly object[], frameSize: number, timeoutMs = 30_000): Promise<void> {
  const sizes: number[] = []
  const acksBefore = client.count('ack')
  let sent = 0
  let answeredSize = 0
  let answeredFrames = 0
  const inflight = () => {
    const answered = client.count('ack') - acksBefore
    while (answeredFrames < answered) answeredSize += sizes[answeredFrames++]
    return sent - answeredSize
  }
  while (sent < rollouts.length) {
    await client.until(() => client.closed !== undefined || client.credit - inflight() > 0, timeoutMs, 'credit')
    if (client.closed !== undefined) throw new Error(`connection closed (${client.closed.code})`)
    const size = Math.min(frameSize, client.credit - inflight(), rollouts.length - sent)
    // the credit may have shrunk since the wait resolved (a credit frame read in between)
    if (size <= 0) continue
    client.send({ type: 'rollouts', rollouts: rollouts.slice(sent, sent + size) })
    sizes.push(size)
    sent += size
  }
  await client.until(() => client.closed !== undefined || client.count('ack') - acksBefore === sizes.length, timeoutMs, 'the last ack')
  if (client.count('ack') - acksBefore < sizes.length) throw new Error(`connection closed (${client.closed!.code})`)
}

/** A config file of `config` (default `baseConfig`) in a temporary folder. */
export function configFile(config: ConfigInput = baseConfig): string {
  const path = join(tempDir(), 'config.json')
  writeFileSync(path, JSON.stringify(config))
  return path
}

/**
 * `dualstream serve ARGV` in this process: resolves once it prints where it listens (http or
 * https, any host), with its output so far and a way to stop it (SIGTERM, as the CLI handles it).
 */
export async function startServeCli(argv: string[]) {
  const stdout = new PassThrough()
  const stderr = new PassThrough()
  let out = ''
  let err = ''
  stdout.on('data', (c: Buffer) => (out += c.toString()))
  stderr.on('data', (c: Buffer) => (err += c.toString()))
  const exit = run(['serve', ...argv], { stdin: Readable.from([]), stdout, stderr })
  const listening = await new Promise<{ scheme: string; port: number }>((resolve, reject) => {
    const check = () => {
      const match = /listening on (https?):\/\/[^ ]+:(\d+) /.exec(out)
      if (match !== null) resolve({ scheme: match[1], port: Number(match[2]) })
    }
    stdout.on('data', check)
    exit.then(() => reject(new Error(`serve exited: ${out}${err}`)), reject)
  })
  return { ...listening, exit, output: () => out, errors: () => err, stop: () => process.emit('SIGTERM') }
}
