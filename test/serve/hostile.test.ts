/**
 * 10,000 malformed or hostile frames — random bytes, random text, wrong types, NaN and
 * Infinity, lying and huge arrays, deep nesting, oversized frames — while a valid producer
 * streams: every hostile frame is answered with a reason, the engine stays up, and the
 * valid producer loses nothing.
 */
import t from 'tap'
import { Client, pack, produce, startServer } from './support.js'

const HOSTILE = 10_000
const MAX_FRAME = 64 * 1024

/** A small deterministic generator (xorshift32). */
function rng(seed: number) {
  let x = seed >>> 0 || 1
  const next = () => {
    x ^= x << 13
    x >>>= 0
    x ^= x >>> 17
    x ^= x << 5
    x >>>= 0
    return x / 4294967296
  }
  return { next, int: (n: number) => Math.floor(next() * n) }
}

type Hostile = { data: Buffer | string; binary: boolean; kind: string }

function hostileFrames(count: number): Hostile[] {
  const r = rng(42)
  const bytes = (n: number) => Buffer.from(Array.from({ length: n }, () => r.int(256)))
  const nested = (depth: number): unknown => (depth === 0 ? 1 : [nested(depth - 1)])
  const wrong: unknown[] = [
    5,
    'rollouts',
    [1, 2],
    { type: 5 },
    { type: 'rollouts', rollouts: { a: 1 } },
    { type: 'ack', step: 1 },
    {},
    { type: null },
    true,
    null,
    { type: 'rollouts', rollouts: 'x'.repeat(100) },
    1.5,
    { type: ['rollouts'] },
  ]
  const badItems = (i: number): unknown[] => [
    { id: `h${i}-nan`, promptId: 'h', rewards: { accuracy: NaN } },
    { id: `h${i}-inf`, promptId: 'h', rewards: { accuracy: Infinity, consistency: -Infinity } },
    { id: i, promptId: 'h', rewards: { accuracy: 1 } },
    { id: `h${i}-str`, promptId: 'h', rewards: { accuracy: '1' } },
    { id: `h${i}-pv`, promptId: 'h', rewards: {}, policyVersion: -1 },
    { id: `h${i}-gs`, promptId: 'h', rewards: {}, groupSize: 0 },
    { id: `h${i}-ts`, promptId: 'h', rewards: {}, ts: 'now' },
    { id: `h${i}-rw`, promptId: 'h', rewards: [1, 2] },
    { id: '', promptId: 'h', rewards: {} },
    { id: `h${i}-long`, promptId: 'p'.repeat(600), rewards: {} },
    { id: `h${i}-chan`, promptId: 'h', rewards: Object.fromEntries(Array.from({ length: 300 }, (_, k) => [`c${k}`, 0])) },
    null,
    [],
    'rollout',
  ]
  const frames: Hostile[] = []
  for (let i = 0; i < count; i++) {
    const slot = i % 20
    if (slot < 5) frames.push({ kind: 'random bytes', binary: true, data: bytes(1 + r.int(200)) })
    else if (slot < 8) frames.push({ kind: 'random text', binary: false, data: bytes(1 + r.int(200)) })
    else if (slot < 11)
      frames.push({
        kind: 'wrong types',
        binary: r.next() < 0.5,
        data: r.next() < 0.5 ? pack(wrong[r.int(wrong.length)]) : Buffer.from(JSON.stringify(wrong[r.int(wrong.length)])),
      })
    else if (slot < 14) {
      const items = badItems(i)
      frames.push({
        kind: 'NaN and bad items',
        binary: true,
        data: pack({ type: 'rollouts', rollouts: [items[r.int(items.length)], items[r.int(items.length)], items[r.int(items.length)]] }),
      })
    } else if (slot < 16) {
      const which = r.int(4)
      const data =
        which === 0
          ? Buffer.from([0xdd, 0xff, 0xff, 0xff, 0xff, 0x01]) // an array claiming 2^32 - 1 elements
          : which === 1
            ? Buffer.from([
                0x82,
                0xa4,
                ...Buffer.from('type'),
                0xa8,
                ...Buffer.from('rollouts'),
                0xa8,
                ...Buffer.from('rollouts'),
                0xdd,
                0x7f,
                0xff,
                0xff,
                0xff,
                0xc0,
              ]) // claims 2^31 rollouts
            : which === 2
              ? pack({ type: 'rollouts', rollouts: new Array(5000).fill(0) }) // real, too many
              : Buffer.from([0xdf, 0xff, 0xff, 0xff, 0xff, 0xa0]) // a map claiming 2^32 entries
      frames.push({ kind: 'huge arrays', binary: true, data })
    } else if (slot < 19) {
      const which = r.int(4)
      const data =
        which === 0
          ? Buffer.alloc(2000 + r.int(20_000), 0x91)
          : which === 1
            ? Buffer.from(`${'['.repeat(5000)}${']'.repeat(5000)}`)
            : which === 2
              ? pack({ type: 'rollouts', rollouts: [{ id: `deep${i}`, promptId: 'd', rewards: {}, payload: nested(40) }] })
              : Buffer.from(JSON.stringify({ type: 'rollouts', rollouts: [{ id: `deep${i}`, promptId: 'd', rewards: {}, payload: nested(40) }] }))
      frames.push({ kind: 'deep nesting', binary: which !== 1 && which !== 3, data })
    } else frames.push({ kind: 'oversized', binary: true, data: pack({ type: 'rollouts', rollouts: [], pad: bytes(MAX_FRAME + 1 + r.int(MAX_FRAME / 2)) }) })
  }
  return frames
}

t.test('10,000 hostile frames are each answered with a reason while a valid producer loses nothing', async (t) => {
  const served = await startServer({
    config: {
      groupSize: 8,
      batchGroups: 4,
      objectives: [{ channel: 'accuracy' }],
      constraints: [{ channel: 'consistency', sense: '>=', threshold: 0.9, dual: { rule: 'sgd', lr: 0.1 } }],
    },
    limits: { maxFrameBytes: MAX_FRAME },
    maxRolloutsPerFrame: 1000,
    heartbeatMs: 0,
  })
  t.teardown(() => served.close())
  const frames = hostileFrames(HOSTILE)
  const valid = Array.from({ length: 8000 }, (_, i) => ({
    id: `v${i}`,
    promptId: `vp${Math.floor(i / 8)}`,
    rewards: { accuracy: i % 3 === 0 ? 1 : 0, consistency: i % 7 === 0 ? 0 : 1 },
    payload: { tokens: [i, i + 1] },
  }))
  const trainer = (await Client.open(served.url('/batches'))).autoAck()
  const hostile = await Client.open(served.url('/ingest'))
  const producer = await Client.open(served.url('/ingest'))
  const hostileKinds = new Map<string, number>()
  const sending = (async () => {
    for (let i = 0; i < frames.length; i++) {
      const f = frames[i]
      hostileKinds.set(f.kind, (hostileKinds.get(f.kind) ?? 0) + 1)
      hostile.ws.send(f.data, { binary: f.binary })
      // let the socket drain now and then, as a real (if rude) client would
      if (i % 200 === 199) await new Promise((r) => setTimeout(r, 1))
    }
  })()
  // meanwhile, lying frames far over the limit on their own connections: ws closes them with 1009
  const brutes = await Promise.all([0, 1, 2].map(() => Client.open(served.url('/ingest'))))
  for (const brute of brutes) brute.send({ type: 'rollouts', pad: 'x'.repeat(3 * MAX_FRAME) })
  await produce(producer, valid, 250)
  await sending
  // each hostile frame gets exactly one answer: an error, or (for a well-formed frame of bad items) an ack after its rejected frame
  await hostile.until(() => hostile.count('error') + hostile.count('ack') === HOSTILE, 60_000, 'an answer to every hostile frame')
  for (const brute of brutes) await brute.until(() => brute.closed !== undefined)
  t.same(
    brutes.map((b) => b.closed!.code),
    [1009, 1009, 1009],
    'frames far over the limit: the connection is closed as "message too big"',
  )

  t.equal(hostile.closed, undefined, 'the hostile connection is still open')
  t.ok(
    hostile.of('error').every((e) => typeof e.code === 'string' && typeof e.reason === 'string' && e.reason.length > 0),
    'every error frame has a code and a reason',
  )
  t.ok(
    hostile
      .of('rejected')
      .every((r) => r.errors.length > 0 && r.errors.every((e: { field: string; reason: string }) => e.field.length > 0 && e.reason.length > 0)),
    'every rejected item has a field and a reason',
  )
  t.equal(hostile.count('rejected'), hostile.count('ack'), 'frames of bad items: rejected, then an empty ack')
  t.ok(
    hostile.of('ack').every((a) => a.ids.length === 0),
    'no hostile item was accepted',
  )
  const codes: Record<string, number> = {}
  for (const e of hostile.of('error')) codes[e.code] = (codes[e.code] ?? 0) + 1
  t.match(codes, { decode: Number, 'bad-frame': Number, 'too-many-rollouts': Number, 'too-large': Number })
  t.comment(
    `hostile frames by kind: ${JSON.stringify(Object.fromEntries(hostileKinds))}; answers by code: ${JSON.stringify(codes)}, rejected ${hostile.count('rejected')}`,
  )

  // the valid producer: everything acknowledged once, and every rollout in exactly one batch
  t.same(
    producer.of('ack').flatMap((a) => a.ids),
    valid.map((r) => r.id),
  )
  await trainer.until(() => trainer.count('batch') === 250, 30_000, '250 batches')
  const seen = new Map<string, number>()
  for (const batch of trainer.of('batch')) for (const r of batch.rollouts) seen.set(r.id, (seen.get(r.id) ?? 0) + 1)
  t.equal(seen.size, valid.length, 'every valid rollout is in a batch')
  t.ok(
    [...seen.values()].every((n) => n === 1),
    'exactly once',
  )
  t.same(
    trainer.of('batch').map((b) => b.step),
    Array.from({ length: 250 }, (_, i) => i + 1),
  )
  const health = served.server.health()
  t.match(health, { status: 'ok', ingest: { ingested: valid.length, duplicate: 0 }, pipeline: { rolloutsInBatches: valid.length } })
  t.equal(served.engine.error, undefined)
  await Promise.all([hostile.close(), producer.close(), trainer.close()])
})
