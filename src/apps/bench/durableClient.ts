/**
 * The client process of the durable bench: a producer sending pre-encoded MessagePack frames
 * within its credit, and a trainer acknowledging every batch, over loopback WebSocket. Told
 * what to do over IPC by `durable.ts`; answers with a `ClientReport`.
 */
import { Unpackr, Packr } from 'msgpackr'
import WebSocket from 'ws'
import { benchFrames, latencyQuantiles, type ClientReport } from './durable.js'

interface Task {
  port: number
  rollouts: number
  frame: number
  batchSize: number
}

async function run(task: Task): Promise<ClientReport> {
  const frames = benchFrames(task.rollouts, task.frame)
  const sizes = frames.map((_, i) => Math.min(task.frame, task.rollouts - i * task.frame))
  const unpackr = new Unpackr({ useRecords: false, int64AsType: 'number' })
  const packr = new Packr({ useRecords: false })
  const ackAt = new Float64Array(task.rollouts)
  const deliveredAt = new Float64Array(task.rollouts)
  const indices = new Int32Array(task.rollouts)
  const batchesExpected = Math.floor(task.rollouts / task.batchSize)
  let batches = 0
  let delivered = 0
  let started = 0
  let finished = 0

  // listeners go on before the sockets open: the credit frame follows the handshake at once
  const trainer = new WebSocket(`ws://127.0.0.1:${task.port}/batches`)
  const producer = new WebSocket(`ws://127.0.0.1:${task.port}/ingest`)
  const done = new Promise<void>((resolve) => {
    trainer.on('message', (data: Buffer) => {
      const now = performance.now()
      const batch = unpackr.unpack(data) as { step: number; rollouts: { id: string }[] }
      for (const rollout of batch.rollouts) {
        const i = Number(rollout.id.slice(1)) // ids are r<index>
        deliveredAt[i] = now
        indices[delivered++] = i
      }
      trainer.send(packr.pack({ type: 'ack', step: batch.step }))
      if (++batches === batchesExpected) {
        finished = now
        resolve()
      }
    })
  })

  // the producer: frames in order, never more than the credit unanswered
  let credit = 0
  let next = 0
  let inflight = 0
  let answered = 0
  const send = () => {
    while (next < frames.length && inflight + sizes[next] <= credit) {
      inflight += sizes[next]
      producer.send(frames[next++])
    }
  }
  producer.on('message', (data: Buffer) => {
    const frame = unpackr.unpack(data) as { type: string; credit?: number }
    if (frame.type === 'credit') credit = frame.credit!
    else if (frame.type === 'ack') {
      const now = performance.now()
      const first = answered * task.frame
      for (let i = first; i < first + sizes[answered]; i++) ackAt[i] = now
      inflight -= sizes[answered++]
    }
    if (started === 0 && credit > 0) started = performance.now()
    send()
  })
  await done
  producer.close()
  trainer.close()
  // a batch that overtook its rollouts' ack (other socket) counts as 0 ms
  const latency = new Float64Array(delivered)
  let beforeAck = 0
  for (let k = 0; k < delivered; k++) {
    const d = deliveredAt[indices[k]] - ackAt[indices[k]]
    beforeAck += Number(d < 0)
    latency[k] = Math.max(0, d)
  }
  const { p50, p99 } = latencyQuantiles(latency)
  return { rollouts: delivered, batches, elapsedMs: finished - started, latencyP50: p50, latencyP99: p99, beforeAck }
}

process.once('message', (task: Task) => {
  run(task).then((report) => process.send!(report, () => process.disconnect()))
})
