/**
 * Parameters live in TypeScript as named Float32Arrays (row-major), so Adam can update them in
 * place and the ONNX sessions read them as graph inputs on every call — no session rebuilds.
 */

export interface ParamSpec {
  readonly name: string
  readonly shape: readonly number[]
}

export type ParamValues = Record<string, Float32Array>

export function paramSize(spec: ParamSpec): number {
  return spec.shape.reduce((a, b) => a * b, 1)
}

/** Throws naming the first parameter that is missing or has the wrong length. */
export function checkParams(specs: readonly ParamSpec[], values: Record<string, ArrayLike<number> | undefined>, where: string): void {
  for (const s of specs) {
    const v = values[s.name]
    if (v === undefined) throw new Error(`${where}: parameter '${s.name}' is missing`)
    if (v.length !== paramSize(s))
      throw new Error(`${where}: parameter '${s.name}' has ${v.length} values, shape [${s.shape.join(', ')}] needs ${paramSize(s)}`)
  }
}

export function cloneParams(values: ParamValues): ParamValues {
  const out: ParamValues = {}
  for (const [k, v] of Object.entries(values)) out[k] = v.slice()
  return out
}

export function zerosLike(specs: readonly ParamSpec[]): ParamValues {
  const out: ParamValues = {}
  for (const s of specs) out[s.name] = new Float32Array(paramSize(s))
  return out
}

/** Bytes of a Float32Array (a copy, little-endian as in memory) — msgpack/LMDB friendly. */
export function floatsToBytes(a: Float32Array): Uint8Array {
  return new Uint8Array(a.buffer.slice(a.byteOffset, a.byteOffset + a.byteLength))
}

/** Inverse of {@link floatsToBytes}; copies so the result is aligned whatever the source buffer. */
export function bytesToFloats(b: Uint8Array, where: string): Float32Array {
  if (b.byteLength % 4 !== 0) throw new Error(`${where}: ${b.byteLength} bytes is not a whole number of float32 values`)
  const out = new Float32Array(b.byteLength / 4)
  new Uint8Array(out.buffer).set(b)
  return out
}

export function encodeParams(values: ParamValues): Record<string, Uint8Array> {
  const out: Record<string, Uint8Array> = {}
  for (const [k, v] of Object.entries(values)) out[k] = floatsToBytes(v)
  return out
}

export function decodeParams(bytes: Record<string, Uint8Array>, where: string): ParamValues {
  const out: ParamValues = {}
  for (const [k, v] of Object.entries(bytes)) out[k] = bytesToFloats(v, `${where}.${k}`)
  return out
}
