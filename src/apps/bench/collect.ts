/** Garbage collection on demand for the benches that measure memory. */
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'

/** A full garbage collection (V8's `gc`, exposed for the bench whatever the node flags). */
export function collector(): () => void {
  setFlagsFromString('--expose-gc')
  return runInNewContext('gc') as () => void
}

/**
 * Collects until what is garbage is gone: a full collection, a turn of the event loop (buffers
 * outside the V8 heap are released by callbacks that run after it), and another collection.
 * One collection alone can leave megabytes of a previous bench's buffers to be freed in the
 * middle of the next measurement.
 */
export async function collectFully(gc: () => void = collector()): Promise<void> {
  gc()
  await new Promise((resolve) => setImmediate(resolve))
  gc()
}
