/** Garbage collection on demand for the benches that measure memory. */
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'

/** A full garbage collection (V8's `gc`, exposed for the bench whatever the node flags). */
export function collector(): () => void {
  setFlagsFromString('--expose-gc')
  return runInNewContext('gc') as () => void
}

/** Heap and buffers in use (ArrayBuffers live outside the V8 heap). */
export function memoryInUse(): number {
  const memory = process.memoryUsage()
  return memory.heapUsed + memory.arrayBuffers
}

/**
 * Collects until what is garbage is gone: full collections with turns of the event loop between
 * them (buffers outside the V8 heap are released by callbacks that run after a collection, some
 * a few turns later), until the memory in use stops falling (by less than 64 KiB a round, at most
 * 20 rounds). One collection alone left megabytes of a previous bench's buffers to be freed in
 * the middle of the next measurement (a negative "retained" figure).
 */
export async function collectFully(gc: () => void = collector()): Promise<void> {
  let last = Infinity
  for (let round = 0; round < 20; round++) {
    gc()
    await new Promise((resolve) => setTimeout(resolve, 5))
    const now = memoryInUse()
    if (last - now < 64 * 1024) return
    last = now
  }
}
