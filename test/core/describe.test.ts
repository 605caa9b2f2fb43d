import t from 'tap'
import { Packr } from 'msgpackr'
import { describe } from '../../src/core/describe.js'
import { validateRollout } from '../../src/core/validate.js'
import { checkMsgpack, decodeFrame } from '../../streams/wire.js'

t.test('bad values are named as the producer sent them', async (t) => {
  t.equal(describe(3), '3')
  t.equal(describe('x'.repeat(41)), `the string "${'x'.repeat(40)}…"`)
  t.equal(describe(true), 'the boolean true')
  t.equal(describe(2n ** 64n), 'the integer 18446744073709551616 (beyond ±2^53)')
  t.equal(describe(undefined), 'nothing')
  t.equal(describe(null), 'null')
  t.equal(describe([1]), 'an array')
  t.equal(describe(new Date(Date.UTC(2026, 0, 2))), 'a timestamp (MessagePack ext −1: 2026-01-02T00:00:00.000Z)')
  t.equal(describe(new Date(NaN)), 'a timestamp (MessagePack ext −1)')
  t.equal(describe(new Uint8Array(5)), 'binary data (MessagePack bin, 5 bytes)')
  t.equal(describe(new ArrayBuffer(2)), 'binary data (MessagePack bin, 2 bytes)')
  t.equal(describe({ a: 1 }), 'a map')
  t.equal(
    describe(() => 1),
    'function',
  )
})

t.test('a timestamp or binary reward from a MessagePack producer is reported by its MessagePack type', async (t) => {
  const packr = new Packr({ useRecords: false })
  const frame = packr.pack({
    type: 'rollouts',
    rollouts: [{ id: 'r1', promptId: 'p', rewards: { accuracy: new Date(Date.UTC(2026, 0, 1)), consistency: Buffer.from([1, 2, 3]) } }],
  })
  const decoded = decodeFrame(frame, true)
  if (!decoded.ok) throw new Error(decoded.reason)
  const items = decoded.frame.rollouts as unknown[]
  const result = validateRollout(items[0])
  t.same(result, {
    ok: false,
    errors: [
      { id: 'r1', field: 'rewards.accuracy', reason: 'must be a finite number or null, got a timestamp (MessagePack ext −1: 2026-01-01T00:00:00.000Z)' },
      { id: 'r1', field: 'rewards.consistency', reason: 'must be a finite number or null, got binary data (MessagePack bin, 3 bytes)' },
    ],
  })
})

t.test('a map header that lies about its size is reported in entries, not in keys and values', async (t) => {
  // map32 declaring 3 entries, then one byte
  t.equal(checkMsgpack(Uint8Array.of(0xdf, 0, 0, 0, 3, 0x01), 32), 'byte 0: declares a map of 3 entries (6 keys and values) but only 1 bytes follow')
  t.equal(checkMsgpack(Uint8Array.of(0xde, 0, 2), 32), 'byte 0: declares a map of 2 entries (4 keys and values) but only 0 bytes follow')
  t.equal(checkMsgpack(Uint8Array.of(0x82, 0x01), 32), 'byte 0: declares a map of 2 entries (4 keys and values) but only 1 bytes follow')
  t.equal(checkMsgpack(Uint8Array.of(0x93, 0x01), 32), 'byte 0: declares 3 elements but only 1 bytes follow')
})
