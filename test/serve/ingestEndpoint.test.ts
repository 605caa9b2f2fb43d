/**
 * One producer connection (streams/ingestEndpoint.ts) over a fake socket and a fake engine:
 * a frame refused for a full disk is answered `disk-full` in its turn, its rollouts no longer
 * count against the credit, `answersSent()` resolves once every frame so far is answered, and
 * a socket that is closing is never paused (its peer's close frame must still be read).
 */
import { EventEmitter } from 'node:events'
import t from 'tap'
import type { WebSocket } from 'ws'
import { DiskFullError, type DurableEngine, type IngestOutcome } from '../../src/state/durableEngine.js'
import { ProducerConnection, type IngestContext } from '../../streams/ingestEndpoint.js'
import { DEFAULT_WIRE_LIMITS } from '../../streams/wire.js'
import { prompts } from './support.js'

/** The parts of a `ws` socket a producer connection uses; frames sent are decoded (JSON). */
class FakeSocket extends EventEmitter {
  readonly OPEN = 1
  readonly CLOSING = 2
  readyState = 1
  isPaused = false
  readonly sent: Record<string, unknown>[] = []
  send(data: string): void {
    this.sent.push(JSON.parse(data) as Record<string, unknown>)
  }
  pause(): void {
    this.isPaused = true
  }
  resume(): void {
    this.isPaused = false
  }
  /** A frame from the producer, as JSON text. */
  receive(frame: object): void {
    this.emit('message', Buffer.from(JSON.stringify(frame)), false)
  }
}

interface Deferred {
  resolve(outcome: IngestOutcome): void
  reject(error: unknown): void
}

function connect(credit = 10) {
  const ws = new FakeSocket()
  const ingests: Deferred[] = []
  const errors: string[] = []
  const failures: unknown[] = []
  const context: IngestContext = {
    engine: {
      ingest: () => new Promise<IngestOutcome>((resolve, reject) => ingests.push({ resolve, reject })),
    } as unknown as DurableEngine,
    limits: DEFAULT_WIRE_LIMITS,
    maxRolloutsPerFrame: 100,
    maxErrorsPerFrame: 10,
    credit: () => credit,
    countError: (code) => errors.push(code),
    onEngineFailure: (error) => failures.push(error),
  }
  const producer = new ProducerConnection(ws as unknown as WebSocket, 'json', context)
  return { ws, producer, ingests, errors, failures, setCredit: (c: number) => (credit = c) }
}

const turns = () => new Promise((resolve) => setImmediate(resolve))
const answers = (ws: FakeSocket) =>
  ws.sent.filter((f) => f.type !== 'credit').map((f) => (f.type === 'ack' ? `ack ${(f.ids as string[]).join(',')}` : `${f.type} ${f.code}`))

t.test('a disk-full refusal is answered in frame order, and its rollouts no longer count against the credit', async (t) => {
  const { ws, producer, ingests, errors } = connect()
  t.same(ws.sent, [{ type: 'credit', credit: 10 }])
  ws.receive({ type: 'rollouts', rollouts: prompts('a', 1) })
  ws.receive({ type: 'rollouts', rollouts: prompts('b', 2) })
  t.equal(producer.outstanding, 6)
  let answered = false
  void producer.answersSent().then(() => (answered = true))
  ingests[1].reject(new DiskFullError('disk nearly full at /data: …'))
  await turns()
  t.same(answers(ws), [], 'the refusal waits for the answer of the frame before it')
  t.equal(producer.outstanding, 6)
  t.notOk(answered)
  const allAnswered = producer.answersSent()
  ingests[0].resolve({ acked: ['a0-0', 'a0-1'], rejected: [], duplicates: 0 })
  await allAnswered
  t.same(answers(ws), ['ack a0-0,a0-1', 'error disk-full'])
  t.same(ws.sent.at(-1), { type: 'error', code: 'disk-full', reason: 'disk nearly full at /data: …' })
  t.same(errors, ['disk-full'])
  t.equal(producer.outstanding, 0, 'credit restored: nothing unanswered')
  t.notOk(ws.isPaused)
})

t.test('a producer past its credit is paused, and resumed by a disk-full answer that frees it', async (t) => {
  const { ws, producer, ingests } = connect(4)
  ws.receive({ type: 'rollouts', rollouts: prompts('a', 3) })
  t.ok(ws.isPaused, '6 rollouts unanswered, credit 4')
  t.equal(producer.pauses, 1)
  ingests[0].reject(new DiskFullError('full'))
  await producer.answersSent()
  t.notOk(ws.isPaused, 'resumed once the refusal freed the credit')
})

t.test('an engine error is answered and reported; a closing socket is never paused', async (t) => {
  const { ws, producer, ingests, errors, failures, setCredit } = connect()
  ws.receive({ type: 'rollouts', rollouts: prompts('a', 1) })
  const failure = new Error('EIO')
  ingests[0].reject(failure)
  await producer.answersSent()
  t.same(answers(ws), ['error engine'])
  t.same(errors, ['engine'])
  t.same(failures, [failure])
  t.equal(producer.outstanding, 2, 'a failed frame stays unanswered for the credit (the connection is closed)')

  // the server closes the connection: the peer's close frame must be read, whatever the credit
  ws.readyState = ws.CLOSING
  ws.isPaused = true
  setCredit(0)
  producer.flow()
  t.notOk(ws.isPaused, 'a closing socket is resumed')
  t.equal(ws.sent.filter((f) => f.type === 'credit').length, 1, 'and nothing more is sent to it')
  producer.flow()
  t.notOk(ws.isPaused, 'and not paused again')
})
