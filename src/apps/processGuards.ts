/**
 * lmdb-js batches the writes of one event-loop turn behind a promise of its own that no caller
 * holds; when a commit fails (ENOSPC, EIO) that promise rejects unhandled, while the same failure
 * reaches the durable engine through the promises it does hold and stops it in good order
 * (healthz, error frames, "stopped", exit 1). As an `unhandledRejection` listener this lets
 * only that rejection through; any other is thrown, ending the process as Node would.
 */
export function letLmdbCommitFailuresThrough(reason: unknown): void {
  if (reason instanceof Error && reason.message === 'Commit failed (see commitError for details)') {
    // the cause rejects a promise of its own too
    const cause = (reason as Error & { commitError?: unknown }).commitError
    if (cause instanceof Promise) cause.catch(() => {})
    return
  }
  throw reason
}
