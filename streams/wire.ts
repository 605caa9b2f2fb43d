/**
 * The wire format of the WebSocket endpoints (DESIGN §2, §6): MessagePack with plain maps
 * (msgpackr, `useRecords: false`, so any MessagePack implementation can talk to it) in
 * binary frames, JSON in text frames. Decoding is defensive: a frame is walked byte by byte
 * before msgpackr sees it (nesting depth, declared lengths against the bytes present,
 * extension types), so hostile input costs no more than its size and always ends in a
 * reason, never in an exception.
 */
import { isUtf8 } from 'node:buffer'
import { describe } from '../src/core/describe.js'
import { wirePackr as packr, type WireFormat } from '../src/state/codec.js'
import { decodeRolloutsFrame } from '../src/state/rawPayload.js'

export type { WireFormat }

/** Why a frame was refused as a whole (the `code` of an error frame). */
export type FrameErrorCode =
  'too-large' | 'decode' | 'bad-frame' | 'unknown-type' | 'too-many-rollouts' | 'bad-ack' | 'engine' | 'disk-full' | 'unavailable' | 'protocol' | 'bad-rank'

export interface WireLimits {
  /** Largest frame answered with an error rather than dropped (bytes). */
  maxFrameBytes: number
  /** Deepest nesting of maps and arrays accepted (the frame itself is depth 1). */
  maxDepth: number
}

export const DEFAULT_WIRE_LIMITS: WireLimits = { maxFrameBytes: 16 * 1024 * 1024, maxDepth: 32 }

/** An incoming frame: a map with a string `type`. */
export type Frame = Record<string, unknown> & { type: string }

export type Decoded = { ok: true; frame: Frame } | { ok: false; code: FrameErrorCode; reason: string }

/** MessagePack timestamp: the one extension type accepted (msgpackr encodes a Date with it). */
const TIMESTAMP_EXT = -1

/**
 * Walks one MessagePack value without building it. Returns a reason when the bytes are not
 * exactly one well-formed value, nest deeper than `maxDepth`, declare more elements or bytes
 * than follow, or use an extension type other than the timestamp; undefined when fine.
 */
export function checkMsgpack(buf: Uint8Array, maxDepth: number): string | undefined {
  const end = buf.length
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength)
  // remaining element counts of the open containers (the outermost "container" is the single top value)
  const open: number[] = [1]
  let pos = 0
  const need = (n: number): string | undefined => (pos + n > end ? `truncated at byte ${pos}: ${n} more bytes expected, ${end - pos} present` : undefined)
  while (open.length > 0) {
    const top = open.length - 1
    if (open[top] === 0) {
      open.pop()
      continue
    }
    open[top]--
    if (pos >= end) return `truncated at byte ${pos}: a value was expected`
    const at = pos
    const byte = buf[pos++]
    let skip = 0
    let items = -1
    let ext: number | undefined
    // a map's declared entries (each a key and a value: twice as many elements)
    let entries = -1
    if (byte <= 0x7f || byte >= 0xe0 || (byte >= 0xc2 && byte <= 0xc3) || byte === 0xc0) {
      // fixint, negative fixint, bool, nil
    } else if (byte >= 0xa0 && byte <= 0xbf) skip = byte & 0x1f
    else if (byte >= 0x90 && byte <= 0x9f) items = byte & 0x0f
    else if (byte >= 0x80 && byte <= 0x8f) {
      entries = byte & 0x0f
      items = entries * 2
    } else {
      let problem: string | undefined
      switch (byte) {
        case 0xc4: // bin 8, str 8
        case 0xd9:
          problem = need(1)
          if (problem === undefined) skip = buf[pos++]
          break
        case 0xc5: // bin 16, str 16
        case 0xda:
          problem = need(2)
          if (problem === undefined) {
            skip = view.getUint16(pos)
            pos += 2
          }
          break
        case 0xc6: // bin 32, str 32
        case 0xdb:
          problem = need(4)
          if (problem === undefined) {
            skip = view.getUint32(pos)
            pos += 4
          }
          break
        case 0xc7: // ext 8 / 16 / 32: length, then type
        case 0xc8:
        case 0xc9: {
          const width = byte === 0xc7 ? 1 : byte === 0xc8 ? 2 : 4
          problem = need(width + 1)
          if (problem === undefined) {
            skip = width === 1 ? buf[pos] : width === 2 ? view.getUint16(pos) : view.getUint32(pos)
            ext = view.getInt8(pos + width)
            pos += width + 1
          }
          break
        }
        case 0xca: // float 32 / 64, uint 8..64, int 8..64
        case 0xcb:
        case 0xcc:
        case 0xcd:
        case 0xce:
        case 0xcf:
        case 0xd0:
        case 0xd1:
        case 0xd2:
        case 0xd3:
          skip = byte === 0xca ? 4 : byte === 0xcb ? 8 : 1 << (byte & 0x03)
          break
        case 0xd4: // fixext 1..16
        case 0xd5:
        case 0xd6:
        case 0xd7:
        case 0xd8:
          problem = need(1)
          if (problem === undefined) {
            ext = view.getInt8(pos++)
            skip = 1 << (byte - 0xd4)
          }
          break
        case 0xdc: // array 16 / 32, map 16 / 32
        case 0xdd:
        case 0xde:
        case 0xdf: {
          const width = byte === 0xdc || byte === 0xde ? 2 : 4
          problem = need(width)
          if (problem === undefined) {
            const n = width === 2 ? view.getUint16(pos) : view.getUint32(pos)
            pos += width
            if (byte >= 0xde) entries = n
            items = byte >= 0xde ? n * 2 : n
          }
          break
        }
        default:
          return `byte ${at}: 0xc1 is not a MessagePack type`
      }
      if (problem !== undefined) return problem
    }
    if (ext !== undefined && ext !== TIMESTAMP_EXT) return `byte ${at}: MessagePack extension type ${ext} is not accepted (plain maps, arrays and scalars only)`
    if (items >= 0) {
      // every element takes at least one byte: a length beyond what follows is a lie
      if (items > end - pos) {
        const declared = entries >= 0 ? `a map of ${entries} entries (${items} keys and values)` : `${items} elements`
        return `byte ${at}: declares ${declared} but only ${end - pos} bytes follow`
      }
      if (open.length > maxDepth) return `byte ${at}: nested deeper than ${maxDepth} levels`
      if (items > 0) open.push(items)
    } else if (skip > 0) {
      const problem = need(skip)
      if (problem !== undefined) return problem
      pos += skip
    }
  }
  return pos === end ? undefined : `${end - pos} bytes after the end of the value (at byte ${pos})`
}

/** The nesting depth of JSON text beyond `maxDepth`, found without parsing; undefined when within. */
export function checkJsonDepth(text: string, maxDepth: number): string | undefined {
  let depth = 0
  let inString = false
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (inString) {
      if (c === 0x5c)
        i++ // backslash: skip the escaped character
      else if (c === 0x22) inString = false
    } else if (c === 0x22) inString = true
    else if (c === 0x5b || c === 0x7b) {
      if (++depth > maxDepth) return `character ${i}: nested deeper than ${maxDepth} levels`
    } else if (c === 0x5d || c === 0x7d) depth--
  }
  return undefined
}

const isMap = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null && !Array.isArray(value) && !ArrayBuffer.isView(value) && !(value instanceof Date)

/** Decodes one incoming frame (binary = MessagePack, text = JSON); never throws. */
export function decodeFrame(data: Buffer, isBinary: boolean, limits: WireLimits = DEFAULT_WIRE_LIMITS): Decoded {
  if (data.length > limits.maxFrameBytes)
    return { ok: false, code: 'too-large', reason: `frame of ${data.length} bytes exceeds the limit of ${limits.maxFrameBytes} bytes` }
  let value: unknown
  if (isBinary) {
    const problem = checkMsgpack(data, limits.maxDepth)
    if (problem !== undefined) return { ok: false, code: 'decode', reason: `not valid MessagePack: ${problem}` }
    try {
      // a rollouts frame's payloads stay the producer's bytes (never decoded; see rawPayload.ts)
      value = decodeRolloutsFrame(data)
    } catch (error) {
      return { ok: false, code: 'decode', reason: `not valid MessagePack: ${(error as Error).message}` }
    }
  } else {
    if (!isUtf8(data)) return { ok: false, code: 'decode', reason: 'text frame is not valid UTF-8' }
    const text = data.toString('utf8')
    const problem = checkJsonDepth(text, limits.maxDepth)
    if (problem !== undefined) return { ok: false, code: 'decode', reason: `not valid JSON: ${problem}` }
    try {
      value = JSON.parse(text)
    } catch (error) {
      return { ok: false, code: 'decode', reason: `not valid JSON: ${(error as Error).message}` }
    }
  }
  if (!isMap(value)) return { ok: false, code: 'bad-frame', reason: `a frame must be a map with a string "type", got ${describeValue(value)}` }
  if (typeof value.type !== 'string') return { ok: false, code: 'bad-frame', reason: `type: must be a string, got ${describeValue(value.type)}` }
  return { ok: true, frame: value as Frame }
}

/** A short description of any decoded value, for error messages (MessagePack types by name). */
export const describeValue: (value: unknown) => string = describe

/** Encodes an outgoing frame in a connection's format. */
export function encodeFrame(frame: object, format: WireFormat): Buffer | string {
  return format === 'json' ? JSON.stringify(frame) : packr.pack(frame)
}

/** An error frame: what was wrong, and where when known. */
export interface ErrorFrame {
  type: 'error'
  code: FrameErrorCode
  reason: string
}

export const errorFrame = (code: FrameErrorCode, reason: string): ErrorFrame => ({ type: 'error', code, reason })
