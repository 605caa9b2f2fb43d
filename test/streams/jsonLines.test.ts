import { PassThrough, Readable, Writable } from 'node:stream'
import { lastValueFrom, toArray } from 'rxjs'
import t from 'tap'
import { JsonLinesWriter, readJsonLines } from '../../streams/jsonLines.js'

t.test('reads JSON lines, skipping blanks and reporting unparsable ones with their number', async (t) => {
  const lines = await lastValueFrom(readJsonLines(Readable.from(['{"a":1}\r\n\n  \n[2', ']\nnope\n'])).pipe(toArray()))
  t.same(lines, [
    { lineNumber: 1, value: { a: 1 } },
    { lineNumber: 4, value: [2] },
    { lineNumber: 5, error: lines[2].error },
  ])
  t.match(lines[2].error, /^not valid JSON \(/)
})

t.test('unsubscribing closes the reader', (t) => {
  const input = new PassThrough()
  const subscription = readJsonLines(input).subscribe()
  subscription.unsubscribe()
  t.equal(input.listenerCount('data'), 0)
  t.end()
})

t.test('the writer pauses its source while the destination is full and resumes on drain', async (t) => {
  const written: string[] = []
  let release: (() => void) | undefined
  const slow = new Writable({
    highWaterMark: 8,
    write(chunk: Buffer, _encoding, done) {
      written.push(chunk.toString())
      release = done
    },
  })
  const events: string[] = []
  const writer = new JsonLinesWriter(slow, { pause: () => events.push('pause'), resume: () => events.push('resume') })
  writer.write({ long: 'a value longer than eight bytes' })
  writer.write({ b: 2 })
  t.same(events, ['pause'], 'paused once, not once per write')
  release!()
  await new Promise((resolve) => setImmediate(resolve))
  release!()
  await new Promise((resolve) => setImmediate(resolve))
  t.same(events, ['pause', 'resume'])
  const ended = writer.end()
  release?.()
  await ended
  t.same(written.join(''), '{"long":"a value longer than eight bytes"}\n{"b":2}\n')
  const defaults = new JsonLinesWriter(new PassThrough({ highWaterMark: 1 }))
  defaults.write({ c: 3 })
  t.pass('pausing without a flow control is a no-op')
})

t.test('a destination that fails is reported once; later writes are dropped and end rejects', async (t) => {
  const failing = new Writable({ write: (_chunk, _encoding, done) => done(new Error('EPIPE: broken pipe')) })
  const errors: string[] = []
  const writer = new JsonLinesWriter(failing, { pause: () => {}, resume: () => {}, onError: (e) => errors.push(e.message) })
  writer.write({ a: 1 })
  await new Promise((resolve) => setImmediate(resolve))
  writer.write({ b: 2 })
  t.same(errors, ['EPIPE: broken pipe'])
  await t.rejects(writer.end(), /EPIPE/)
})
