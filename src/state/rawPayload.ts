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

  constructor(bytes: Uint8Array) {
    this.bytes = bytes
    this.length = bytes.length
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

/** A map header for `count` entries. */
function mapHeader(count: number): Uint8Array {
  if (count < 16) return Uint8Array.of(0x80 | count)
  if (count < 65536) return Uint8Array.of(0xde, count >> 8, count & 0xff)
  return Uint8Array.of(0xdf, count >>> 24, (count >> 16) & 0xff, (count >> 8) & 0xff, count & 0xff)
}

/** Concatenates byte ranges into one new buffer. */
function splice(parts: readonly Uint8Array[]): Uint8Array {
  let length = 0
  for (const part of parts) length += part.length
  const out = new Uint8Array(length)
  let at = 0
  for (const part of parts) {
    out.set(part, at)
    at += part.length
  }
  return out
}

/**
 * Decodes one item of a `rollouts` array (the value at `start`, ending at `end`): a map's
 * `payload` entry is left out of the decoding and attached as a `RawPayload` of its bytes;
 * anything else decodes as it is.
 */
function decodeItem(buf: Uint8Array, start: number, end: number): unknown {
  const map = containerAt(buf, start, 'map')
  if (map === undefined) return wireUnpackr.unpack(buf.subarray(start, end))
  // the entries called payload (the last one wins, as in any decoder), each as [key start, value start, value end]
  const cuts: [number, number, number][] = []
  let pos = map.body
  for (let k = 0; k < map.count; k++) {
    const key = pos
    const value = skipValue(buf, key)
    pos = skipValue(buf, value)
    if (isKey(buf, key, 'payload')) cuts.push([key, value, pos])
  }
  if (cuts.length === 0) return wireUnpackr.unpack(buf.subarray(start, end))
  const parts: Uint8Array[] = [mapHeader(map.count - cuts.length)]
  let from = map.body
  for (const [key, , after] of cuts) {
    parts.push(buf.subarray(from, key))
    from = after
  }
  parts.push(buf.subarray(from, end))
  const item = wireUnpackr.unpack(splice(parts)) as Record<string, unknown>
  const [, value, after] = cuts[cuts.length - 1]
  item.payload = new RawPayload(buf.subarray(value, after))
  return item
}

/**
 * Decodes a frame (one well-formed MessagePack value). A map whose `rollouts` is an array gets
 * its items decoded by `decodeItem`, payloads as `RawPayload`; anything else decodes as msgpackr
 * (`wireUnpackr`) would.
 */
export function decodeRolloutsFrame(buf: Uint8Array): unknown {
  const map = containerAt(buf, 0, 'map')
  if (map === undefined) return wireUnpackr.unpack(buf)
  let pos = map.body
  let rollouts: { start: number; end: number; array: { count: number; body: number } } | undefined
  for (let k = 0; k < map.count; k++) {
    const key = pos
    const value = skipValue(buf, key)
    pos = skipValue(buf, value)
    if (!isKey(buf, key, 'rollouts')) continue
    // the last `rollouts` wins, as in any decoder; one that is not an array is left to the caller to refuse
    const array = containerAt(buf, value, 'array')
    rollouts = array === undefined ? undefined : { start: value, end: pos, array }
  }
  if (rollouts === undefined) return wireUnpackr.unpack(buf)
  // the frame without its items (an empty array in their place), then the items one by one
  const frame = wireUnpackr.unpack(splice([buf.subarray(0, rollouts.start), Uint8Array.of(0x90), buf.subarray(rollouts.end)])) as Record<string, unknown>
  const items: unknown[] = new Array(rollouts.array.count)
  let at = rollouts.array.body
  for (let k = 0; k < items.length; k++) {
    const end = skipValue(buf, at)
    items[k] = decodeItem(buf, at, end)
    at = end
  }
  frame.rollouts = items
  return frame
}

/** Decodes a logged frame (one well-formed value in `format`): MessagePack with its payloads as `RawPayload`, or JSON (frames logged before payload passthrough). */
export function decodeLoggedFrame(bytes: Uint8Array, format: WireFormat): unknown {
  return format === 'msgpack' ? decodeRolloutsFrame(bytes) : JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8'))
}
