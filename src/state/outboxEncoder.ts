/**
 * MessagePack for a batch going to the trainer, written straight from the scored batch.
 * Every batch passes through here (stored in the outbox, then sent as is), and building
 * one small object per rollout only to have msgpackr walk it again cost more than the
 * rest of the commit; the small values of the header (λ, constraints) go through msgpackr.
 * The bytes decode to exactly the trainer's view built as plain objects (the reference in
 * `test/engine/outboxEncoder.test.ts`).
 */
import { wirePackr } from './codec.js'
import { RawPayload } from './rawPayload.js'
import type { ScoredBatch } from '../core/types.js'
import { constraintsRecord } from './batchRecord.js'

// pre-encoded keys (fixstr)
const KEY_ROLLOUTS = Buffer.from([0xa8, ...Buffer.from('rollouts')])
const KEY_ID = Buffer.from([0xa2, ...Buffer.from('id')])
const KEY_PROMPT = Buffer.from([0xa8, ...Buffer.from('promptId')])
const KEY_ADVANTAGE = Buffer.from([0xa9, ...Buffer.from('advantage')])
const KEY_PAYLOAD = Buffer.from([0xa7, ...Buffer.from('payload')])

/** Writes a MessagePack str (header and UTF-8 bytes) at `pos`; returns the position after it. */
function writeString(out: Buffer, pos: number, s: string): number {
  // ids are mostly short ASCII: a byte loop beats two calls into C++ for them
  if (s.length < 32) {
    let k = 0
    while (k < s.length) {
      const code = s.charCodeAt(k)
      if (code >= 0x80) break
      out[pos + 1 + k++] = code
    }
    if (k === s.length) {
      out[pos] = 0xa0 | k
      return pos + 1 + k
    }
  }
  const bytes = Buffer.byteLength(s)
  if (bytes < 32) out[pos++] = 0xa0 | bytes
  else if (bytes < 256) {
    out[pos] = 0xd9
    out[pos + 1] = bytes
    pos += 2
  } else if (bytes < 65536) {
    out[pos] = 0xda
    out.writeUInt16BE(bytes, pos + 1)
    pos += 3
  } else {
    out[pos] = 0xdb
    out.writeUInt32BE(bytes, pos + 1)
    pos += 5
  }
  return pos + out.write(s, pos)
}

/** Copies a pre-encoded key: for a few bytes a loop beats `set` and `Buffer#copy`. */
function writeKey(out: Buffer, pos: number, key: Buffer): number {
  for (let k = 0; k < key.length; k++) out[pos + k] = key[k]
  return pos + key.length
}

/** The batch as the trainer receives it: `{type, step, lambda, constraints, rollouts: [{id, promptId, advantage, payload?}]}`. */
export function encodeBatchForTrainer(batch: ScoredBatch): Buffer {
  // msgpackr encodes the four small fields as a map with a map16 header (0xde, count; it
  // does not size maps up front); the rollouts written below make the count five
  const head = wirePackr.pack({ type: 'batch', step: batch.step, lambda: batch.lambda, constraints: constraintsRecord(batch.constraints) })
  head.writeUInt16BE(5, 1)
  const payloads: (Uint8Array | undefined)[] = []
  let bound = head.length + KEY_ROLLOUTS.length + 5
  for (const group of batch.groups) {
    for (const rollout of group.rollouts) {
      // a payload from the wire goes on as the producer's bytes; one given as a value is encoded
      const payload =
        rollout.payload === undefined ? undefined : rollout.payload instanceof RawPayload ? rollout.payload.bytes : wirePackr.pack(rollout.payload)
      payloads.push(payload)
      bound += 1 + KEY_ID.length + 5 + 3 * rollout.id.length + KEY_PROMPT.length + 5 + 3 * rollout.promptId.length + KEY_ADVANTAGE.length + 9
      if (payload !== undefined) bound += KEY_PAYLOAD.length + payload.length
    }
  }
  const out = Buffer.allocUnsafe(bound)
  out.set(head, 0)
  let pos = writeKey(out, head.length, KEY_ROLLOUTS)
  const n = payloads.length
  if (n < 16) out[pos++] = 0x90 | n
  else if (n < 65536) {
    out[pos] = 0xdc
    out.writeUInt16BE(n, pos + 1)
    pos += 3
  } else {
    out[pos] = 0xdd
    out.writeUInt32BE(n, pos + 1)
    pos += 5
  }
  let i = 0
  for (const group of batch.groups) {
    for (const rollout of group.rollouts) {
      const payload = payloads[i]
      out[pos++] = payload === undefined ? 0x83 : 0x84
      pos = writeString(out, writeKey(out, pos, KEY_ID), rollout.id)
      pos = writeString(out, writeKey(out, pos, KEY_PROMPT), rollout.promptId)
      pos = writeKey(out, pos, KEY_ADVANTAGE)
      out[pos] = 0xcb
      out.writeDoubleBE(batch.advantages[i], pos + 1)
      pos += 9
      if (payload !== undefined) {
        pos = writeKey(out, pos, KEY_PAYLOAD)
        out.set(payload, pos)
        pos += payload.length
      }
      i++
    }
  }
  return out.subarray(0, pos)
}
