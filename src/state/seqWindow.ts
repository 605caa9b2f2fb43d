/**
 * The seqs of the rollouts inside the pipeline. Seqs arrive in increasing order and leave
 * in any order; what a restart needs is the lowest one still inside. A sliding window of
 * flags does that with O(1) add and remove and an amortised O(1) lowest, without a Map
 * entry per rollout.
 */
export class SeqWindow {
  private flags = new Uint8Array(4096)
  // seq of flags[0]; no seq below `head` is inside; `end` is one past the highest seq added
  private base = 0
  private head = 0
  private end = 0
  /** How many seqs are inside. */
  size = 0

  /** Adds a seq, higher than every seq added before. */
  add(seq: number): void {
    if (this.end === 0 && this.size === 0) this.base = this.head = seq
    if (seq - this.base >= this.flags.length) this.makeRoom(seq)
    this.flags[seq - this.base] = 1
    this.end = seq + 1
    this.size++
  }

  /** Removes a seq; one that is not inside is ignored. */
  remove(seq: number): void {
    const at = seq - this.base
    if (at < 0 || at >= this.flags.length || this.flags[at] === 0) return
    this.flags[at] = 0
    this.size--
  }

  /** The lowest seq inside, or `fallback` when none is. */
  lowest(fallback: number): number {
    while (this.head < this.end && this.flags[this.head - this.base] === 0) this.head++
    return this.head < this.end ? this.head : fallback
  }

  private makeRoom(seq: number): void {
    // drop the flags below the lowest seq inside, then grow if that is not enough
    const lowest = this.lowest(this.end)
    const shift = lowest - this.base
    this.flags.copyWithin(0, shift, this.end - this.base)
    this.flags.fill(0, this.end - lowest)
    this.base = lowest
    let length = this.flags.length
    while (seq - this.base >= length) length *= 2
    if (length > this.flags.length) {
      const grown = new Uint8Array(length)
      grown.set(this.flags)
      this.flags = grown
    }
  }
}
