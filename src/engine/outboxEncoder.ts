/**
 * MessagePack for a batch going to the trainer, written straight from the scored batch.
 * Every batch passes through here (stored in the outbox, then sent as is), and building
 * one small object per rollout only to have msgpackr walk it again cost more than the
 * rest of the commit; the small values of the header (λ, constraints) go through msgpackr.
 * The bytes decode to exactly `toOutbox(batch)` (`test/engine/outboxEncoder.test.ts`).
 */
import { wirePackr } from '../codec.js'
import type { ScoredBatch } from '../types.js'
import { constraintsRecord } from './batchRecord.js'

// pre-encoded keys (fixstr)
const KEY_ROLLOUTS = Buffer.from([0xa8, ...Buffer.from('rollouts')])
const KEY_ID = Buffer.from([0xa2, ...Buffer.from('id')])
const KEY_PROMPT = Buffer.from([0xa8, ...Buffer.from('promptId')])
const KEY_ADVANTAGE = Buffer.from([0xa9, ...Buffer.from('advantage')])
const KEY_PAYLOAD = Buffer.from([0xa7, ...Buffer.from('payload')])

/** Writes a MessagePack str (header and UTF-8 bytes) at `pos`; returns the position after it. */
function writeString(out: Buffer, pos: number, s: string): number {
  const bytes = Buffer.byteLength(s)
  if (bytes < 32) out[pos++] = 0xa0 | bytes
  else if (bytes < 256) (out[pos] = 0xd9), (out[pos + 1] = bytes), (pos += 2)
  else if (bytes < 65536) (out[pos] = 0xda), out.writeUInt16BE(bytes, pos + 1), (pos += 3)
  else (out[pos] = 0xdb), out.writeUInt32BE(bytes, pos + 1), (pos += 5)
  return pos + out.write(s, pos)
}

/** The batch as the trainer receives it: `{type, step, lambda, constraints, rollouts: [{id, promptId, advantage, payload?}]}`. */
export function encodeBatchForTrainer(batch: ScoredBatch): Buffer {
  // the map of the five fields is written here; msgpackr encodes the four small values
  const head = Buffer.concat([
    Buffer.from([0x85, 0xa4, ...Buffer.from('type')]),
    wirePackr.pack('batch'),
    Buffer.from([0xa4, ...Buffer.from('step')]),
    wirePackr.pack(batch.step),
    Buffer.from([0xa6, ...Buffer.from('lambda')]),
    wirePackr.pack(batch.lambda),
    Buffer.from([0xab, ...Buffer.from('constraints')]),
    wirePackr.pack(constraintsRecord(batch.constraints)),
  ])
  const payloads: (Buffer | undefined)[] = []
  let bound = head.length + KEY_ROLLOUTS.length + 5
  for (const group of batch.groups) {
    for (const rollout of group.rollouts) {
      const payload = rollout.payload === undefined ? undefined : wirePackr.pack(rollout.payload)
      payloads.push(payload)
      bound += 1 + KEY_ID.length + 5 + 3 * rollout.id.length + KEY_PROMPT.length + 5 + 3 * rollout.promptId.length + KEY_ADVANTAGE.length + 9
      if (payload !== undefined) bound += KEY_PAYLOAD.length + payload.length
    }
  }
  const out = Buffer.allocUnsafe(bound)
  head.copy(out, 0)
  let pos = head.length
  pos += KEY_ROLLOUTS.copy(out, pos)
  const n = payloads.length
  if (n < 16) out[pos++] = 0x90 | n
  else if (n < 65536) (out[pos] = 0xdc), out.writeUInt16BE(n, pos + 1), (pos += 3)
  else (out[pos] = 0xdd), out.writeUInt32BE(n, pos + 1), (pos += 5)
  let i = 0
  for (const group of batch.groups) {
    for (const rollout of group.rollouts) {
      const payload = payloads[i]
      out[pos++] = payload === undefined ? 0x83 : 0x84
      pos += KEY_ID.copy(out, pos)
      pos = writeString(out, pos, rollout.id)
      pos += KEY_PROMPT.copy(out, pos)
      pos = writeString(out, pos, rollout.promptId)
      pos += KEY_ADVANTAGE.copy(out, pos)
      out[pos] = 0xcb
      out.writeDoubleBE(batch.advantages[i], pos + 1)
      pos += 9
      if (payload !== undefined) {
        pos += KEY_PAYLOAD.copy(out, pos)
        pos += payload.copy(out, pos)
      }
      i++
    }
  }
  return out.subarray(0, pos)
}
