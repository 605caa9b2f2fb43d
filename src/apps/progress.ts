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
  /** The payload keys' first values (else the first line shows the placeholders). */
  payload?: Record<string, string | number>
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
  bar.start(options.total, 0, options.payload)
  return {
    update: (value, payload) => bar.update(value, payload),
    stop: () => bar.stop(),
    active: true,
  }
}

/** Fixed-width figures for progress lines. */
export const fixed = (x: number, digits = 3): string => (Number.isFinite(x) ? x.toFixed(digits) : '–')
export const percent = (x: number): string => (Number.isFinite(x) ? `${(100 * x).toFixed(1)}%` : '–')

/** λ of each constraint, short: `consistency 0.125 grounding 0.000` ('–' without constraints). */
export const lambdaText = (lambda: Record<string, number>, digits = 3): string =>
  Object.entries(lambda)
    .map(([channel, value]) => `${channel} ${fixed(value, digits)}`)
    .join(' ') || '–'

/** The replay's running figures, as `replay` reports them after each batch. */
export interface ReplayFigures {
  lines: number
  step: number
  lambda: Record<string, number>
}

/**
 * The progress line of `dualstream replay`: with a known input size (a file), a bar by bytes
 * read; without (stdin), the lines read. Step, rollouts/s and λ either way; refreshed at most
 * every `everyMs`; a no-op when the stream is not a TTY.
 */
export function replayProgress(
  stream: NodeJS.WritableStream,
  totalBytes: number | undefined,
  bytesRead: () => number,
  options: { force?: boolean; everyMs?: number; now?: () => number } = {},
): { update: (batch: unknown, figures: ReplayFigures) => void; stop: () => void } {
  const sized = totalBytes !== undefined && totalBytes > 0
  const bar = createProgress({
    format: sized
      ? 'replay {bar} {percentage}% | step {step} | {rate} rollouts/s | λ {lambda}'
      : 'replay | {lines} rollouts | step {step} | {rate} rollouts/s | λ {lambda}',
    total: sized ? totalBytes : 1,
    stream,
    force: options.force,
    payload: { lines: 0, step: '–', rate: '–', lambda: '–' },
  })
  if (!bar.active) return { update: () => {}, stop: () => {} }
  const now = options.now ?? (() => performance.now())
  const everyMs = options.everyMs ?? 100
  const started = now()
  let last = -Infinity
  let latest: ReplayFigures | undefined
  const draw = (figures: ReplayFigures) => {
    const seconds = Math.max((now() - started) / 1000, 1e-9)
    bar.update(sized ? Math.min(bytesRead(), totalBytes) : 0, {
      lines: figures.lines,
      step: figures.step,
      rate: fixed(figures.lines / seconds, 0),
      lambda: lambdaText(figures.lambda),
    })
  }
  return {
    update: (_batch, figures) => {
      latest = figures
      const t = now()
      if (t - last < everyMs) return
      last = t
      draw(figures)
    },
    stop: () => {
      if (latest !== undefined) draw(latest)
      bar.stop()
    },
  }
}
