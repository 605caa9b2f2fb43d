/**
 * A map bounded by the weight of what it holds (bytes, rollouts), least recently used out
 * first: the caches a cluster node reads logged frames and GROUPS messages through. A value
 * heavier than the bound alone is not kept (and evicts nothing).
 *
 * @example
 * const frames = new WeightedLru<number, Uint8Array>(64 * 1024 * 1024, (bytes) => bytes.length)
 * frames.set(7, bytes)
 * frames.get(7) // bytes, now the most recently used
 * await frames.getOrLoad(8, () => fetchFrame(8)) // fetched once, then kept
 */
export class WeightedLru<K, V> {
  private readonly entries = new Map<K, V>()
  private readonly loading = new Map<K, Promise<V>>()
  private weight = 0

  constructor(
    private readonly maxWeight: number,
    private readonly weightOf: (value: V) => number,
  ) {}

  /** The value at `key`, made the most recently used. */
  get(key: K): V | undefined {
    const value = this.entries.get(key)
    if (value !== undefined) {
      this.entries.delete(key)
      this.entries.set(key, value)
    }
    return value
  }

  /**
   * The value at `key`, or what `load()` gives, kept (as `set`). Reads of a key while it loads
   * share the one load; a load that fails is not kept, and the next read tries again.
   */
  getOrLoad(key: K, load: () => Promise<V>): Promise<V> {
    const value = this.get(key)
    if (value !== undefined) return Promise.resolve(value)
    let loading = this.loading.get(key)
    if (loading === undefined) {
      loading = load()
        .then((loaded) => {
          this.set(key, loaded)
          return loaded
        })
        .finally(() => this.loading.delete(key))
      this.loading.set(key, loading)
    }
    return loading
  }

  /** The value at `key`, its place in the order unchanged. */
  peek(key: K): V | undefined {
    return this.entries.get(key)
  }

  has(key: K): boolean {
    return this.entries.has(key)
  }

  /** Keeps `value` at `key` (in place of what was there) if it is not heavier than the bound, letting the least recently used go to make room. */
  set(key: K, value: V): void {
    const held = this.entries.get(key)
    if (held !== undefined) {
      this.entries.delete(key)
      this.weight -= this.weightOf(held)
    }
    const weight = this.weightOf(value)
    if (weight > this.maxWeight) return
    this.entries.set(key, value)
    this.weight += weight
    for (const [oldest, kept] of this.entries) {
      if (this.weight <= this.maxWeight) break
      this.entries.delete(oldest)
      this.weight -= this.weightOf(kept)
    }
  }
}
