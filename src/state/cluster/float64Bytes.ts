/**
 * Float64 columns as the cluster's messages carry them: little-endian bytes (so that any reader
 * can take them apart, e.g. `numpy.frombuffer(b, '<f8')`). On a little-endian host (x86-64,
 * ARM64) a column is one copy of its bytes; the per-value path is for a big-endian one.
 */

const F64 = 8

/** Whether this host stores a float64 with its least significant byte first. */
const LITTLE_ENDIAN = new Uint8Array(Float64Array.of(1).buffer)[7] === 0x3f

/**
 * `length` little-endian float64s from `bytes`, copied (the message's buffer is not held).
 *
 * @example
 * float64sOf(new Uint8Array(Float64Array.of(0.5).buffer), 1) // Float64Array [0.5]
 */
export function float64sOf(bytes: Uint8Array | DataView, length: number): Float64Array {
  /* c8 ignore next -- a big-endian host: none here */
  if (!LITTLE_ENDIAN) return readEach(new DataView(bytes.buffer, bytes.byteOffset, length * F64), length)
  const out = new Float64Array(length)
  new Uint8Array(out.buffer).set(new Uint8Array(bytes.buffer, bytes.byteOffset, length * F64))
  return out
}

/** The little-endian bytes of `values` (a copy). */
export function bytesOfFloat64s(values: Float64Array): Uint8Array {
  /* c8 ignore next -- a big-endian host: none here */
  if (!LITTLE_ENDIAN) return writeEach(values)
  return new Uint8Array(values.buffer.slice(values.byteOffset, values.byteOffset + values.byteLength))
}

/* c8 ignore start -- a big-endian host: none here */
function readEach(view: DataView, length: number): Float64Array {
  const out = new Float64Array(length)
  for (let i = 0; i < length; i++) out[i] = view.getFloat64(i * F64, true)
  return out
}

function writeEach(values: Float64Array): Uint8Array {
  const out = new Uint8Array(values.length * F64)
  const view = new DataView(out.buffer)
  for (let i = 0; i < values.length; i++) view.setFloat64(i * F64, values[i], true)
  return out
}
/* c8 ignore stop */
