/**
 * Waits for `promise` to settle, or for `ms` milliseconds, whichever comes first; resolves to
 * whether it settled in time (never rejects). The timer is a real one on purpose: while it
 * runs it keeps the event loop alive, so a process waiting on a promise that will never
 * settle (a write lmdb-js abandoned after a failed commit) still reaches its next line
 * instead of draining its loop and exiting mid-shutdown.
 *
 * @example
 * if (!(await settleWithin(server.close(), 2000))) log('connections cut off after 2 s')
 */
export async function settleWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined
  const settled = promise.then(
    () => true,
    () => true,
  )
  const timedOut = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), ms)))
  try {
    return await Promise.race([settled, timedOut])
  } finally {
    clearTimeout(timer)
  }
}
