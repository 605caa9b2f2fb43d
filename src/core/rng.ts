/**
 * Seeded pseudo-random numbers for the SpatialGrid task and the policy.
 *
 * Algorithm: xoshiro128** (Blackman & Vigna, 2018) — 128 bits of state, period 2^128 − 1,
 * 32-bit outputs, passes BigCrush; written with Math.imul so it is exact and identical on
 * every JS engine. The 128-bit state is filled from a 32-bit seed with splitmix32
 * (the seeding the xoshiro authors recommend), so nearby seeds give unrelated streams.
 * Not cryptographic.
 */

/** One splitmix32 step: a 32-bit mixing function used for seeding and for deriving seeds. */
export function splitmix32(x: number): number {
  let z = (x + 0x9e3779b9) | 0
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b)
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35)
  return (z ^ (z >>> 16)) >>> 0
}

/**
 * Derive an independent 32-bit seed from a base seed and stream labels, so one user seed can
 * feed several streams (init, training scenes, sampling, evaluation) that never overlap.
 */
export function deriveSeed(seed: number, ...labels: Array<number | string>): number {
  let h = splitmix32(seed >>> 0)
  for (const label of labels) {
    if (typeof label === 'number') {
      h = splitmix32(h ^ (label >>> 0))
    } else {
      for (let i = 0; i < label.length; i++) h = splitmix32(h ^ label.charCodeAt(i))
    }
  }
  return h
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k))
}

export class Rng {
  private readonly s: Uint32Array

  /** @param seed any number; only its low 32 bits are used. */
  constructor(seed: number) {
    this.s = new Uint32Array(4)
    let x = seed >>> 0
    for (let i = 0; i < 4; i++) {
      x = splitmix32(x)
      this.s[i] = x
    }
    // splitmix32 is a bijection of a counter walk, so the state cannot be all zeros in practice;
    // guard anyway because xoshiro would then emit zeros forever.
    /* c8 ignore next */
    if ((this.s[0] | this.s[1] | this.s[2] | this.s[3]) === 0) this.s[0] = 1
  }

  /** Restore a generator from {@link Rng.state}. */
  static fromState(state: ArrayLike<number>): Rng {
    if (state.length !== 4) throw new Error(`Rng.fromState: expected 4 state words, got ${state.length}`)
    const r = new Rng(0)
    for (let i = 0; i < 4; i++) r.s[i] = state[i] >>> 0
    if ((r.s[0] | r.s[1] | r.s[2] | r.s[3]) === 0) throw new Error('Rng.fromState: all-zero state is invalid for xoshiro128**')
    return r
  }

  /** A copy of the 128-bit state (4 unsigned 32-bit words), for checkpoints. */
  state(): number[] {
    return Array.from(this.s)
  }

  /** Next unsigned 32-bit integer. */
  nextU32(): number {
    const s = this.s
    const result = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0
    const t = s[1] << 9
    s[2] ^= s[0]
    s[3] ^= s[1]
    s[1] ^= s[2]
    s[0] ^= s[3]
    s[2] ^= t
    s[3] = rotl(s[3], 11)
    return result
  }

  /** Uniform float in [0, 1) with 32 bits of resolution. */
  next(): number {
    return this.nextU32() / 4294967296
  }

  /** Uniform integer in [0, n), exact (rejection removes the modulo bias). */
  int(n: number): number {
    if (!Number.isInteger(n) || n <= 0 || n > 4294967296) throw new Error(`Rng.int: n must be an integer in [1, 2^32] (got ${n})`)
    const limit = 4294967296 - (4294967296 % n)
    let x = this.nextU32()
    while (x >= limit) x = this.nextU32()
    return x % n
  }

  /**
   * Standard normal deviate (Box–Muller). The second value of the pair is discarded so the
   * generator's whole state is the 4 words of {@link Rng.state} (exact resume from a checkpoint).
   */
  normal(): number {
    const u = 1 - this.next() // in (0, 1], so log(u) is finite
    const v = this.next()
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v)
  }

  /** k distinct integers from [0, n), in random order (partial Fisher–Yates). */
  sample(n: number, k: number): number[] {
    if (!Number.isInteger(k) || k < 0 || k > n) throw new Error(`Rng.sample: need 0 ≤ k ≤ n (got k=${k}, n=${n})`)
    const pool = Array.from({ length: n }, (_, i) => i)
    for (let i = 0; i < k; i++) {
      const j = i + this.int(n - i)
      const t = pool[i]
      pool[i] = pool[j]
      pool[j] = t
    }
    return pool.slice(0, k)
  }
}
