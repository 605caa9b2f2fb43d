/**
 * Payload passthrough at the codec (src/state/rawPayload.ts): a rollouts frame decodes to
 * exactly what msgpackr makes of it, except that each item's payload is the producer's own
 * bytes (a view, not decoded); `skipValue` finds the end of any MessagePack value; frames
 * that are not rollouts frames decode as msgpackr would.
 */
import fc from 'fast-check'
import { Packr, Unpackr } from 'msgpackr'
import t from 'tap'
import { RawPayload, decodeLoggedFrame, decodeRolloutsFrame, skipValue } from '../../src/state/rawPayload.js'
import { checkMsgpack } from '../../streams/wire.js'

const packr = new Packr({ useRecords: false })
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' })

/** MessagePack-able values: nested maps and arrays, strings, numbers, booleans, null, binary. */
const value = fc.letrec((tie) => ({
  leaf: fc.oneof(
    fc.string(),
    fc.double({ noNaN: true }),
    fc.integer(),
    fc.boolean(),
    fc.constant(null),
    fc.uint8Array({ maxLength: 40 }).map((b) => Buffer.from(b)),
  ),
  node: fc.oneof(
    { depthSize: 'small' },
    tie('leaf'),
    fc.array(tie('node'), { maxLength: 4 }),
    fc.dictionary(fc.string({ maxLength: 6 }), tie('node'), { maxKeys: 20 }),
  ),
})).node

const item = fc.record(
  {
    id: fc.string({ minLength: 1, maxLength: 8 }),
    promptId: fc.string({ minLength: 1, maxLength: 8 }),
    rewards: fc.dictionary(fc.string({ maxLength: 5 }), fc.oneof(fc.double({ noNaN: true }), fc.constant(null)), { maxKeys: 4 }),
    policyVersion: fc.nat(),
    payload: value,
    extra: value,
  },
  { requiredKeys: ['id', 'promptId', 'rewards'] },
)

t.test('a rollouts frame decodes as msgpackr decodes it, each payload the producer’s bytes', async (t) => {
  fc.assert(
    fc.property(fc.array(fc.oneof(item, value), { maxLength: 20 }), fc.dictionary(fc.constantFrom('a', 'b', 'ts'), value), (items, extra) => {
      const bytes = packr.pack({ type: 'rollouts', ...extra, rollouts: items })
      const decoded = decodeRolloutsFrame(bytes) as { rollouts: Record<string, unknown>[] }
      const reference = unpackr.unpack(bytes) as { rollouts: Record<string, unknown>[] }
      const payloads = decoded.rollouts.map((it) => (typeof it === 'object' && it !== null && 'payload' in it ? it.payload : undefined))
      for (let k = 0; k < items.length; k++) {
        const p = payloads[k]
        if (p instanceof RawPayload) {
          t.same(unpackr.unpack(p.bytes!), reference.rollouts[k].payload)
          t.same(Buffer.from(p.bytes!), packr.pack((items[k] as { payload: unknown }).payload), 'exactly the bytes the producer packed')
          t.equal(p.bytes!.buffer, bytes.buffer, 'a view of the frame, not a copy')
          delete decoded.rollouts[k].payload
          delete reference.rollouts[k].payload
        }
      }
      t.same(decoded, reference)
    }),
    { numRuns: 200 },
  )
})

t.test('bytes a re-encoding would change go through as sent: float32, a __proto__ key, an int in a wide form', async (t) => {
  // payload {x: float32 1.5, "__proto__": 1, n: uint32 7}, hand-encoded
  const payload = Buffer.from([0x83, 0xa1, 0x78, 0xca, 0x3f, 0xc0, 0x00, 0x00, 0xa9, ...Buffer.from('__proto__'), 0x01, 0xa1, 0x6e, 0xce, 0, 0, 0, 7])
  const frame = Buffer.concat([
    Buffer.from([0x82, 0xa4, ...Buffer.from('type'), 0xa8, ...Buffer.from('rollouts'), 0xa8, ...Buffer.from('rollouts'), 0x91]),
    // {id: "r", promptId: "p", rewards: {}, payload: …} with its keys in str8 form
    Buffer.from([0x84, 0xa2, ...Buffer.from('id'), 0xa1, 0x72, 0xd9, 8, ...Buffer.from('promptId'), 0xa1, 0x70, 0xa7, ...Buffer.from('rewards'), 0x80]),
    Buffer.from([0xd9, 7, ...Buffer.from('payload')]),
    payload,
  ])
  t.equal(checkMsgpack(frame, 32), undefined)
  const decoded = decodeRolloutsFrame(frame) as { type: string; rollouts: Record<string, unknown>[] }
  t.same(decoded.type, 'rollouts')
  t.same(decoded.rollouts[0], { id: 'r', promptId: 'p', rewards: {}, payload: new RawPayload(payload) })
  t.same(Buffer.from((decoded.rollouts[0].payload as RawPayload).bytes!), payload)
})

t.test('map16 items, duplicate payload keys (the last wins), items that are not maps, frames that are not rollouts frames', async (t) => {
  const wide: Record<string, unknown> = { id: 'r', promptId: 'p', rewards: {} }
  for (let k = 0; k < 20; k++) wide[`k${k}`] = k
  wide.payload = 'kept'
  const frame = packr.pack({ type: 'rollouts', rollouts: [wide, 5, 'x'] })
  const decoded = decodeRolloutsFrame(frame) as { rollouts: unknown[] }
  t.same(decoded.rollouts.slice(1), [5, 'x'])
  const first = decoded.rollouts[0] as Record<string, unknown>
  t.equal(unpackr.unpack((first.payload as RawPayload).bytes!), 'kept')
  t.equal(first.k19, 19)

  const dup = Buffer.concat([
    Buffer.from([0x82]),
    packr.pack('type'),
    packr.pack('rollouts'),
    packr.pack('rollouts'),
    Buffer.from([0x91, 0x83]),
    packr.pack('id'),
    packr.pack('r'),
    packr.pack('payload'),
    packr.pack('first'),
    packr.pack('payload'),
    packr.pack('second'),
  ])
  const longKeys = Buffer.concat([
    Buffer.from([0x81, 0xa8, ...Buffer.from('rollouts'), 0x91, 0x82]),
    Buffer.from([0xda, 0, 7, ...Buffer.from('payload'), 0x01]),
    Buffer.from([0xdb, 0, 0, 0, 7, ...Buffer.from('payload'), 0x02]),
  ])
  const intKeys = Buffer.concat([Buffer.from([0x81, 0xa8, ...Buffer.from('rollouts'), 0x91, 0x82, 0xff, 0x01, 0x05, 0x02])])
  t.same(decodeRolloutsFrame(intKeys), { rollouts: [{ '-1': 1, 5: 2 }] }, 'keys that are not strings are not payloads')
  const twenty = decodeRolloutsFrame(packr.pack({ rollouts: Array.from({ length: 20 }, (_, k) => ({ id: `r${k}`, payload: k })) })) as {
    rollouts: { payload: RawPayload }[]
  }
  t.same(
    twenty.rollouts.map((r) => unpackr.unpack(r.payload.bytes!)),
    Array.from({ length: 20 }, (_, k) => k),
    'an array16 of items',
  )
  const long = decodeRolloutsFrame(longKeys) as { rollouts: Record<string, RawPayload>[] }
  t.same([...long.rollouts[0].payload.bytes!], [2], 'payload keys in str16 and str32 form too')
  const withDup = decodeRolloutsFrame(dup) as { rollouts: Record<string, unknown>[] }
  t.same(Object.keys(withDup.rollouts[0]), ['id', 'payload'])
  t.equal(unpackr.unpack((withDup.rollouts[0].payload as RawPayload).bytes!), 'second', 'the last payload, as any decoder takes it')

  for (const other of [
    { type: 'ack', step: 3 },
    { type: 'rollouts', rollouts: 'no' },
    [1, 2],
    'text',
    { type: 'rollouts', rollouts: [], more: { rollouts: [1] } },
  ])
    t.same(decodeRolloutsFrame(packr.pack(other)), other, `${JSON.stringify(other)} decodes as it is`)
  const map32 = Buffer.concat([
    Buffer.from([0xdf, 0, 0, 0, 1]),
    packr.pack('rollouts'),
    Buffer.from([0xdd, 0, 0, 0, 1, 0xdf, 0, 0, 0, 1]),
    packr.pack('payload'),
    Buffer.from([0x07]),
  ])
  const wide32 = decodeRolloutsFrame(map32) as { rollouts: Record<string, RawPayload>[] }
  t.same([...wide32.rollouts[0].payload.bytes!], [7], 'map32 and array32 headers')
  const manyKeys = decodeRolloutsFrame(
    new Packr({ useRecords: false, variableMapSize: true }).pack({
      rollouts: [Object.fromEntries([...Array.from({ length: 70_000 }, (_, k) => [`k${k}`, k]), ['payload', 1]])],
    }),
  ) as {
    rollouts: Record<string, unknown>[]
  }
  t.equal(Object.keys(manyKeys.rollouts[0]).length, 70_001, 'an item of more than 65,535 entries keeps them all')
})

t.test('skipValue finds the end of any MessagePack value', async (t) => {
  fc.assert(
    fc.property(value, (v) => {
      const bytes = packr.pack(v)
      return skipValue(bytes, 0) === bytes.length
    }),
    { numRuns: 500 },
  )
  const forms = [
    [0xc4, 1, 9],
    [0xc5, 0, 1, 9],
    [0xc6, 0, 0, 0, 1, 9],
    [0xd9, 1, 0x41],
    [0xda, 0, 1, 0x41],
    [0xdb, 0, 0, 0, 1, 0x41],
    [0xc7, 1, 5, 9],
    [0xc8, 0, 1, 5, 9],
    [0xc9, 0, 0, 0, 1, 5, 9],
    [0xca, 0, 0, 0, 0],
    [0xcb, 0, 0, 0, 0, 0, 0, 0, 0],
    [0xcc, 1],
    [0xcd, 0, 1],
    [0xce, 0, 0, 0, 1],
    [0xcf, 0, 0, 0, 0, 0, 0, 0, 1],
    [0xd0, 1],
    [0xd1, 0, 1],
    [0xd2, 0, 0, 0, 1],
    [0xd3, 0, 0, 0, 0, 0, 0, 0, 1],
    [0xd4, 1, 1],
    [0xd5, 1, 1, 1],
    [0xd6, 1, 1, 1, 1, 1],
    [0xd7, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    [0xd8, 1, ...Array<number>(16).fill(1)],
    [0xdc, 0, 1, 0xc0],
    [0xdd, 0, 0, 0, 1, 0xc0],
    [0xde, 0, 1, 0xc0, 0xc0],
    [0xdf, 0, 0, 0, 1, 0xc0, 0xc0],
    [0xc2],
  ]
  for (const form of forms) t.equal(skipValue(Uint8Array.from([...form, 0xff]), 0), form.length, `0x${form[0].toString(16)}`)
})

t.test('decodeLoggedFrame: MessagePack with raw payloads, or JSON as logged before passthrough', async (t) => {
  const logged = decodeLoggedFrame(packr.pack({ type: 'rollouts', rollouts: [{ id: 'a', payload: [1] }] }), 'msgpack') as { rollouts: { payload: unknown }[] }
  t.ok(logged.rollouts[0].payload instanceof RawPayload)
  t.same(decodeLoggedFrame(Buffer.from('{"type":"rollouts","rollouts":[{"id":"a","payload":[1]}]}'), 'json'), {
    type: 'rollouts',
    rollouts: [{ id: 'a', payload: [1] }],
  })
})
