/**
 * Payload passthrough (DESIGN §9, issue 12): a rollout's payload is the trainer's business,
 * so the engine never decodes it. A MessagePack `rollouts` frame is decoded item by item with
 * each item's `payload` value cut out of the bytes it travels in and kept as a `RawPayload`:
 * a view of the producer's own bytes, which the outbox encoder writes into the trainer's
 * batch as they are. A trainer decoding with any MessagePack library gets exactly the value
 * (and the bytes) the producer sent: float32 stays float32, a `__proto__` key stays itself,
 * a bin stays a bin. Only the fields the engine needs (id, promptId, rewards…) are decoded.
 *
 * The frame must already be well-formed MessagePack (`checkMsgpack`): this file walks it
 * without bounds checks of its own.
 */
import { wireUnpackr, type WireFormat } from './codec.js'

const EMPTY = new Uint8Array(0)

/**
 * A rollout's payload as the MessagePack bytes the producer sent (one value), passed on
 * untouched. Once its frame is logged it knows where (`entry`, `offset`) and drops the bytes
 * (`release`): a pending rollout then holds three numbers, not its payload, and the trainer's
 * batch is assembled from the log at delivery (outboxEncoder.ts), so the bytes are written to
 * disk once.
 */
export class RawPayload {
  /** The first seq of the log entry (frame) that holds the bytes, once logged. */
  entry: number | undefined
  /** Where the bytes start in that frame. */
  offset = 0
  readonly length: number
  /** The bytes, until released. */
  bytes: Uint8Array | undefined

  constructor(bytes: Uint8Array, length = bytes.length) {
    this.bytes = bytes
    this.length = length
  }

  /**
   * A payload known only by where it is logged: `length` bytes at `offset` of the frame logged
   * at `entry` (a cluster's sequencer builds batches from such references; DESIGN §8).
   */
  static at(entry: number, offset: number, length: number): RawPayload {
    const payload = new RawPayload(EMPTY, length)
    payload.entry = entry
    payload.offset = offset
    payload.bytes = undefined
    return payload
  }

  /** Records where the bytes are logged: in the frame `frame` (which `bytes` is a view of), logged at `entry`. */
  logged(entry: number, frame: Uint8Array): void {
    if (this.bytes === undefined || this.bytes.buffer !== frame.buffer) throw new Error(`a payload logged at seq ${entry} is not a view of its frame`)
    this.entry = entry
    this.offset = this.bytes!.byteOffset - frame.byteOffset
  }

  /** Drops the bytes once logged (the log has them); before that, does nothing. */
  release(): void {
    if (this.entry !== undefined) this.bytes = undefined
  }
}

/** The position after the one MessagePack value that starts at `pos`. */
export function skipValue(buf: Uint8Array, pos: number): number {
  let pending = 1
  while (pending > 0) {
    pending--
    const byte = buf[pos++]
    if (byte <= 0x7f || byte >= 0xe0 || byte === 0xc0 || byte === 0xc2 || byte === 0xc3) continue
    if (byte >= 0xa0 && byte <= 0xbf) pos += byte & 0x1f
    else if (byte >= 0x90 && byte <= 0x9f) pending += byte & 0x0f
    else if (byte >= 0x80 && byte <= 0x8f) pending += 2 * (byte & 0x0f)
    else
      switch (byte) {
        case 0xc4:
        case 0xd9:
          pos += 1 + buf[pos]
          break
        case 0xc5:
        case 0xda:
          pos += 2 + ((buf[pos] << 8) | buf[pos + 1])
          break
        case 0xc6:
        case 0xdb:
          pos += 4 + readUint32(buf, pos)
          break
        case 0xc7:
          pos += 2 + buf[pos]
          break
        case 0xc8:
          pos += 3 + ((buf[pos] << 8) | buf[pos + 1])
          break
        case 0xc9:
          pos += 5 + readUint32(buf, pos)
          break
        case 0xca:
          pos += 4
          break
        case 0xcb:
          pos += 8
          break
        case 0xcc:
        case 0xcd:
        case 0xce:
        case 0xcf:
        case 0xd0:
        case 0xd1:
        case 0xd2:
        case 0xd3:
          pos += 1 << (byte & 0x03)
          break
        case 0xd4:
        case 0xd5:
        case 0xd6:
        case 0xd7:
        case 0xd8:
          pos += 1 + (1 << (byte - 0xd4))
          break
        case 0xdc:
          pending += (buf[pos] << 8) | buf[pos + 1]
          pos += 2
          break
        case 0xdd:
          pending += readUint32(buf, pos)
          pos += 4
          break
        case 0xde:
          pending += 2 * ((buf[pos] << 8) | buf[pos + 1])
          pos += 2
          break
        default: // 0xdf, the only one left (0xc1 was refused by checkMsgpack)
          pending += 2 * readUint32(buf, pos)
          pos += 4
      }
  }
  return pos
}

const readUint32 = (buf: Uint8Array, pos: number): number => ((buf[pos] << 24) >>> 0) + ((buf[pos + 1] << 16) | (buf[pos + 2] << 8) | buf[pos + 3])

/** A map's or array's element count and where its first element starts, or undefined when the value at `pos` is neither. */
function containerAt(buf: Uint8Array, pos: number, kind: 'map' | 'array'): { count: number; body: number } | undefined {
  const byte = buf[pos]
  if (kind === 'map') {
    if (byte >= 0x80 && byte <= 0x8f) return { count: byte & 0x0f, body: pos + 1 }
    if (byte === 0xde) return { count: (buf[pos + 1] << 8) | buf[pos + 2], body: pos + 3 }
    if (byte === 0xdf) return { count: readUint32(buf, pos + 1), body: pos + 5 }
    return undefined
  }
  if (byte >= 0x90 && byte <= 0x9f) return { count: byte & 0x0f, body: pos + 1 }
  if (byte === 0xdc) return { count: (buf[pos + 1] << 8) | buf[pos + 2], body: pos + 3 }
  if (byte === 0xdd) return { count: readUint32(buf, pos + 1), body: pos + 5 }
  return undefined
}

/** Whether the value at `pos` is the string `key` (ASCII), in any of MessagePack's str forms. */
function isKey(buf: Uint8Array, pos: number, key: string): boolean {
  const byte = buf[pos]
  let start = pos + 1
  let length = byte & 0x1f
  if (byte === 0xd9) {
    start = pos + 2
    length = buf[pos + 1]
  } else if (byte === 0xda) {
    start = pos + 3
    length = (buf[pos + 1] << 8) | buf[pos + 2]
  } else if (byte === 0xdb) {
    start = pos + 5
    length = readUint32(buf, pos + 1)
  } else if (byte < 0xa0 || byte > 0xbf) return false
  if (length !== key.length) return false
  for (let k = 0; k < length; k++) if (buf[start + k] !== key.charCodeAt(k)) return false
  return true
}

/**
 * Decodes a frame (one well-formed MessagePack value). A map whose `rollouts` is an array gets
 * each item's `payload` cut out: msgpackr decodes one copy of the frame in which every payload
 * value is replaced by nil (so a payload is never decoded, and the copy holds only the bytes
 * around the payloads), and each item then gets its payload as a `RawPayload` view of the
 * original bytes. Anything else decodes as msgpackr (`wireUnpackr`) would.
 */
export function decodeRolloutsFrame(buf: Uint8Array): unknown {
  const map = containerAt(buf, 0, 'map')
  if (map === undefined) return wireUnpackr.unpack(buf)
  let pos = map.body
  let rollouts: { count: number; body: number } | undefined
  for (let k = 0; k < map.count; k++) {
    const key = pos
    const value = skipValue(buf, key)
    pos = skipValue(buf, value)
    // the last `rollouts` wins, as in any decoder; one that is not an array is left to the caller to refuse
    if (isKey(buf, key, 'rollouts')) rollouts = containerAt(buf, value, 'array')
  }
  if (rollouts === undefined) return wireUnpackr.unpack(buf)
  // every payload value of every item: [start, end), and the item it belongs to (the last one of an item wins)
  const cuts: number[] = []
  const owners: number[] = []
  let at = rollouts.body
  for (let k = 0; k < rollouts.count; k++) {
    const item = containerAt(buf, at, 'map')
    const end = skipValue(buf, at)
    if (item !== undefined) {
      let field = item.body
      for (let e = 0; e < item.count; e++) {
        const value = skipValue(buf, field)
        const after = skipValue(buf, value)
        if (isKey(buf, field, 'payload')) {
          cuts.push(value, after)
          owners.push(k)
        }
        field = after
      }
    }
    at = end
  }
  if (cuts.length === 0) return wireUnpackr.unpack(buf)
  // the frame with each payload value replaced by nil (0xc0), in one copy
  let removed = 0
  for (let c = 0; c < cuts.length; c += 2) removed += cuts[c + 1] - cuts[c] - 1
  const copy = new Uint8Array(buf.length - removed)
  let from = 0
  let to = 0
  for (let c = 0; c < cuts.length; c += 2) {
    copy.set(buf.subarray(from, cuts[c]), to)
    to += cuts[c] - from
    copy[to++] = 0xc0
    from = cuts[c + 1]
  }
  copy.set(buf.subarray(from), to)
  const frame = wireUnpackr.unpack(copy) as { rollouts: Record<string, unknown>[] }
  for (let o = 0; o < owners.length; o++) frame.rollouts[owners[o]].payload = new RawPayload(buf.subarray(cuts[2 * o], cuts[2 * o + 1]))
  return frame
}

/** Decodes a logged frame (one well-formed value in `format`): MessagePack with its payloads as `RawPayload`, or JSON (frames logged before payload passthrough). */
export function decodeLoggedFrame(bytes: Uint8Array, format: WireFormat): unknown {
  return format === 'msgpack' ? decodeRolloutsFrame(bytes) : JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8'))
}
