import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { PassThrough, Readable } from 'node:stream'
import t from 'tap'
import { run } from '../../src/apps/cli.js'
import { createProgress, lambdaText, replayProgress } from '../../src/apps/progress.js'
import { baseConfig, prompts, tempDir } from '../serve/support.js'

/** A stream that says it is a terminal, and what was written to it. */
function terminal(): { stream: PassThrough & { isTTY?: boolean }; text: () => string } {
  const stream = Object.assign(new PassThrough(), { isTTY: true, columns: 200 })
  let text = ''
  stream.on('data', (c: Buffer) => (text += c.toString()))
  return { stream, text: () => text }
}

t.test('a progress line draws on a terminal only', (t) => {
  const quiet = createProgress({ format: '{value}', total: 3, stream: new PassThrough() })
  t.equal(quiet.active, false)
  quiet.update(1)
  quiet.stop()
  const tty = terminal()
  const bar = createProgress({ format: 'x {value}/{total} {what}', total: 3, stream: tty.stream, payload: { what: 'start' } })
  t.equal(bar.active, true)
  bar.update(2, { what: 'going' })
  bar.stop()
  t.match(tty.text(), 'x 0/3 start')
  t.match(tty.text(), 'x 2/3 going')
  const forced = new PassThrough()
  let text = ''
  forced.on('data', (c: Buffer) => (text += c.toString()))
  const shown = createProgress({ format: 'f {value}', total: 1, stream: forced, force: true })
  shown.update(1)
  shown.stop()
  t.match(text, 'f 1')
  t.equal(lambdaText({}), '–')
  t.equal(lambdaText({ a: 0.5, b: 1 }, 2), 'a 0.50 b 1.00')
  t.end()
})

t.test('the replay progress: a bar by bytes for a file, lines for stdin; throttled; quiet off a terminal', (t) => {
  const quiet = replayProgress(new PassThrough(), 100, () => 50)
  quiet.update(undefined, { lines: 1, step: 1, lambda: {} })
  quiet.stop()

  let now = 0
  let draws = 0
  const file = terminal()
  const sized = replayProgress(file.stream, 1000, () => (draws++, 500), { now: () => now, everyMs: 100 })
  now = 1000
  sized.update(undefined, { lines: 2000, step: 10, lambda: { consistency: 0.25 } })
  now = 1050
  sized.update(undefined, { lines: 2100, step: 11, lambda: { consistency: 0.5 } }) // within 100 ms: not drawn
  t.equal(draws, 1, 'at most one redraw per period')
  now = 1050
  sized.stop()
  t.equal(draws, 2, 'the last figures are drawn on stop')
  t.match(file.text(), /replay .* 50% \| step 11 \| 2000 rollouts\/s \| λ consistency 0\.500/)

  const stdin = terminal()
  const lines = replayProgress(stdin.stream, undefined, () => 0, { now: () => now })
  lines.stop() // nothing seen yet: just ends
  const unsized = replayProgress(stdin.stream, 0, () => 0)
  unsized.update(undefined, { lines: 7, step: 1, lambda: {} })
  unsized.stop()
  t.match(stdin.text(), 'replay | 7 rollouts | step 1 |')
  t.match(stdin.text(), '| λ –')
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
