/**
 * One producer connection (streams/ingestEndpoint.ts) over a fake socket and a fake engine:
 * a frame refused for a full disk is answered `disk-full` in its turn, its rollouts no longer
 * count against the credit, `answersSent()` resolves once every frame so far is answered, a
 * socket that is closing is never paused (its peer's close frame must still be read), and after
 * an engine failure `drain()` answers every frame the producer sent before it heard of it.
 */
import { EventEmitter } from 'node:events'
import t from 'tap'
import type { WebSocket } from 'ws'
import { DiskFullError, type DurableEngine, type IngestOutcome } from '../../src/state/durableEngine.js'
import { IngestBytes } from '../../streams/ingestBytes.js'
import { ProducerConnection, type IngestContext } from '../../streams/ingestEndpoint.js'
import { DEFAULT_WIRE_LIMITS } from '../../streams/wire.js'
import { wirePackr } from '../../src/state/codec.js'
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
  readonly pings: Buffer[] = []
  ping(data: Buffer): void {
    this.pings.push(data)
    this.sent.push({ type: '(ping)' })
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

function connect(credit = 10, ingestBytes = new IngestBytes(1 << 30, () => {})) {
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
    ingestBytes,
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
  t.equal(producer.outstanding, 0, 'an answered frame no longer counts against the credit')

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

t.test('drain after a failure: frames already on the wire are read and answered, up to the pong of a ping sent after the answers', async (t) => {
  const { ws, producer, ingests, setCredit } = connect(4)
  ws.receive({ type: 'rollouts', rollouts: prompts('a', 3) })
  t.ok(ws.isPaused, 'past its credit: paused')
  const failure = new Error('EIO')
  setCredit(0)
  ingests[0].reject(failure)
  await producer.answersSent()
  let drained = false
  const draining = producer.drain().then(() => (drained = true))
  t.equal(producer.drain(), producer.drain(), 'one drain per connection')
  t.notOk(ws.isPaused, 'a failed connection is read again, whatever its credit')
  await turns()
  t.same(
    ws.sent.map((f) => f.type),
    ['credit', 'error', 'credit', '(ping)'],
    'the ping goes out after every answer and the credit 0',
  )
  // a frame the producer sent before it read them arrives before the pong
  ws.receive({ type: 'rollouts', rollouts: prompts('b', 1) })
  ingests[1].reject(failure)
  ws.emit('pong', Buffer.from('a heartbeat'))
  await turns()
  t.notOk(drained, "a heartbeat's pong is not the drain's")
  ws.emit('pong', ws.pings[0])
  await draining
  t.same(answers(ws), ['error engine', '(ping) undefined', 'error engine'], 'every frame answered before the drain ends')
  t.equal(ws.listenerCount('pong'), 0, 'its listeners are removed')
  t.equal(ws.listenerCount('close'), 0)
})

t.test('drain ends when the socket closes first, or at once on a socket no longer open', async (t) => {
  const open = connect()
  const draining = open.producer.drain()
  await turns()
  t.equal(open.ws.pings.length, 1)
  open.ws.emit('close')
  await draining
  t.pass('the close ends it')

  const closing = connect()
  closing.ws.readyState = closing.ws.CLOSING
  await closing.producer.drain()
  t.equal(closing.ws.pings.length, 0, 'no ping to a closing socket')
})

t.test('IngestBytes: held from read to answer; crossing back under the bound tells the server once', async (t) => {
  let below = 0
  const bytes = new IngestBytes(100, () => below++)
  bytes.hold(60)
  t.notOk(bytes.over)
  bytes.hold(60)
  t.ok(bytes.over, '120 > 100')
  bytes.hold(10)
  t.equal(bytes.holds, 1, 'one crossing, however far above')
  bytes.release(10)
  t.equal(below, 0, 'still above')
  bytes.release(20)
  t.notOk(bytes.over, 'exactly at the bound is not above it')
  t.equal(below, 1)
  bytes.release(100)
  t.equal(below, 1, 'told once, when crossing back')
  t.equal(bytes.held, 0)
  t.throws(() => new IngestBytes(0, () => {}), /maxIngestBytes must be a positive integer of bytes, got 0/)
  t.throws(() => new IngestBytes(1.5, () => {}), RangeError)
})

t.test('frames in flight above the bound stop every producer, past its credit or not; answers resume them', async (t) => {
  const producers: ProducerConnection[] = []
  // a JSON frame is held as the MessagePack it becomes
  const frameBytes = wirePackr.pack({ type: 'rollouts', rollouts: prompts('x', 1) }).length
  // two frames of one prompt fit, a third goes above
  const shared = new IngestBytes(2 * frameBytes + 10, () => producers.forEach((p) => p.flow()))
  const a = connect(100, shared)
  const b = connect(100, shared)
  producers.push(a.producer, b.producer)
  a.ws.receive({ type: 'rollouts', rollouts: prompts('a', 1) })
  b.ws.receive({ type: 'rollouts', rollouts: prompts('b', 1) })
  t.notOk(a.ws.isPaused || b.ws.isPaused, 'two frames: within the bound')
  a.ws.receive({ type: 'rollouts', rollouts: prompts('c', 1) })
  t.ok(shared.over)
  t.ok(a.ws.isPaused, 'the producer whose frame went above it is paused')
  b.producer.flow()
  t.ok(b.ws.isPaused, 'and so is any other, at its next flow')
  t.equal(a.producer.pauses + b.producer.pauses, 0, 'not counted as going past credit')
  t.equal(shared.holds, 1)
  a.ingests[0].resolve({ acked: ['a0-0', 'a0-1'], rejected: [], duplicates: 0 })
  await turns()
  t.same(answers(a.ws), ['ack a0-0,a0-1'])
  t.notOk(shared.over, 'one answer brings it back to two frames')
  t.notOk(a.ws.isPaused || b.ws.isPaused, 'both read again')
  // a refusal and an engine error release their frame's bytes too
  b.ingests[0].reject(new DiskFullError('full'))
  a.ingests[1].reject(new Error('EIO'))
  await Promise.all([a.producer.answersSent(), b.producer.answersSent()])
  t.equal(shared.held, 0, 'every answered frame released')
})
