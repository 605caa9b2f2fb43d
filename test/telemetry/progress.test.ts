import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { PassThrough, Readable } from 'node:stream'
import t from 'tap'
import { run } from '../../src/apps/cli.js'
import { createProgress, fixed, FORCED_REDRAW_MS, formatProgress, lambdaText, percent, PROGRESS_REDRAW_MS, replayProgress } from '../../src/apps/progress.js'
import { SERVE_PROGRESS_MS, serveProgress } from '../../src/apps/serve.js'
import type { EngineStats } from '../../src/state/durableEngine.js'
import type { BatchFrame } from '../../streams/telemetry/frames.js'
import { baseConfig, prompts, tempDir } from '../serve/support.js'
import { VirtualClock } from '../support/virtualTime.js'

/** A stream that says it is a terminal: what was written, and the lines drawn (the writes that are not terminal controls). */
function terminal(): { stream: PassThrough & { isTTY?: boolean }; text: () => string; lines: () => string[] } {
  const stream = Object.assign(new PassThrough(), { isTTY: true, columns: 200 })
  const writes: string[] = []
  stream.on('data', (c: Buffer) => writes.push(c.toString()))
  return { stream, text: () => writes.join(''), lines: () => writes.filter((w) => !w.startsWith('\x1B')) }
}

/** A stream that is not a terminal, and what was written to it. */
function pipe(): { stream: PassThrough; text: () => string } {
  const stream = new PassThrough()
  let text = ''
  stream.on('data', (c: Buffer) => (text += c.toString()))
  return { stream, text: () => text }
}

t.test('a progress line draws on a terminal only', (t) => {
  const quiet = createProgress({ format: '{value}', total: 3, stream: new PassThrough() })
  t.equal(quiet.active, false)
  quiet.update(1)
  quiet.stop()
  const stderr = createProgress({ format: '{value}', total: 3, scheduler: new VirtualClock() })
  t.equal(stderr.active, process.stderr.isTTY === true, 'stderr by default (a pipe under the test runner)')
  stderr.stop()
  const tty = terminal()
  const bar = createProgress({ format: 'x {value}/{total} {what}', total: 3, stream: tty.stream, payload: { what: 'start' }, scheduler: new VirtualClock() })
  t.equal(bar.active, true)
  t.ok(tty.text().startsWith('\x1B7\x1B[?25l\x1B[?7l'), 'saves the cursor, hides it, no line wrapping')
  bar.update(2, { what: 'going' })
  bar.stop()
  t.same(tty.lines(), ['x 0/3 start', 'x 2/3 going'])
  t.ok(tty.text().endsWith('\x1B[?25h\x1B[?7h\x1B8\n'), 'and gives them back, leaving the last line')
  t.equal(lambdaText({}), '–')
  t.equal(lambdaText({ a: 0.5, b: 1 }, 2), 'a 0.50 b 1.00')
  t.same([fixed(0.12345), fixed(2, 0), fixed(NaN)], ['0.123', '2', '–'])
  t.same([percent(0.1234), percent(Infinity)], ['12.3%', '–'])
  t.end()
})

t.test('the text: a 40-character bar, the percentage, value, total and payload; unknown placeholders stay', (t) => {
  t.equal(
    formatProgress('[{bar}] {percentage}% {value}/{total} {what} {nothing}', 1, 4, { what: 'w' }),
    `[${'='.repeat(10)}${'-'.repeat(30)}] 25% 1/4 w {nothing}`,
  )
  t.equal(formatProgress('{bar} {percentage}%', 9, 4, {}), `${'='.repeat(40)} 100%`, 'past the total: full')
  t.equal(formatProgress('{bar} {percentage}%', -1, 4, {}), `${'-'.repeat(40)} 0%`)
  t.equal(formatProgress('{percentage}%', 0, 0, {}), '100%', 'nothing to do is done')
  t.equal(formatProgress('{constructor} {toString}', 0, 1, {}), '{constructor} {toString}', 'only the fields themselves')
  t.end()
})

t.test('on a terminal the line is redrawn on the scheduler: every 200 ms when it changed, at once after a pause', (t) => {
  const clock = new VirtualClock()
  const tty = terminal()
  const bar = createProgress({ format: 'n {value} {percentage}%', total: 4, stream: tty.stream, scheduler: clock })
  bar.update(1)
  clock.advance(PROGRESS_REDRAW_MS - 1)
  t.same(tty.lines(), ['n 0 0%'], 'an update waits for the next redraw')
  clock.advance(1)
  t.same(tty.lines(), ['n 0 0%', 'n 1 25%'])
  clock.advance(3 * PROGRESS_REDRAW_MS)
  t.same(tty.lines(), ['n 0 0%', 'n 1 25%'], 'an unchanged line is not drawn again')
  bar.update(2)
  t.same(tty.lines(), ['n 0 0%', 'n 1 25%', 'n 2 50%'], 'more than two periods since the last draw: drawn at once')
  bar.update(3)
  t.equal(tty.lines().length, 3)
  bar.stop()
  t.same(tty.lines(), ['n 0 0%', 'n 1 25%', 'n 2 50%', 'n 3 75%'], 'stop draws the last figures')
  bar.update(4)
  bar.stop()
  clock.advance(10 * PROGRESS_REDRAW_MS)
  t.equal(tty.lines().length, 4, 'nothing after stop')
  t.end()
})

t.test('forced off a terminal: a line per redraw, every 2 s', (t) => {
  const clock = new VirtualClock()
  const out = pipe()
  const bar = createProgress({ format: 'f {value}', total: 1, stream: out.stream, force: true, scheduler: clock })
  bar.update(1)
  clock.advance(FORCED_REDRAW_MS - 1)
  t.equal(out.text(), 'f 0\n')
  clock.advance(1)
  t.equal(out.text(), 'f 0\nf 1\n')
  bar.stop()
  t.equal(out.text(), 'f 0\nf 1\nf 1\n', 'stop draws the last figures (no terminal controls)')
  t.end()
})

t.test('the replay progress: a bar by bytes for a file, lines for stdin; throttled on the clock; quiet off a terminal', (t) => {
  const quiet = replayProgress(new PassThrough(), 100, () => 50)
  quiet.update(undefined, { lines: 1, step: 1, lambda: {} })
  quiet.stop()

  const clock = new VirtualClock()
  let draws = 0
  const file = terminal()
  const sized = replayProgress(file.stream, 1000, () => (draws++, 500), { scheduler: clock, everyMs: 100 })
  clock.advance(1000)
  sized.update(undefined, { lines: 2000, step: 10, lambda: { consistency: 0.25 } })
  clock.advance(50)
  sized.update(undefined, { lines: 2100, step: 11, lambda: { consistency: 0.5 } }) // within 100 ms: not drawn
  t.equal(draws, 1, 'at most one redraw per period')
  sized.stop()
  t.equal(draws, 2, 'the last figures are drawn on stop')
  t.match(file.text(), /replay .* 50% \| step 11 \| 2000 rollouts\/s \| λ consistency 0\.500/)

  const stdin = terminal()
  const lines = replayProgress(stdin.stream, undefined, () => 0, { scheduler: clock })
  lines.stop() // nothing seen yet: just ends
  const unsized = replayProgress(stdin.stream, 0, () => 0, { scheduler: clock })
  unsized.update(undefined, { lines: 7, step: 1, lambda: {} })
  unsized.stop()
  t.match(stdin.text(), 'replay | 7 rollouts | step 1 |')
  t.match(stdin.text(), '| λ –')
  t.end()
})

t.test('the serve progress: refreshed every 250 ms of the scheduler with the rates over that clock; quiet off a terminal', (t) => {
  const clock = new VirtualClock()
  let stats: { lambda: Record<string, number> } & Record<string, unknown> = {
    step: 0,
    lambda: { consistency: 0 },
    ingest: { ingested: 0 },
    pipeline: { rolloutsInBatches: 0, batches: 0 },
    pendingRollouts: 0,
    outbox: 0,
  }
  const engine = { stats: () => stats as unknown as EngineStats }
  const telemetry = { latest: undefined as BatchFrame | undefined }
  serveProgress(engine, telemetry, new PassThrough(), false, clock).stop()

  const tty = terminal()
  const progress = serveProgress(engine, telemetry, tty.stream, false, clock)
  t.same(tty.lines(), ['serve | step 0 | – rollouts/s in, – in batches | consistency J – λ 0.000 | pending 0, outbox 0'])
  stats = { step: 2, lambda: { consistency: 0.125 }, ingest: { ingested: 20 }, pipeline: { rolloutsInBatches: 16, batches: 2 }, pendingRollouts: 4, outbox: 1 }
  telemetry.latest = { constraints: { consistency: { mean: 0.75 } } } as unknown as BatchFrame
  clock.advance(SERVE_PROGRESS_MS)
  t.equal(tty.lines().length, 1, 'the figures are read; the line shows them at its next redraw')
  clock.advance(2 * PROGRESS_REDRAW_MS - SERVE_PROGRESS_MS)
  t.same(tty.lines().at(-1), 'serve | step 2 | 80 rollouts/s in, 64 in batches | consistency J 0.750 λ 0.125 | pending 4, outbox 1', 'rates over 250 ms')
  stats = { ...stats, lambda: {} }
  progress.stop()
  t.match(tty.lines().at(-1), '| no constraints |')
  const drawn = tty.lines().length
  clock.advance(10 * SERVE_PROGRESS_MS)
  t.equal(tty.lines().length, drawn, 'no refresh after stop')
  t.end()
})

t.test('dualstream replay shows its progress on a terminal, for a file and for stdin', async (t) => {
  const dir = tempDir()
  const config = join(dir, 'config.json')
  writeFileSync(config, JSON.stringify(baseConfig))
  const input = join(dir, 'rollouts.jsonl')
  writeFileSync(
    input,
    `${prompts('r', 40)
      .map((r) => JSON.stringify(r))
      .join('\n')}\n`,
  )
  const replayWith = async (args: string[], stdin = '') => {
    const err = terminal()
    const stdout = new PassThrough()
    stdout.resume()
    const code = await run(['replay', '-c', config, ...args], { stdin: Readable.from([stdin]), stdout, stderr: err.stream })
    return { code, stderr: err.text() }
  }
  const fromFile = await replayWith(['-i', input, '-o', join(dir, 'out.jsonl')])
  t.equal(fromFile.code, 0)
  t.match(fromFile.stderr, /replay .* 100% \| step 20 \| \d+ rollouts\/s \| λ consistency \d\.\d{3}/)
  t.match(fromFile.stderr, 'replay: 80 rollouts read → 20 batches')
  const fromStdin = await replayWith(
    ['-i', '-'],
    prompts('s', 4)
      .map((r) => JSON.stringify(r))
      .join('\n'),
  )
  t.equal(fromStdin.code, 0)
  t.match(fromStdin.stderr, /replay \| 8 rollouts \| step 2 \|/)
  const missing = await replayWith(['-i', join(dir, 'nowhere.jsonl')])
  t.equal(missing.code, 1)
  t.match(missing.stderr, /dualstream replay: ENOENT/)
})
