import t from 'tap'
import { checkJsonDepth, checkMsgpack, decodeFrame, describeValue, encodeFrame, errorFrame } from '../../streams/wire.js'
import { pack, unpackr } from './support.js'

const bytes = (...b: number[]) => Uint8Array.from(b)

t.test('checkMsgpack accepts every well-formed scalar and container form', (t) => {
  const values: unknown[] = [
    0,
    127,
    -1,
    -32,
    null,
    true,
    false,
    'a',
    'x'.repeat(40),
    'y'.repeat(300),
    'z'.repeat(70_000),
    Buffer.alloc(10),
    Buffer.alloc(300),
    Buffer.alloc(70_000),
    0.5,
    255,
    65_535,
    2 ** 32 - 1,
    -128,
    -32_768,
    -(2 ** 31),
    [],
    [1, [2, [3]]],
    new Array(20).fill(1),
    new Array(70_000).fill(0),
    {},
    { a: { b: {} } },
    Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`k${i}`, i])),
    Object.fromEntries(Array.from({ length: 60_000 }, (_, i) => [`k${i}`, 0])),
    new Date(0),
    new Date(2 ** 40),
    new Date(-1),
  ]
  for (const value of values) t.equal(checkMsgpack(pack(value), 32), undefined, `${describeValue(value)}`)
  const raw = [
    bytes(0xca, 0, 0, 0, 0), // float 32
    bytes(0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff), // uint 64
    bytes(0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0), // int 64
    bytes(0xd6, 0xff, 0, 0, 0, 1), // timestamp 32 (fixext 4)
    bytes(0xc7, 12, 0xff, ...new Array(12).fill(0)), // timestamp 96 (ext 8)
    bytes(0xc9, 0, 0, 0, 4, 0xff, 0, 0, 0, 1), // timestamp as ext 32
    bytes(0xc8, 0, 4, 0xff, 0, 0, 0, 1), // timestamp as ext 16
    bytes(0xdc, 0, 1, 0xc0), // array 16
    bytes(0xde, 0, 1, 0xa1, 0x61, 0xc0), // map 16
    bytes(0xdf, 0, 0, 0, 1, 0xa1, 0x61, 0xc0), // map 32
  ]
  for (const b of raw) t.equal(checkMsgpack(b, 32), undefined, Buffer.from(b).toString('hex'))
  t.end()
})

t.test('checkMsgpack refuses malformed, lying, hostile bytes with where and why', (t) => {
  const cases: [Uint8Array, RegExp][] = [
    [bytes(), /truncated at byte 0: a value was expected/],
    [bytes(0xc1), /byte 0: 0xc1 is not a MessagePack type/],
    [bytes(0x92, 0x91, 0x01), /truncated at byte 3: a value was expected/],
    [bytes(0xd9), /truncated at byte 1: 1 more bytes expected, 0 present/],
    [bytes(0xd9, 5, 0x41), /truncated at byte 2: 5 more bytes expected, 1 present/],
    [bytes(0xc5, 0), /2 more bytes expected/],
    [bytes(0xdb, 0, 0), /4 more bytes expected/],
    [bytes(0xcb, 0), /8 more bytes expected/],
    [bytes(0xc7), /2 more bytes expected/],
    [bytes(0xc8, 0, 1, 0x05, 0), /byte 0: MessagePack extension type 5 is not accepted/],
    [bytes(0xd4), /1 more bytes expected/],
    [bytes(0xd4, 0x72, 0), /extension type 114 is not accepted/],
    [bytes(0xdc, 0), /2 more bytes expected/],
    [bytes(0xdd, 0xff, 0xff, 0xff, 0xff), /byte 0: declares 4294967295 elements but only 0 bytes follow/],
    [bytes(0xdf, 0, 0, 0, 2, 1, 2, 3), /declares a map of 2 entries \(4 keys and values\) but only 3 bytes follow/],
    [bytes(0x01, 0x02), /1 bytes after the end of the value \(at byte 1\)/],
    [new Uint8Array(1000).fill(0x91), /byte 32: nested deeper than 32 levels/],
  ]
  for (const [b, reason] of cases) t.match(checkMsgpack(b, 32), reason, Buffer.from(b.subarray(0, 8)).toString('hex'))
  t.equal(checkMsgpack(pack([[[1]]]), 3), undefined, 'depth 3 within 3')
  t.match(checkMsgpack(pack([[[[1]]]]), 3), /nested deeper than 3/)
  t.equal(checkMsgpack(pack([[], [], [[1]]]), 3), undefined, 'finished siblings do not count towards depth')
  t.end()
})

t.test('checkJsonDepth counts brackets outside strings only', (t) => {
  t.equal(checkJsonDepth('{"a":[1,{"b":[]}]}', 4), undefined)
  t.match(checkJsonDepth('{"a":[1,{"b":[]}]}', 2), /character 8: nested deeper than 2 levels/)
  t.equal(checkJsonDepth('{"a":"[[[[\\"[[[{{"}', 1), undefined, 'brackets and escaped quotes inside strings are text')
  t.match(checkJsonDepth('['.repeat(100_000), 32), /nested deeper than 32/)
  t.end()
})

t.test('decodeFrame: MessagePack and JSON to a typed map, or a code and a reason', (t) => {
  const limits = { maxFrameBytes: 1000, maxDepth: 8 }
  t.same(decodeFrame(pack({ type: 'x', n: 1 }), true, limits), { ok: true, frame: { type: 'x', n: 1 } })
  t.same(decodeFrame(Buffer.from('{"type":"x","n":1}'), false, limits), { ok: true, frame: { type: 'x', n: 1 } })
  const big = decodeFrame(pack({ type: 'x', s: 'a'.repeat(2000) }), true, limits)
  t.same(big, { ok: false, code: 'too-large', reason: `frame of 2015 bytes exceeds the limit of 1000 bytes` })
  t.match(decodeFrame(Buffer.from([0xc1]), true, limits), {
    ok: false,
    code: 'decode',
    reason: 'not valid MessagePack: byte 0: 0xc1 is not a MessagePack type',
  })
  t.match(
    decodeFrame(Buffer.from([0x81, 0x80, 0x02]), true, limits),
    { ok: false, code: 'decode', reason: /^not valid MessagePack: .*property type/ },
    'msgpackr errors are caught',
  )
  t.match(decodeFrame(Buffer.from([0xff, 0xfe]), false, limits), { ok: false, code: 'decode', reason: 'text frame is not valid UTF-8' })
  t.match(decodeFrame(Buffer.from('[[[[[[[[[[1]]]]]]]]]]'), false, limits), {
    ok: false,
    code: 'decode',
    reason: /not valid JSON: character 8: nested deeper than 8/,
  })
  t.match(decodeFrame(Buffer.from('{"type":'), false, limits), { ok: false, code: 'decode', reason: /^not valid JSON: / })
  t.match(decodeFrame(Buffer.from('[1]'), false, limits), { ok: false, code: 'bad-frame', reason: 'a frame must be a map with a string "type", got an array' })
  t.match(decodeFrame(pack(new Date(0)), true, limits), { ok: false, code: 'bad-frame', reason: /got a timestamp/ })
  t.match(decodeFrame(pack(Buffer.from('abc')), true, limits), { ok: false, code: 'bad-frame', reason: /got binary data/ })
  t.match(decodeFrame(pack({ kind: 'x' }), true, limits), { ok: false, code: 'bad-frame', reason: 'type: must be a string, got nothing' })
  t.match(decodeFrame(pack({ type: 5 }), true), { ok: false, code: 'bad-frame', reason: 'type: must be a string, got 5' }, 'default limits')
  const u64 = decodeFrame(Buffer.from([0x82, 0xa4, ...Buffer.from('type'), 0xa1, 0x78, 0xa1, 0x6e, 0xcf, 0, 0x20, 0, 0, 0, 0, 0, 1]), true, limits)
  t.same(u64, { ok: true, frame: { type: 'x', n: 2 ** 53 } }, '64-bit integers decode as numbers, never BigInt')
  t.end()
})

t.test('encodeFrame and errorFrame', (t) => {
  t.equal(encodeFrame({ type: 'ack', ids: ['a'] }, 'json'), '{"type":"ack","ids":["a"]}')
  t.same(unpackr.unpack(encodeFrame({ type: 'ack', ids: ['a'] }, 'msgpack') as Buffer), { type: 'ack', ids: ['a'] })
  t.same(errorFrame('decode', 'why'), { type: 'error', code: 'decode', reason: 'why' })
  t.end()
})
