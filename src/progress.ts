/**
 * A progress line for long runs (training, `serve`, `replay` of big files): a cli-progress
 * bar with the step, the rate and the key figures, redrawn at most `fps` times a second on
 * an interactive terminal, and silent when the stream is not a TTY (logs, CI).
 */
import { SingleBar } from 'cli-progress'

export interface ProgressOptions {
  /** The bar's text; `{bar}`, `{value}`, `{total}`, `{percentage}`, `{eta_formatted}` and your payload keys. */
  format: string
  total: number
  stream?: NodeJS.WritableStream
  /** Draw even when the stream is not a TTY (for tests). */
  force?: boolean
}

export interface Progress {
  update(value: number, payload?: Record<string, string | number>): void
  /** Erases nothing: the last line stays as a record of where the run ended. */
  stop(): void
  readonly active: boolean
}

/** Creates a progress line; a no-op when the stream is not interactive. */
export function createProgress(options: ProgressOptions): Progress {
  const stream = (options.stream ?? process.stderr) as NodeJS.WriteStream
  if (!stream.isTTY && options.force !== true) return { update: () => {}, stop: () => {}, active: false }
  const bar = new SingleBar({ format: options.format, stream, fps: 5, hideCursor: true, noTTYOutput: options.force === true, etaBuffer: 50 })
  bar.start(options.total, 0)
  return {
    update: (value, payload) => bar.update(value, payload),
    stop: () => bar.stop(),
    active: true,
  }
}

/** Fixed-width figures for progress lines. */
export const fixed = (x: number, digits = 3): string => (Number.isFinite(x) ? x.toFixed(digits) : '–')
export const percent = (x: number): string => (Number.isFinite(x) ? `${(100 * x).toFixed(1)}%` : '–')
