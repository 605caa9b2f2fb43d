/**
 * The fault suite's parts: `dualstream serve` as a child process (the compiled CLI, so that
 * a restart takes a fraction of a second), a producer that pipelines frames within its credit,
 * checks that every answer is for its oldest unanswered frame (FIFO) and resends what was not
 * acknowledged after a reconnect, and a trainer that sometimes drops its connection between a
 * batch and its ack. Every wait is for an event, with a deadline that fails the test.
 */
import { spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import WebSocket from 'ws'
import { Client, pack, type Received } from '../serve/support.js'

import { compiledMain } from '../support/serveProcess.js'

export { compiledMain, startServe, type ServeChild } from '../support/serveProcess.js'

export function requireBuild(): string | undefined {
  return existsSync(compiledMain) ? undefined : `the fault suite runs the compiled CLI: run "npm run build" first (npm run test:faults does)`
}

/** Waits for `emitter`-free conditions: polls `test` on every turn of the event loop's timers, failing after `timeoutMs`. */
export function until(test: () => boolean, timeoutMs: number, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const deadline = performance.now() + timeoutMs
    const check = () => {
      if (test()) return resolve()
      if (performance.now() > deadline) return reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`))
      setTimeout(check, 5)
    }
    check()
  })
}

/** An item a fault producer sends: a rollout, or an item the engine must refuse (`invalid` names the field). */
export interface Item {
  id: string
  body: Record<string, unknown>
  invalid?: string
}

interface SentFrame {
  /** The frame's items in order. */
  items: Item[]
  rejected: boolean
}

/**
 * A producer that pipelines frames of `frameSize` items within its credit, in MessagePack or
 * JSON, and accounts its frames first-in first-out: each `rejected` and each `ack` must be for
 * the oldest unanswered frame (the refused indices exactly its invalid items, the acked ids
 * exactly its valid ones, in order). Anything else is recorded in `violations`. After a
 * reconnect it resends every valid item not yet acknowledged and every invalid one not yet
 * refused.
 */
export class FaultProducer {
  readonly acked = new Set<string>()
  readonly refused = new Set<string>()
  readonly violations: string[] = []
  /** Answers (acks and rejected frames) checked against the FIFO order. */
  answers = 0
  /** Frames still unanswered when the last connection closed. */
  unansweredAtClose = 0
  /** Error frames received, by code. */
  readonly errors = new Map<string, number>()
  client: Client | undefined

  constructor(
    readonly name: string,
    readonly items: readonly Item[],
    readonly options: { frameSize: number; json?: boolean; onAnswer?: () => void },
  ) {}

  get done(): boolean {
    return this.items.every((item) => (item.invalid === undefined ? this.acked.has(item.id) : this.refused.has(item.id)))
  }

  /** One connection: sends everything outstanding; resolves 'done' when all is answered, 'closed' if the connection ends first. */
  async life(url: string, timeoutMs = 60_000): Promise<'done' | 'closed'> {
    let client: Client
    try {
      client = await Client.open(url)
    } catch {
      return 'closed'
    }
    this.client = client
    const unanswered: SentFrame[] = []
    const outstanding = this.items.filter((item) => (item.invalid === undefined ? !this.acked.has(item.id) : !this.refused.has(item.id)))
    client.onFrame((frame: Received) => {
      if (frame.type === 'error') {
        this.errors.set(frame.code, (this.errors.get(frame.code) ?? 0) + 1)
        // an error answers the oldest frame without logging it: its items go again later
        const head = unanswered.shift()
        if (head === undefined) this.violations.push(`${this.name}: an error frame (${frame.code}) with no frame unanswered`)
        else outstanding.push(...head.items)
        this.options.onAnswer?.()
      }
      if (frame.type === 'rejected') this.onRejected(frame, unanswered[0])
      if (frame.type === 'ack') this.onAck(frame, unanswered.shift())
    })
    const inflight = () => unanswered.reduce((n, f) => n + f.items.length, 0)
    const settled = () => outstanding.length === 0 && unanswered.length === 0
    for (;;) {
      await client.until(
        () => client.closed !== undefined || settled() || (outstanding.length > 0 && client.credit - inflight() > 0),
        timeoutMs,
        `${this.name}: credit`,
      )
      if (client.closed !== undefined) {
        this.unansweredAtClose = unanswered.length
        return 'closed'
      }
      if (settled()) return 'done'
      const size = Math.min(this.options.frameSize, client.credit - inflight(), outstanding.length)
      const items = outstanding.splice(0, size)
      unanswered.push({ items, rejected: false })
      const frame = { type: 'rollouts', rollouts: items.map((item) => item.body) }
      if (this.options.json === true) client.ws.send(JSON.stringify(frame))
      else client.ws.send(pack(frame))
    }
  }

  private onRejected(frame: Received, head: SentFrame | undefined): void {
    this.answers++
    if (head === undefined) return void this.violations.push(`${this.name}: a rejected frame with no frame unanswered`)
    if (head.rejected) this.violations.push(`${this.name}: two rejected frames for one frame`)
    head.rejected = true
    const expected = head.items.flatMap((item, index) => (item.invalid === undefined ? [] : [{ index, id: item.id, field: item.invalid }]))
    const got = (frame.errors as { index: number; id?: string; field: string }[]).map((e) => ({ index: e.index, id: e.id, field: e.field }))
    if (JSON.stringify(got) !== JSON.stringify(expected))
      this.violations.push(
        `${this.name}: rejected ${JSON.stringify(got).slice(0, 200)} for the oldest frame, whose invalid items are ${JSON.stringify(expected).slice(0, 200)}`,
      )
    for (const e of got) if (head.items[e.index]?.id === e.id) this.refused.add(e.id!)
    this.options.onAnswer?.()
  }

  private onAck(frame: Received, head: SentFrame | undefined): void {
    this.answers++
    if (head === undefined) return void this.violations.push(`${this.name}: an ack with no frame unanswered`)
    const expected = head.items.filter((item) => item.invalid === undefined).map((item) => item.id)
    const ids = frame.ids as string[]
    if (ids.length !== expected.length || ids.some((id, k) => id !== expected[k]))
      this.violations.push(
        `${this.name}: ack for [${ids.slice(0, 3).join(', ')}…] (${ids.length}) while the oldest unanswered frame holds [${expected.slice(0, 3).join(', ')}…] (${expected.length})`,
      )
    if (head.items.some((item) => item.invalid !== undefined) && !head.rejected) this.violations.push(`${this.name}: ack without the rejected frame before it`)
    for (const id of ids) this.acked.add(id)
    this.options.onAnswer?.()
  }
}

/**
 * A trainer that records every delivery by step, acknowledges most batches (reporting a policy
 * version now and then) and, when `drop()` says so, closes its connection between a batch and
 * its ack, then reconnects: the batch must come again, identical.
 */
export class DroppingTrainer {
  readonly deliveries = new Map<number, string[]>()
  readonly ackedSteps = new Set<number>()
  drops = 0
  batches = 0
  client: Client | undefined
  private url: string | undefined
  private stopped = false

  constructor(
    private readonly drop: () => boolean,
    private readonly onBatch?: () => void,
  ) {}

  /** Connects to a (new) server; reconnects after its own drops until `stop()` or the server goes away. */
  async connect(url: string): Promise<void> {
    this.url = url
    this.stopped = false
    await this.open()
  }

  private async open(): Promise<void> {
    const url = this.url!
    let client: Client
    try {
      client = await Client.open(url)
    } catch {
      return
    }
    this.client = client
    let dropping = false
    const onFrame = (frame: Received) => {
      if (frame.type !== 'batch' || dropping) return
      this.batches++
      const step = frame.step as number
      this.deliveries.set(step, [...(this.deliveries.get(step) ?? []), JSON.stringify(frame)])
      if (this.drop()) {
        dropping = true
        this.drops++
        client.ws.terminate()
        // reconnect to the same server while it is the current one
        client
          .until(() => client.closed !== undefined, 5000, 'the dropped connection')
          .then(
            () => {
              if (!this.stopped && this.url === url) return this.open()
            },
            () => {},
          )
      } else {
        client.send(step % 7 === 0 ? { type: 'ack', step, policyVersion: Math.floor(step / 7) } : { type: 'ack', step })
        this.ackedSteps.add(step)
      }
      this.onBatch?.()
    }
    // the server sends the unacknowledged batches at once: some may have arrived before this line
    for (const frame of client.frames) onFrame(frame)
    client.onFrame(onFrame)
  }

  stop(): void {
    this.stopped = true
  }
}

/** A client that sends malformed frames and counts the error frames that answer them. */
export class HostileClient {
  /** Frames sent on the current connection (its answers are counted by `answered`). */
  sent = 0
  /** Frames sent and answered on earlier connections. */
  total = { sent: 0, answered: 0 }
  client: Client | undefined

  async connect(url: string): Promise<void> {
    this.total.sent += this.sent
    this.total.answered += this.answered
    this.sent = 0
    try {
      this.client = await Client.open(url)
    } catch {
      this.client = undefined
    }
  }

  get answered(): number {
    return this.client?.count('error') ?? 0
  }

  /** Sends one of a few hostile frames (bytes that are not MessagePack, a lying header, text that is not JSON, a wrong type). */
  poke(k: number): void {
    const ws = this.client?.ws
    if (ws === undefined || ws.readyState !== WebSocket.OPEN) return
    const frames: (Buffer | string)[] = [Buffer.from([0xc1, 0x00]), Buffer.from([0xdf, 0, 0, 0, 9, 1]), '{"type":', pack({ type: 'nonsense' }), pack([1, 2, 3])]
    ws.send(frames[k % frames.length])
    this.sent++
  }
}

/** Fetches `/healthz` of a server. */
export async function health(port: number): Promise<{ status: number; body: Record<string, unknown> }> {
  const response = await fetch(`http://127.0.0.1:${port}/healthz`)
  return { status: response.status, body: (await response.json()) as Record<string, unknown> }
}

/** A batch line of `dualstream replay` (what the fault tests compare with what was delivered). */
export interface ReplayLine {
  step: number
  lambda: unknown
  advantages: Record<string, number>
}

/** Runs the compiled `dualstream replay ARGS` (`--log DIR` or `--nats URL --run NAME`): its exit status, stderr and batch lines. */
export function replayLines(args: string[]): { status: number | null; stderr: string; lines: ReplayLine[] } {
  const replay = spawnSync(process.execPath, [compiledMain, 'replay', ...args], { encoding: 'utf8' })
  const lines = replay.stdout
    .trim()
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => JSON.parse(line) as ReplayLine)
  return { status: replay.status, stderr: replay.stderr, lines }
}
