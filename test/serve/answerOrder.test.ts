/**
 * Answers go out in frame order whatever order the disk finishes in (PROTOCOL.md, "Answers"):
 * the engine's write for the first frame is held back until the second frame's is done, and a
 * third frame is refused at once; the producer still sees the answers of frames 1, 2 and 3 in
 * that order. The same holds when a write fails: the `engine` error waits its turn.
 */
import t from 'tap'
import type { IngestOutcome } from '../../src/state/durableEngine.js'
import { Client, rollout, startServer } from './support.js'

/** Makes the engine's first ingest resolve only after the second one has. */
function holdFirstUntilSecond(engine: { ingest: (...args: never[]) => Promise<IngestOutcome> }, fail = false): void {
  const original = engine.ingest.bind(engine) as (...args: unknown[]) => Promise<IngestOutcome>
  let release!: () => void
  const released = new Promise<void>((resolve) => (release = resolve))
  let calls = 0
  ;(engine as { ingest: unknown }).ingest = (...args: unknown[]) => {
    const written = original(...args)
    calls++
    if (calls === 1) return released.then(() => (fail ? Promise.reject(new Error('ENOSPC: no space left on device')) : written))
    if (calls === 2)
      return written.then((outcome) => {
        setImmediate(release)
        return outcome
      })
    return written
  }
}

t.test('an ack, a rejected frame and an error frame wait for the answers of earlier frames', async (t) => {
  const served = await startServer()
  t.teardown(() => served.close())
  holdFirstUntilSecond(served.engine)
  const producer = await Client.open(served.url('/ingest'))
  await producer.nth('credit')
  producer.send({ type: 'rollouts', rollouts: [rollout('a1', 'a', 1, 1), { id: 'bad', promptId: 'a', rewards: { accuracy: 'x' } }] })
  producer.send({ type: 'rollouts', rollouts: [rollout('b1', 'b', 1, 1)] })
  producer.ws.send(Buffer.from([0xc1]))
  await producer.until(() => producer.count('ack') === 2 && producer.count('error') === 1, 10_000, 'three answers')
  const answers = producer.frames.filter((f) => f.type !== 'credit').map((f) => (f.type === 'ack' ? `ack ${f.ids.join(',')}` : f.type))
  t.same(answers, ['rejected', 'ack a1', 'ack b1', 'error'], 'answers in frame order')
})

t.test('a failed write is answered in its turn too', async (t) => {
  const served = await startServer()
  t.teardown(() => served.close().catch(() => {}))
  holdFirstUntilSecond(served.engine, true)
  const producer = await Client.open(served.url('/ingest'))
  await producer.nth('credit')
  producer.send({ type: 'rollouts', rollouts: [rollout('a1', 'a', 1, 1)] })
  producer.send({ type: 'rollouts', rollouts: [rollout('b1', 'b', 1, 1)] })
  await producer.until(() => producer.closed !== undefined, 10_000, 'the close')
  const answers = producer.frames.filter((f) => f.type !== 'credit').map((f) => (f.type === 'ack' ? `ack ${f.ids.join(',')}` : `${f.type} ${f.code}`))
  t.same(answers, ['error engine', 'ack b1'], 'the first frame is answered with its failure, then the second, logged after it, with its ack')
  t.equal(producer.closed!.code, 1011)
})
