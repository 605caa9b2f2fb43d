/**
 * A trainer for `dualstream serve` in TypeScript (the Python package's `Trainer`, same rules;
 * PROTOCOL.md "Trainer"): iterate the batches, apply each, acknowledge it. Each batch is
 * yielded once, in step order, across reconnects and restarts: the last applied step (and
 * whatever small state the trainer wants kept with it, e.g. its checkpoint's path) is written
 * to `statePath` and fsynced before the acknowledgement leaves, and redelivered steps at or
 * below it are acknowledged without being yielded. As a data-parallel rank (`rank`, `world`)
 * it receives its shard of each batch.
 *
 * @example
 * const trainer = await TrainerClient.open({ url: 'ws://127.0.0.1:8787', token, statePath: 'trainer.json' })
 * for await (const batch of trainer) {
 *   const version = await update(batch.rollouts, batch.advantages) // a gradient step
 *   await batch.ack({ policyVersion: version })
 * }
 */
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import { dirname } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { Packr, Unpackr } from 'msgpackr'
import WebSocket from 'ws'

/** Which part of a batch a rank received (`shard` of PROTOCOL.md "Ranks"). */
export interface BatchShard {
  rank: number
  world: number
  /** Rollouts in the whole batch. */
  rollouts: number
  /** Positions of this shard's rollouts in the whole batch. */
  indices: number[]
}

export interface TrainerRollout<P = unknown> {
  id: string
  promptId: string
  advantage: number
  payload?: P
}

export interface TrainerBatch<P = unknown> {
  step: number
  /** λ of each constraint after this step's update. */
  lambda: Record<string, number>
  /** λ before and after, as sent. */
  lambdas: Record<string, { before: number; after: number }>
  constraints: Record<string, { mean: number; violation: number; sampleViolationRate: number; count: number }>
  rollouts: TrainerRollout<P>[]
  /** The advantages of `rollouts`, aligned. */
  advantages: Float64Array
  /** Rollouts in the whole batch (this rank's loss sum divided by it, all-reduced, is the batch mean). */
  batchSize: number
  shard?: BatchShard
  /** Records the step as applied (with `state`, durably) and acknowledges it. */
  ack(options?: { policyVersion?: number; state?: unknown }): Promise<void>
}

export interface TrainerClientOptions {
  /** The server (`ws://host:port`, `wss://host:port` when it serves TLS) or its `/batches` URL. */
  url: string
  token?: string
  /** For `wss://`: the PEM certificate(s) to trust instead of the system's CAs (a self-signed server certificate, a private CA). */
  ca?: string | Buffer | (string | Buffer)[]
  /** Where the last applied step (and the trainer's state) is kept. */
  statePath: string
  rank?: number
  world?: number
  /** Reconnection attempts in a row before giving up (default 20); the delay doubles from 100 ms to 5 s. */
  retries?: number
}

/** What stops a trainer for good: wrong token, refused rank, replaced by another connection, no server, or a frame the server refused. */
export class TrainerClientError extends Error {
  constructor(
    readonly code: 'unauthorized' | 'bad-rank' | 'replaced' | 'unreachable' | 'protocol',
    message: string,
  ) {
    super(message)
    this.name = 'TrainerClientError'
  }
}

interface SavedState {
  lastStep: number
  policyVersion?: number
  state?: unknown
}

const packr = new Packr({ useRecords: false })
const unpackr = new Unpackr({ useRecords: false, int64AsType: 'number' })

/** Writes `value` as JSON to `path` atomically and durably (temporary file, fsync, rename, fsync of the folder). */
function writeDurably(path: string, value: unknown): void {
  const temporary = `${path}.tmp`
  writeFileSync(temporary, JSON.stringify(value))
  const file = openSync(temporary, 'r+')
  try {
    fsyncSync(file)
  } finally {
    closeSync(file)
  }
  renameSync(temporary, path)
  const folder = openSync(dirname(path), 'r')
  try {
    fsyncSync(folder)
  } finally {
    closeSync(folder)
  }
}

function readState(path: string): SavedState {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return { lastStep: 0 }
    throw error
  }
  const saved = JSON.parse(text) as SavedState
  if (!Number.isSafeInteger(saved.lastStep) || saved.lastStep < 0)
    throw new Error(`${path}: lastStep must be an integer >= 0, got ${JSON.stringify(saved.lastStep)}`)
  return saved
}

export class TrainerClient<P = unknown> implements AsyncIterable<TrainerBatch<P>> {
  private saved: SavedState
  private readonly endpoint: string
  private ws: WebSocket | undefined
  // batches received and not yet taken by the iterator; a waiting iterator
  private readonly queue: TrainerBatch<P>[] = []
  private wake: (() => void) | undefined
  private failure: Error | undefined
  private closed = false
  // the newest step handed out: a redelivery of it (after a reconnect, before its ack) is not handed out again
  private lastYielded: number

  private constructor(private readonly options: TrainerClientOptions) {
    this.saved = readState(options.statePath)
    this.lastYielded = this.saved.lastStep
    const url = new URL(options.url)
    if (!url.pathname.endsWith('/batches')) url.pathname = `${url.pathname.replace(/\/$/, '')}/batches`
    // batches come as MessagePack (payload bytes stay bytes)
    url.searchParams.delete('format')
    url.searchParams.set('rank', String(options.rank ?? 0))
    url.searchParams.set('world', String(options.world ?? 1))
    this.endpoint = url.toString()
  }

  /** Connects and starts receiving batches (rejects when the first connection fails: a wrong URL or token says so at once). */
  static async open<P = unknown>(options: TrainerClientOptions): Promise<TrainerClient<P>> {
    const client = new TrainerClient<P>(options)
    void client.keepConnected(await client.connect())
    return client
  }

  /** The last step applied (acknowledged), as persisted. */
  get lastStep(): number {
    return this.saved.lastStep
  }

  /** The state saved with the last acknowledgement (`ack({ state })`), e.g. a checkpoint's path. */
  get state(): unknown {
    return this.saved.state
  }

  private connect(): Promise<WebSocket> {
    return new Promise((resolve, reject) => {
      const headers = this.options.token === undefined ? undefined : { authorization: `Bearer ${this.options.token}` }
      const ws = new WebSocket(this.endpoint, { headers, ca: this.options.ca })
      ws.on('unexpected-response', (request, response) => {
        let body = ''
        response.on('data', (chunk: Buffer) => (body += chunk.toString()))
        response.on('end', () => {
          const said = (() => {
            try {
              return (JSON.parse(body) as { error?: string }).error ?? body
            } catch {
              return body
            }
          })()
          const error =
            response.statusCode === 401
              ? new TrainerClientError('unauthorized', `401: ${said} (pass the trainer token: DUALSTREAM_TRAINER_TOKEN on the server)`)
              : new Error(`HTTP ${response.statusCode}: ${said}`)
          reject(error)
          request.destroy()
        })
      })
      ws.on('error', reject)
      ws.on('open', () => {
        this.ws = ws
        resolve(ws)
      })
      ws.on('message', (data: Buffer) => this.onFrame(unpackr.unpack(data) as Record<string, unknown>))
      ws.on('close', (code, reason) => {
        if (this.ws !== ws) return
        this.ws = undefined
        if (code === 4001) this.fail(new TrainerClientError('replaced', `another connection took rank ${this.options.rank ?? 0}: ${reason.toString()}`))
        this.wakeUp()
      })
    })
  }

  /** Reconnects after every drop of `ws`, with doubling delays, until closed or failed. */
  private async keepConnected(ws: WebSocket): Promise<void> {
    const retries = this.options.retries ?? 20
    for (;;) {
      await new Promise<void>((resolve) => ws.once('close', () => resolve()))
      let attempt = 0
      while (!this.closed && this.failure === undefined && this.ws === undefined) {
        await sleep(Math.min(5000, 100 * 2 ** attempt))
        try {
          ws = await this.connect()
        } catch (error) {
          if (error instanceof TrainerClientError) this.fail(error)
          else if (++attempt > retries) this.fail(new TrainerClientError('unreachable', `gave up after ${retries} reconnections: ${String(error)}`))
        }
      }
      if (this.closed || this.failure !== undefined) return
    }
  }

  private fail(error: Error): void {
    this.failure ??= error
    this.wakeUp()
  }

  private wakeUp(): void {
    const wake = this.wake
    this.wake = undefined
    wake?.()
  }

  private send(frame: object): void {
    // an ack lost with its connection is harmless: the step comes again after the reconnect, at or below lastStep
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(packr.pack(frame))
  }

  private onFrame(frame: Record<string, unknown>): void {
    if (frame.type === 'error') {
      // bad-rank: the connection is refused; anything else is a frame of ours the server could not take (a bug to hear of)
      const code = frame.code === 'bad-rank' ? 'bad-rank' : 'protocol'
      const what =
        code === 'bad-rank' ? `the server refused rank ${this.options.rank ?? 0}` : `the server refused a frame of this trainer (${String(frame.code)})`
      return this.fail(new TrainerClientError(code, `${what}: ${String(frame.reason)}`))
    }
    if (frame.type !== 'batch') return
    const step = frame.step as number
    // applied before (a redelivery): acknowledge again, with the version now (the first ack may have been lost), and do not hand it out
    if (step <= this.saved.lastStep) {
      const { policyVersion } = this.saved
      return this.send(policyVersion === undefined ? { type: 'ack', step } : { type: 'ack', step, policyVersion })
    }
    if (step <= this.lastYielded) return
    this.lastYielded = step
    this.queue.push(this.batchOf(frame))
    this.wakeUp()
  }

  private batchOf(frame: Record<string, unknown>): TrainerBatch<P> {
    const rollouts = frame.rollouts as TrainerRollout<P>[]
    const lambdas = frame.lambda as Record<string, { before: number; after: number }>
    const shard = frame.shard as BatchShard | undefined
    const step = frame.step as number
    const batch: TrainerBatch<P> = {
      step,
      lambda: Object.fromEntries(Object.entries(lambdas).map(([name, { after }]) => [name, after])),
      lambdas,
      constraints: frame.constraints as TrainerBatch['constraints'],
      rollouts,
      advantages: Float64Array.from(rollouts, (r) => r.advantage),
      batchSize: shard?.rollouts ?? rollouts.length,
      ack: async ({ policyVersion, state } = {}) => {
        if (step <= this.saved.lastStep) throw new Error(`step ${step} is already acknowledged (the last applied step is ${this.saved.lastStep})`)
        const saved: SavedState = { lastStep: step, policyVersion: policyVersion ?? this.saved.policyVersion, state: state ?? this.saved.state }
        // durable before the server hears of it: a crash in between re-sends the step, which is then skipped
        writeDurably(this.options.statePath, saved)
        this.saved = saved
        this.send(policyVersion === undefined ? { type: 'ack', step } : { type: 'ack', step, policyVersion })
      },
    }
    if (shard !== undefined) batch.shard = shard
    return batch
  }

  async *[Symbol.asyncIterator](): AsyncIterator<TrainerBatch<P>> {
    for (;;) {
      const batch = this.queue.shift()
      if (batch !== undefined) {
        yield batch
        continue
      }
      if (this.failure !== undefined) throw this.failure
      if (this.closed) return
      await new Promise<void>((resolve) => (this.wake = resolve))
    }
  }

  /** Closes the connection; the iteration ends after the batches already received. */
  async close(): Promise<void> {
    this.closed = true
    const ws = this.ws
    this.ws = undefined
    this.wakeUp()
    if (ws === undefined || ws.readyState === WebSocket.CLOSED) return
    await new Promise<void>((resolve) => {
      ws.once('close', () => resolve())
      ws.close(1000)
    })
  }
}
