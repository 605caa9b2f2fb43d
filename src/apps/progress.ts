/**
 * A progress line for long runs (training, `serve`, `replay` of big files): a bar with the
 * step, the rate and the key figures, redrawn at most 5 times a second on an interactive
 * terminal, and silent when the stream is not a TTY (logs, CI). The redraws run on an RxJS
 * scheduler (default `asyncScheduler`; its `now()` is the clock), so tests drive them in
 * virtual time. The line looks as cli-progress drew it (`[====----]`-style bar, cursor hidden,
 * no wrapping while it runs); it is drawn here because cli-progress's redraw timer and clock
 * cannot be injected.
 */
import { clearLine, cursorTo } from 'node:readline'
import { asyncScheduler, type SchedulerLike } from 'rxjs'

export interface ProgressOptions {
  /** The line's text: `{bar}`, `{value}`, `{total}`, `{percentage}` and your payload keys. */
  format: string
  total: number
  stream?: NodeJS.WritableStream
  /** Draw even when the stream is not a TTY (a line per redraw; for tests). */
  force?: boolean
  /** The payload keys' first values (else the first line shows the placeholders). */
  payload?: Record<string, string | number>
  /** Clock and timer of the redraws (default `asyncScheduler`). */
  scheduler?: SchedulerLike
}

export interface Progress {
  update(value: number, payload?: Record<string, string | number>): void
  /** Erases nothing: the last line stays as a record of where the run ended. */
  stop(): void
  readonly active: boolean
}

/** How often a progress line is redrawn on a terminal (5 a second), and when forced off one. */
export const PROGRESS_REDRAW_MS = 200
export const FORCED_REDRAW_MS = 2000
const BAR_WIDTH = 40

/** Terminal controls: save/restore the cursor, hide/show it, line wrapping off/on. */
const SAVE_CURSOR = '\x1B7'
const RESTORE_CURSOR = '\x1B8'
const HIDE_CURSOR = '\x1B[?25l'
const SHOW_CURSOR = '\x1B[?25h'
const NO_WRAP = '\x1B[?7l'
const WRAP = '\x1B[?7h'

/** The text of a progress line: the placeholders filled, unknown ones left as they are. */
export function formatProgress(format: string, value: number, total: number, payload: Record<string, string | number>): string {
  const progress = total > 0 ? Math.min(Math.max(value / total, 0), 1) : 1
  const filled = Math.round(progress * BAR_WIDTH)
  const fields: Record<string, string | number> = {
    ...payload,
    bar: '='.repeat(filled) + '-'.repeat(BAR_WIDTH - filled),
    percentage: Math.floor(progress * 100),
    value,
    total,
  }
  return format.replace(/\{(\w+)\}/g, (placeholder, key: string) => (Object.hasOwn(fields, key) ? String(fields[key]) : placeholder))
}

/**
 * Creates a progress line; a no-op when the stream is not interactive. On a terminal it is
 * redrawn in place every `PROGRESS_REDRAW_MS` when its text changed, and at once on an update
 * after a pause; `stop()` draws the last figures and leaves the line.
 *
 * @example
 * const bar = createProgress({ format: 'step {value}/{total} | {rate}/s', total: 100, payload: { rate: '–' } })
 * bar.update(10, { rate: 52 })
 * bar.stop()
 */
export function createProgress(options: ProgressOptions): Progress {
  const stream = (options.stream ?? process.stderr) as NodeJS.WriteStream
  const terminal = stream.isTTY === true
  if (!terminal && options.force !== true) return { update: () => {}, stop: () => {}, active: false }
  const scheduler = options.scheduler ?? asyncScheduler
  const period = terminal ? PROGRESS_REDRAW_MS : FORCED_REDRAW_MS
  const payload = { ...options.payload }
  let value = 0
  let drawn: string | undefined
  let drawnAt = scheduler.now()
  let stopped = false
  const draw = () => {
    const line = formatProgress(options.format, value, options.total, payload)
    if (!terminal) {
      stream.write(`${line}\n`)
      return
    }
    if (line === drawn) return
    cursorTo(stream, 0)
    stream.write(line)
    clearLine(stream, 1)
    drawn = line
    drawnAt = scheduler.now()
  }
  if (terminal) stream.write(`${SAVE_CURSOR}${HIDE_CURSOR}${NO_WRAP}`)
  draw()
  const redraws = scheduler.schedule(function () {
    draw()
    this.schedule(undefined, period)
  }, period)
  return {
    update: (next, more) => {
      if (stopped) return
      value = next
      Object.assign(payload, more)
      // the periodic redraw shows it within `period`; after a pause, show it now
      if (terminal && scheduler.now() - drawnAt > 2 * period) draw()
    },
    stop: () => {
      if (stopped) return
      stopped = true
      redraws.unsubscribe()
      draw()
      if (terminal) stream.write(`${SHOW_CURSOR}${WRAP}${RESTORE_CURSOR}\n`)
    },
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
 * every `everyMs` of the scheduler's clock; a no-op when the stream is not a TTY.
 */
export function replayProgress(
  stream: NodeJS.WritableStream,
  totalBytes: number | undefined,
  bytesRead: () => number,
  options: { force?: boolean; everyMs?: number; scheduler?: SchedulerLike } = {},
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
    scheduler: options.scheduler,
  })
  if (!bar.active) return { update: () => {}, stop: () => {} }
  const scheduler = options.scheduler ?? asyncScheduler
  const now = () => scheduler.now()
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
