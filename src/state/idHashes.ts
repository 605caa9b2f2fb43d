/**
 * The in-memory side of the engine's id index: rollout ids hashed to 64 bits with a per-store
 * seed, kept in one open-addressing table. A new hash proves an id new; a known hash only
 * says "maybe seen", and the store confirms it against the log (so a collision never drops a
 * rollout). One typed array holds the table: about 12–23 bytes per id, nothing for the
 * garbage collector to trace, no B-tree write per id.
 */

/** Hashes an id to two 32-bit lanes (`hi`, `lo`), written into the hasher (no allocation per id). */
export class IdHasher {
  hi = 0
  lo = 0

  constructor(
    private readonly seedHi: number,
    private readonly seedLo: number,
  ) {}

  /**
   * Murmur3-style rounds in one lane and xxHash32-style rounds in the other, over the id's
   * UTF-16 code units two at a time (lossless: a code unit is 16 bits), each finished with
   * murmur3's avalanche.
   */
  hash(id: string): void {
    let a = this.seedHi | 0
    let b = this.seedLo | 0
    const n = id.length
    for (let i = 0; i < n; i += 2) {
      const word = id.charCodeAt(i) | ((i + 1 < n ? id.charCodeAt(i + 1) : 0) << 16)
      let k = Math.imul(word, 0xcc9e2d51)
      k = Math.imul((k << 15) | (k >>> 17), 0x1b873593)
      a ^= k
      a = (Math.imul((a << 13) | (a >>> 19), 5) + 0xe6546b64) | 0
      b = (b + Math.imul(word, 0x85ebca77)) | 0
      b = Math.imul((b << 13) | (b >>> 19), 0x9e3779b1)
    }
    this.hi = avalanche(a ^ n)
    this.lo = avalanche(b ^ n)
  }
}

function avalanche(h: number): number {
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  return (h ^ (h >>> 16)) >>> 0
}

const MAX_LOAD = 0.7

/** A set of 64-bit hashes (open addressing, linear probing); (0, 0) marks an empty slot. */
export class IdHashTable {
  // [hi, lo] per slot
  private slots: Uint32Array
  private mask: number
  private count = 0

  constructor(capacity = 1 << 20) {
    let slots = 16
    while (slots < capacity) slots *= 2
    this.slots = new Uint32Array(2 * slots)
    this.mask = slots - 1
  }

  /** Hashes held. */
  get size(): number {
    return this.count
  }

  /** Memory held by the table (bytes). */
  get bytes(): number {
    return this.slots.byteLength
  }

  /** Adds a hash; false when it was already there. */
  add(hi: number, lo: number): boolean {
    // the empty-slot marker is a hash like any other: fold it onto a neighbour
    if (hi === 0 && lo === 0) lo = 1
    const slots = this.slots
    let slot = hi & this.mask
    for (;;) {
      const at = 2 * slot
      const storedHi = slots[at]
      const storedLo = slots[at + 1]
      if (storedHi === 0 && storedLo === 0) break
      if (storedHi === hi && storedLo === lo) return false
      slot = (slot + 1) & this.mask
    }
    slots[2 * slot] = hi
    slots[2 * slot + 1] = lo
    if (++this.count > MAX_LOAD * (this.mask + 1)) this.grow()
    return true
  }

  private grow(): void {
    const old = this.slots
    this.slots = new Uint32Array(2 * old.length)
    this.mask = old.length - 1
    this.count = 0
    for (let at = 0; at < old.length; at += 2) if (old[at] !== 0 || old[at + 1] !== 0) this.add(old[at], old[at + 1])
  }
}

/** The hashes of an entry's rollouts, in seq order, as stored beside the log: 8 bytes per id (hi, lo; little-endian). */
export function packHashes(hashes: readonly number[]): Buffer {
  const bytes = Buffer.allocUnsafe(4 * hashes.length)
  for (let i = 0; i < hashes.length; i++) bytes.writeUInt32LE(hashes[i], 4 * i)
  return bytes
}

/** A stored blob of hashes (the layout of `packHashes`), read in place. */
export class StoredHashes {
  /** How many ids the blob holds. */
  readonly count: number
  private readonly view: DataView

  constructor(bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    this.count = bytes.byteLength >>> 3
  }

  hi(index: number): number {
    return this.view.getUint32(8 * index, true)
  }

  lo(index: number): number {
    return this.view.getUint32(8 * index + 4, true)
  }
}

/** Calls `each(index, hi, lo)` for every hash of a stored blob. */
export function forEachHash(bytes: Uint8Array, each: (index: number, hi: number, lo: number) => void): void {
  const hashes = new StoredHashes(bytes)
  for (let index = 0; index < hashes.count; index++) each(index, hashes.hi(index), hashes.lo(index))
}
