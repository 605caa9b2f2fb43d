/**
 * The real cause of a failed LMDB write, for the line an operator reads. lmdb-js rejects each
 * write of a failed commit with "Commit failed (see commitError for details)" and puts the
 * cause — an error carrying the errno, such as ENOSPC — in a promise at `error.commitError`,
 * which settles only if the write thread reports it; it is awaited for a short while here.
 */
import { statfs } from 'node:fs/promises'
import { constants } from 'node:os'
import { formatBytes, type DiskState } from './diskGuard.js'

/** How long to wait for lmdb-js to report the cause of a failed commit (ms). */
const CAUSE_WAIT_MS = 1000

interface ErrnoLike {
  message?: unknown
  code?: unknown
  errno?: unknown
  commitError?: unknown
}

/** The name of an errno number on this platform (5 → EIO, 28 → ENOSPC). */
export function errnoName(errno: number): string | undefined {
  return Object.entries(constants.errno).find(([, value]) => value === errno)?.[0]
}

function describeError(error: unknown): string {
  if (!(error instanceof Error)) return String(error)
  const { code, errno } = error as ErrnoLike
  // lmdb-js puts the errno number in `code` (5 for EIO); Node's own errors have a name there and the number in `errno`
  const number = typeof errno === 'number' ? Math.abs(errno) : typeof code === 'number' ? code : undefined
  const name = typeof code === 'string' ? code : number === undefined ? undefined : errnoName(number)
  const tags = [name !== undefined && !error.message.includes(name) ? name : undefined, number === undefined ? undefined : `errno ${number}`]
  const extra = tags.filter((tag) => tag !== undefined).join(', ')
  return extra === '' ? error.message : `${error.message} (${extra})`
}

/**
 * "Commit failed …: No space left on device (ENOSPC, errno 28); data folder /data: 0 B free of 24.0 MiB, reserve 4.0 MiB".
 * `causeWaitMs`: how long to wait for `commitError` (tests shorten it).
 */
export async function describeStoreFailure(error: unknown, path: string, disk?: DiskState, causeWaitMs = CAUSE_WAIT_MS): Promise<string> {
  let text = describeError(error)
  const pending = (error as ErrnoLike | undefined)?.commitError
  if (pending instanceof Promise) {
    let timer: NodeJS.Timeout | undefined
    const cause = await Promise.race([
      pending.then(
        () => undefined,
        (reason: unknown) => reason,
      ),
      new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), causeWaitMs))),
    ])
    clearTimeout(timer)
    if (cause !== undefined) text = `${text}: ${describeError(cause)}`
  }
  let space: string
  try {
    const s = await statfs(path)
    space = `${formatBytes(s.bavail * s.bsize)} free of ${formatBytes(s.blocks * s.bsize)}`
  } catch (caught) {
    space = `free space unknown (${describeError(caught)})`
  }
  const reserve = disk === undefined ? '' : `, reserve ${formatBytes(disk.reserve)}`
  return `${text}; data folder ${path}: ${space}${reserve}`
}
