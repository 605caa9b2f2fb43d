/**
 * The two client processes of the payload bench (`payload.ts`), one role each. The producer
 * packs all its frames first, then sends them to `/ingest` within its credit and times each
 * frame's ack; the trainer acknowledges every batch from `/batches`, times each rollout's
 * arrival and checks its payload bytes. Times are the machine's wall clock at µs resolution
 * (`performance.timeOrigin + performance.now()`, see `wallClock`), so that the bench can
 * subtract a time taken in one process from one taken in the other.
 */
import { Packr, Unpackr } from 'msgpackr'
import WebSocket from 'ws'
import { payloadFrames, payloadPool, rolloutPayload } from './payloadFrames.js'
import { runFloors, type FloorsTask } from './payloadFloors.js'

/**
 * Wall-clock ms with µs resolution: the epoch time this process started plus the monotonic
 * time since. Comparable between processes of one machine (both read the same system clock
 * at start), unlike `performance.now()` alone, and finer than `Date.now()`.
 */
export function wallClock(): number {
  return performance.timeOrigin + performance.now()
}

export interface ProducerTask {
  role: 'producer'
  port: number
  rollouts: number
  payloadBytes: number
  frame: number
}

export interface TrainerTask {
  role: 'trainer'
  port: number
  rollouts: number
  payloadBytes: number
  /** Rollouts per batch: the trainer stops after ⌊rollouts / batchSize⌋ batches. */
  batchSize: number
}

export type ClientTask = ProducerTask | TrainerTask | FloorsTask

export interface ProducerReport {
  /** Wall-clock ms (`wallClock`) of the first frame sent and of the last ack. */
  startedAt: number
  finishedAt: number
  /** Per frame: when it was sent and when its ack arrived (wall-clock ms). */
  sentAt: Float64Array
  ackAt: Float64Array
  /** Rollouts the engine acknowledged. */
  acked: number
  /** Bytes of all frames, and of the largest. */
  frameBytes: number
  largestFrame: number
  /** CPU time of this process from the first frame sent to the last ack (ms). */
  cpuMs: number
}

export interface TrainerReport {
  /** Distinct rollouts received, and rollouts received again. */
  delivered: number
  duplicates: number
  /** Rollouts whose payload was not the bytes the producer sent. */
  payloadMismatches: number
  batches: number
  /** The index of every distinct rollout, in order of arrival (`delivered` of them). */
  order: Int32Array
  /** By rollout index: when its batch arrived (wall-clock ms). */
  arrivedAt: Float64Array
  /** When the last batch arrived (wall-clock ms). */
  finishedAt: number
  /** CPU time of this process from the start signal to the last batch (ms). */
  cpuMs: number
}

const unpackr = () => new Unpackr({ useRecords: false, int64AsType: 'number' })
const cpuMsSince = (start: NodeJS.CpuUsage) => {
  const { user, system } = process.cpuUsage(start)
  return (user + system) / 1000
}

/**
 * The producer: packs every frame, connects, waits for its credit, then for `start` (the bench
 * starts both clients together), then sends the frames in order, never more than its credit
 * unanswered. Fails on any answer but credit and ack (the bench's rollouts are all valid).
 */
export async function produce(task: ProducerTask, start: () => Promise<void>): Promise<ProducerReport> {
  const frames = payloadFrames(task.rollouts, task.payloadBytes, task.frame)
  const sizes = frames.map((_, f) => Math.min(task.frame, task.rollouts - f * task.frame))
  const sentAt = new Float64Array(frames.length)
  const ackAt = new Float64Array(frames.length)
  const decoder = unpackr()
  let credit = 0
  let next = 0
  let inflight = 0
  let answered = 0
  let acked = 0
  let sending = false
  let credited!: () => void
  const firstCredit = new Promise<void>((resolve) => (credited = resolve))
  let finish!: () => void
  let fail!: (error: Error) => void
  const done = new Promise<void>((resolve, reject) => {
    finish = resolve
    fail = reject
  })
  const send = () => {
    while (sending && next < frames.length && inflight + sizes[next] <= credit) {
      inflight += sizes[next]
      sentAt[next] = wallClock()
      ws.send(frames[next++])
    }
  }
  const ws = new WebSocket(`ws://127.0.0.1:${task.port}/ingest`)
  ws.on('error', fail)
  ws.on('message', (data: Buffer) => {
    const answer = decoder.unpack(data) as { type: string; credit?: number; ids?: string[] }
    if (answer.type === 'credit') {
      credit = answer.credit!
      credited()
    } else if (answer.type === 'ack') {
      ackAt[answered] = wallClock()
      acked += answer.ids!.length
      inflight -= sizes[answered++]
      if (answered === frames.length) finish()
    } else fail(new Error(`bench producer: the engine answered frame ${answered} with ${JSON.stringify(answer).slice(0, 500)}`))
    send()
  })
  try {
    // `done` settles first only when the connection fails
    await Promise.race([firstCredit, done])
    await start()
    const cpu = process.cpuUsage()
    const startedAt = wallClock()
    sending = true
    send()
    await done
    const finishedAt = wallClock()
    return {
      startedAt,
      finishedAt,
      sentAt,
      ackAt,
      acked,
      frameBytes: frames.reduce((sum, f) => sum + f.length, 0),
      largestFrame: Math.max(...frames.map((f) => f.length)),
      cpuMs: cpuMsSince(cpu),
    }
  } finally {
    ws.close()
  }
}

/** Whether `value` holds exactly `expected`'s bytes (a MessagePack bin decodes to a Uint8Array). */
function sameBytes(value: unknown, expected: Buffer): boolean {
  return value instanceof Uint8Array && Buffer.compare(value, expected) === 0
}

/**
 * The trainer: connects to `/batches`, waits for `start`, then acknowledges every batch as it
 * arrives, recording when each rollout arrived and whether its payload is the producer's;
 * done after ⌊rollouts / batchSize⌋ batches.
 */
export async function train(task: TrainerTask, start: () => Promise<void>): Promise<TrainerReport> {
  const pool = payloadPool(task.payloadBytes)
  const expectedBatches = Math.floor(task.rollouts / task.batchSize)
  const arrivedAt = new Float64Array(task.rollouts)
  const order = new Int32Array(task.rollouts)
  const seen = new Uint8Array(task.rollouts)
  const decoder = unpackr()
  const packr = new Packr({ useRecords: false })
  let delivered = 0
  let duplicates = 0
  let payloadMismatches = 0
  let batches = 0
  let finishedAt = 0
  const ws = new WebSocket(`ws://127.0.0.1:${task.port}/batches`)
  const opened = new Promise((resolve, reject) => {
    ws.once('open', resolve)
    ws.once('error', reject)
  })
  const done = new Promise<void>((resolve, reject) => {
    ws.on('error', reject)
    ws.on('message', (data: Buffer) => {
      const now = wallClock()
      const batch = decoder.unpack(data) as { step: number; rollouts: { id: string; payload?: unknown }[] }
      for (const rollout of batch.rollouts) {
        const i = Number(rollout.id.slice(1)) // ids are r<index>
        // a rollout seen before is counted, not recorded again
        order[delivered] = i
        duplicates += seen[i]
        delivered += 1 - seen[i]
        seen[i] = 1
        arrivedAt[i] = now
        const expected = rolloutPayload(pool, i, task.payloadBytes)
        const { tokens, logprobs } = Object(rollout.payload) as { tokens?: unknown; logprobs?: unknown }
        payloadMismatches += Number(!(sameBytes(tokens, expected.tokens) && sameBytes(logprobs, expected.logprobs)))
      }
      ws.send(packr.pack({ type: 'ack', step: batch.step }))
      if (++batches === expectedBatches) {
        finishedAt = now
        resolve()
      }
    })
  })
  try {
    // a failed connection rejects both: waiting on both handles both
    await Promise.race([opened, done])
    await start()
    const cpu = process.cpuUsage()
    await done
    return { delivered, duplicates, payloadMismatches, batches, order, arrivedAt, finishedAt, cpuMs: cpuMsSince(cpu) }
  } finally {
    ws.close()
  }
}

/* c8 ignore start */
// the process entry: a task over IPC, `ready` back and a start signal (producer, trainer), the report back
if (import.meta.url === `file://${process.argv[1]}`) {
  process.once('message', (task: ClientTask) => {
    const start = () =>
      new Promise<void>((resolve) => {
        process.once('message', () => resolve())
        process.send!({ kind: 'ready' })
      })
    const work: Promise<unknown> = task.role === 'producer' ? produce(task, start) : task.role === 'trainer' ? train(task, start) : runFloors(task)
    work.then((report) => process.send!({ kind: 'report', report }, () => process.disconnect()))
  })
}
/* c8 ignore stop */
