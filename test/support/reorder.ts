/**
 * Makes a durable engine finish its writes out of order, as LMDB's flushes may: in every
 * pair of consecutive frames, the first frame's write resolves only after the second's
 * (a frame left unpaired is released 200 ms later, so a lone frame is not held forever).
 * `fail` turns given frames (1-based) writes into failures.
 */
import type { DurableEngine, IngestOutcome } from '../../src/state/durableEngine.js'

export function swapPairsOfWrites(engine: DurableEngine, options: { fail?: readonly number[] } = {}): void {
  const original = engine.ingest.bind(engine)
  let calls = 0
  let release: (() => void) | undefined
  engine.ingest = (...args: Parameters<DurableEngine['ingest']>): Promise<IngestOutcome> => {
    const n = ++calls
    const written = original(...args).then((outcome) => {
      if (options.fail?.includes(n)) throw new Error(`ENOSPC: no space left on device (frame ${n}, simulated)`)
      return outcome
    })
    if (n % 2 === 1) {
      // held until the next frame's write is done
      let resolve!: () => void
      const held = new Promise<void>((r) => (resolve = r))
      release = resolve
      const timer = setTimeout(resolve, 200)
      return held.then(() => {
        clearTimeout(timer)
        return written
      })
    }
    const releaseFirst = release
    release = undefined
    return written.finally(() => setImmediate(() => releaseFirst?.()))
  }
}
