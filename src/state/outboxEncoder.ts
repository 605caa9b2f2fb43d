/**
 * MessagePack for a batch going to the trainer, written straight from the scored batch.
 * A payload whose bytes are in the log (a `RawPayload` from the wire) is not copied into the
 * outbox record: the record holds where it is (log entry, offset, length) and the position it
 * goes to, and `assembleBatch` splices the logged bytes in at delivery, so a payload is
 * written to disk once. A record without such payloads is the batch's MessagePack itself.
 * Every batch passes through here (stored in the outbox, then sent as is), and building
 * one small object per rollout only to have msgpackr walk it again cost more than the
 * rest of the commit; the small values of the header (λ, constraints) go through msgpackr.
 * The bytes decode to exactly the trainer's view built as plain objects (the reference in
 * `test/engine/outboxEncoder.test.ts`).
 */
import { wirePackr } from './codec.js'
import { RawPayload } from './rawPayload.js'
import type { Rollout, ScoredBatch } from '../core/types.js'
import { constraintsRecord, type BatchRecord } from './batchRecord.js'

/** What the trainer's record is made of: a scored batch's step, λ, constraint measures, groups and advantages. */
export type TrainerBatch = Pick<ScoredBatch, 'step' | 'lambda' | 'constraints' | 'groups' | 'advantages'>

/** What the trainer's record reads of a rollout. */
export type TrainerRollout = Pick<Rollout, 'id' | 'promptId' | 'payload'>

/** A trainer's record's parts with the constraint measures as the record holds them (`constraintsRecord`: NaN as null), as a batch's summary has them. */
export interface TrainerRecordParts {
  step: number
  lambda: ScoredBatch['lambda']
  constraints: BatchRecord['constraints']
  /** The batch's groups, or only their rollouts' ids, prompts and payloads. */
  groups: readonly { readonly rollouts: readonly TrainerRollout[] }[]
  /** One per rollout, in group order. */
  advantages: ArrayLike<number>
}

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

/** First byte of an outbox record with payloads by reference: 0xc1 is never MessagePack, so a plain batch cannot start with it. */
const REFERENCES = 0xc1
/** Per reference: position in the template (u32), log entry (f64), offset in its frame (u32), length (u32). */
const REFERENCE_BYTES = 20

/** Where a logged payload goes in a batch and where it is in the log. */
interface PayloadReference {
  position: number
  entry: number
  offset: number
  length: number
}

/**
 * The outbox record of a batch: what the trainer receives, `{type, step, lambda, constraints,
 * rollouts: [{id, promptId, advantage, payload?}]}` — with logged payloads by reference (see
 * the top of this file; `assembleBatch` makes the bytes to send). The bytes are a view of a buffer
 * sized by an upper bound (3 bytes a character, the widest headers): a caller that keeps the
 * record copies it (`Buffer.from`), one that encodes it into something else need not.
 */
export function encodeBatchForTrainer(batch: TrainerBatch): Buffer {
  return encodeTrainerRecord({
    step: batch.step,
    lambda: batch.lambda,
    constraints: constraintsRecord(batch.constraints),
    groups: batch.groups,
    advantages: batch.advantages,
  })
}

/** As `encodeBatchForTrainer`, from the parts a cluster's BATCHES entry and the GROUPS messages it names give (`trainerRecordOf`). */
export function encodeTrainerRecord(batch: TrainerRecordParts): Buffer {
  // msgpackr encodes the four small fields as a map with a map16 header (0xde, count; it
  // does not size maps up front); the rollouts written below make the count five
  const head = wirePackr.pack({ type: 'batch', step: batch.step, lambda: batch.lambda, constraints: batch.constraints })
  head.writeUInt16BE(5, 1)
  // payloads that are values, encoded once (by rollout index); those from the wire are bytes already
  let encoded: (Uint8Array | undefined)[] | undefined
  let bound = head.length + KEY_ROLLOUTS.length + 5
  let references = 0
  let n = 0
  for (const group of batch.groups) {
    for (const rollout of group.rollouts) {
      bound += 1 + KEY_ID.length + 5 + 3 * rollout.id.length + KEY_PROMPT.length + 5 + 3 * rollout.promptId.length + KEY_ADVANTAGE.length + 9
      const payload = rollout.payload
      if (payload instanceof RawPayload) {
        bound += KEY_PAYLOAD.length
        if (payload.entry !== undefined) references++
        else bound += payload.bytes!.length
      } else if (payload !== undefined) {
        encoded ??= []
        encoded[n] = wirePackr.pack(payload)
        bound += KEY_PAYLOAD.length + encoded[n]!.length
      }
      n++
    }
  }
  // one buffer: with references, their table first ([0xc1, count, then one per reference]) and the template after it
  const templateAt = references === 0 ? 0 : 5 + references * REFERENCE_BYTES
  const record = Buffer.allocUnsafe(templateAt + bound)
  const view = new DataView(record.buffer, record.byteOffset, record.byteLength)
  const out = templateAt === 0 ? record : record.subarray(templateAt)
  if (references > 0) {
    record[0] = REFERENCES
    view.setUint32(1, references)
  }
  out.set(head, 0)
  let pos = writeKey(out, head.length, KEY_ROLLOUTS)
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
  let at = 5
  let i = 0
  for (const group of batch.groups) {
    for (const rollout of group.rollouts) {
      const payload = rollout.payload
      out[pos++] = payload === undefined ? 0x83 : 0x84
      pos = writeString(out, writeKey(out, pos, KEY_ID), rollout.id)
      pos = writeString(out, writeKey(out, pos, KEY_PROMPT), rollout.promptId)
      pos = writeKey(out, pos, KEY_ADVANTAGE)
      out[pos] = 0xcb
      view.setFloat64(templateAt + pos + 1, batch.advantages[i])
      pos += 9
      if (payload !== undefined) {
        pos = writeKey(out, pos, KEY_PAYLOAD)
        if (payload instanceof RawPayload && payload.entry !== undefined) {
          view.setUint32(at, pos)
          view.setFloat64(at + 4, payload.entry)
          view.setUint32(at + 12, payload.offset)
          view.setUint32(at + 16, payload.length)
          at += REFERENCE_BYTES
        } else {
          const bytes = payload instanceof RawPayload ? payload.bytes! : encoded![i]!
          out.set(bytes, pos)
          pos += bytes.length
        }
      }
      i++
    }
  }
  return record.subarray(0, templateAt + pos)
}

/**
 * The bytes to send for an outbox record: the record itself when it holds no references, else
 * its template with each logged payload spliced in. `frame(entry)` gives the bytes of a log
 * entry's frame; it is called once per entry, and what it returns need only stay valid until
 * the next call (lmdb-js's `getBinaryFast` reuses one buffer): every span of an entry is copied
 * out before the next entry is read.
 */
export function assembleBatch(record: Uint8Array, frame: (entry: number) => Uint8Array): Uint8Array {
  if (record[0] !== REFERENCES) return record
  const view = Buffer.from(record.buffer, record.byteOffset, record.byteLength)
  const count = view.readUInt32BE(1)
  const templateAt = 5 + count * REFERENCE_BYTES
  // where each payload goes in the output: after the template up to its position and the payloads before it
  const refs: (PayloadReference & { to: number })[] = new Array(count)
  const byEntry = new Map<number, number[]>()
  let spliced = 0
  for (let k = 0, at = 5; k < count; k++, at += REFERENCE_BYTES) {
    const ref = {
      position: view.readUInt32BE(at),
      entry: view.readDoubleBE(at + 4),
      offset: view.readUInt32BE(at + 12),
      length: view.readUInt32BE(at + 16),
      to: 0,
    }
    ref.to = ref.position + spliced
    spliced += ref.length
    refs[k] = ref
    const group = byEntry.get(ref.entry)
    if (group === undefined) byEntry.set(ref.entry, [k])
    else group.push(k)
  }
  const out = Buffer.allocUnsafe(record.length - templateAt + spliced)
  // the template around the payloads
  let from = templateAt
  let pos = 0
  for (const ref of refs) {
    pos += view.copy(out, pos, from, templateAt + ref.position)
    from = templateAt + ref.position
    pos += ref.length
  }
  view.copy(out, pos, from)
  // the payloads, one read per log entry
  for (const [entry, members] of byEntry) {
    const bytes = frame(entry)
    for (const k of members) {
      const ref = refs[k]
      if (ref.offset + ref.length > bytes.length)
        throw new Error(`a payload of the batch lies outside its log entry ${entry} (${ref.offset} + ${ref.length} > ${bytes.length} bytes)`)
      out.set(bytes.subarray(ref.offset, ref.offset + ref.length), ref.to)
    }
  }
  return out
}

/** The log entries (frames) whose bytes an outbox record's payloads are in, each once, in the order first referenced. */
export function referencedEntries(record: Uint8Array): number[] {
  if (record[0] !== REFERENCES) return []
  const view = Buffer.from(record.buffer, record.byteOffset, record.byteLength)
  const count = view.readUInt32BE(1)
  const entries = new Set<number>()
  for (let k = 0, at = 5; k < count; k++, at += REFERENCE_BYTES) entries.add(view.readDoubleBE(at + 4))
  return [...entries]
}
