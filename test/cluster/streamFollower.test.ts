/**
 * StreamFollower (src/state/cluster/streamFollower.ts) against a real nats-server: it reads a
 * subject in order from a sequence, live messages included; it replaces a consumer that keeps
 * it waiting while the stream holds more (the stall the chaos test found after a NATS server
 * was killed), one that ends or fails by itself, and one whose open fails, and the caller
 * still sees every sequence once, in order; it does not replace a consumer that is only idle
 * or whose caller is busy; a deleted stream or a closed connection ends it with the error.
 *
 * The consumers that stall, end or fail are the real ordered consumer wrapped (`open`), and the
 * stall check runs on a virtual clock, so what happens at the stall is exact, not timed.
 */
import t, { type Test } from 'tap'
import { jetstream, jetstreamManager, type JetStreamClient, type JetStreamManager, type JsMsg } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import { connectNats } from '../../src/state/cluster/natsConnect.js'
import { orderedConsumer, StreamFollower, type FollowedConsumer, type StreamFollowerOptions } from '../../src/state/cluster/streamFollower.js'
import { natsMissing, startNats, waitFor } from '../support/natsServers.js'
import { VirtualClock } from '../support/virtualTime.js'

const skip = natsMissing

interface Fixture {
  nc: NatsConnection
  js: JetStreamClient
  jsm: JetStreamManager
  stream: string
  publish(subject: string, text: string): Promise<number>
}

let streams = 0

/** A fresh stream `F<n>` on subjects `f<n>.*` of the server at `url`. */
async function fixture(t: Test, url: string): Promise<Fixture> {
  const nc = await connectNats({ servers: url, name: 'follower test' })
  t.teardown(() => nc.close())
  const js = jetstream(nc)
  const jsm = await jetstreamManager(nc)
  const n = ++streams
  const stream = `F${n}`
  await jsm.streams.add({ name: stream, subjects: [`f${n}.*`] })
  return { nc, js, jsm, stream, publish: async (subject, text) => (await js.publish(`f${n}.${subject}`, text)).seq }
}

/** Follower options on `f`'s stream that tell `told` of each replacement and open consumers with `open`. */
function optionsOn(
  f: Fixture,
  told: string[],
  open: (options: StreamFollowerOptions, from: number) => Promise<FollowedConsumer>,
  more: Partial<StreamFollowerOptions> = {},
): StreamFollowerOptions {
  const options: StreamFollowerOptions = {
    js: f.js,
    jsm: f.jsm,
    stream: f.stream,
    onReplaced: (why) => told.push(why),
    open: (from) => open(options, from),
    ...more,
  }
  return options
}

/** Collects what a follower yields, as `seq:text`, until it ends (or `stopAt` are seen, then closes it). */
function collect(follower: StreamFollower, stopAt = Infinity, onEach?: (message: JsMsg) => Promise<void>) {
  const seen: string[] = []
  const done = (async () => {
    for await (const message of follower) {
      seen.push(`${message.seq}:${message.string()}`)
      await onEach?.(message)
      if (seen.length >= stopAt) await follower.close()
    }
  })()
  return { seen, done }
}

/** A consumer that yields nothing and never ends until closed (what a stalled ordered consumer looks like). */
function silentConsumer(): FollowedConsumer {
  let close!: () => void
  const closed = new Promise<void>((resolve) => (close = resolve))
  return {
    messages: {
      [Symbol.asyncIterator]: () => ({ next: async () => (await closed, { done: true as const, value: undefined }) }),
    },
    close: async () => close(),
  }
}

/** `messages` until `count` are yielded, then the end (a consumer that ended by itself). */
async function* endingAfter(count: number, messages: AsyncIterable<JsMsg>): AsyncGenerator<JsMsg> {
  let yielded = 0
  for await (const message of messages) {
    yield message
    if (++yielded === count) return
  }
}

/** `messages` until `count` are yielded, then an error (a consumer that failed). */
async function* failingAfter(count: number, messages: AsyncIterable<JsMsg>): AsyncGenerator<JsMsg> {
  let yielded = 0
  for await (const message of messages) {
    yield message
    if (++yielded === count) throw new Error('the connection to the consumer broke')
  }
}

t.test('StreamFollower', { skip }, async (t) => {
  const nats = await startNats()
  t.teardown(() => nats.stop())

  t.test('reads one subject in order from a sequence, then live, until closed', async (t) => {
    const f = await fixture(t, nats.url)
    for (let i = 1; i <= 4; i++) {
      await f.publish('a', `a${i}`)
      await f.publish('b', `b${i}`)
    }
    const follower = new StreamFollower({ js: f.js, jsm: f.jsm, stream: f.stream, subject: `f${streams}.a`, from: 3 })
    const { seen, done } = collect(follower, 4)
    await waitFor('the stored messages from seq 3', () => seen.length === 3)
    t.same(seen, ['3:a2', '5:a3', '7:a4'], 'from seq 3, subject a only')
    await f.publish('b', 'b5')
    await f.publish('a', 'a5')
    await done
    t.same(seen, ['3:a2', '5:a3', '7:a4', '10:a5'], 'a live message; closing ends the loop')
    t.equal(follower.position, 11, 'the next sequence it would yield')
    t.equal(follower.replaced, 0)
    await follower.close()
  })

  t.test('a consumer that ends, or keeps it waiting while the stream holds more, is replaced; nothing is lost or repeated', async (t) => {
    const f = await fixture(t, nats.url)
    const clock = new VirtualClock()
    const told: string[] = []
    let opens = 0
    // the first consumer ends after three messages, the second stalls, the third is the real one
    const options = optionsOn(
      f,
      told,
      async (options, from) => {
        opens++
        if (opens === 2) return silentConsumer()
        const real = await orderedConsumer(options, from)
        if (opens > 2) return real
        return { close: real.close, messages: endingAfter(3, real.messages) }
      },
      { stallMs: 1000, scheduler: clock },
    )
    await f.publish('x', 'm1')
    await f.publish('x', 'm2')
    const follower = new StreamFollower(options)
    const { seen, done } = collect(follower, 4)
    await waitFor('m1 and m2', () => seen.length === 2)
    clock.advance(5000)
    await f.jsm.streams.info(f.stream)
    t.same(told, [], 'an idle consumer (nothing more stored) is not replaced, however long it waits')
    await f.publish('x', 'm3')
    await waitFor('the end noticed', () => told.length === 1)
    t.match(told[0], /^the consumer of stream F\d+ ended; reading on from seq 4 with a new one$/, 'an ended consumer is replaced')
    clock.advance(100)
    await waitFor('the silent consumer opened', () => opens === 2)
    await f.publish('x', 'm4')
    clock.advance(999)
    await f.jsm.streams.info(f.stream)
    t.equal(told.length, 1, 'not replaced before stallMs')
    clock.advance(1000)
    await waitFor('the stall noticed', () => told.length === 2)
    t.match(told[1], /stalled: no message for \d+ ms while the stream holds seq 4 or later; reading on from seq 4 with a new one$/)
    await done
    t.same(seen, ['1:m1', '2:m2', '3:m3', '4:m4'], 'every message once, in order')
    t.equal(follower.replaced, 2)
  })

  t.test('a replaced consumer that delivers again what came before is skipped to where the follower was', async (t) => {
    const f = await fixture(t, nats.url)
    for (let i = 1; i <= 3; i++) await f.publish('x', `m${i}`)
    let opens = 0
    const told: string[] = []
    // the first consumer yields one message and fails; the second starts again from seq 1
    const options = optionsOn(f, told, async (options, from) => {
      opens++
      const real = await orderedConsumer(options, opens === 1 ? from : 1)
      if (opens > 1) return real
      return { close: real.close, messages: failingAfter(1, real.messages) }
    })
    const follower = new StreamFollower(options)
    const { seen, done } = collect(follower, 3)
    await done
    t.same(seen, ['1:m1', '2:m2', '3:m3'])
    t.match(told, [/the consumer of stream F\d+ failed \(the connection to the consumer broke\); reading on from seq 2 with a new one/])
  })

  t.test('a caller that takes long over a message is not a stall', async (t) => {
    const f = await fixture(t, nats.url)
    const clock = new VirtualClock()
    await f.publish('x', 'm1')
    await f.publish('x', 'm2')
    const follower = new StreamFollower({ js: f.js, jsm: f.jsm, stream: f.stream, stallMs: 100, scheduler: clock })
    let release!: () => void
    const held = new Promise<void>((resolve) => (release = resolve))
    let handling = false
    const { seen, done } = collect(follower, 2, async () => {
      if (seen.length > 1) return
      handling = true
      await held
    })
    await waitFor('the first message being handled', () => handling)
    // the stall check runs within advance(), and finds the follower not waiting
    clock.advance(10_000)
    release()
    await done
    t.same(seen, ['1:m1', '2:m2'])
    t.equal(follower.replaced, 0, 'the stream held m2 all along, but the follower was not waiting for it')
  })

  t.test('an open that fails is tried again; a deleted stream and a closed connection end it with the error', async (t) => {
    const f = await fixture(t, nats.url)
    await f.publish('x', 'm1')
    const told: string[] = []
    let opens = 0
    const options = optionsOn(f, told, async (options, from) => {
      if (++opens === 1) throw new Error('no responders')
      return orderedConsumer(options, from)
    })
    const follower = new StreamFollower(options)
    const { seen, done } = collect(follower, 1)
    await done
    t.same(seen, ['1:m1'])
    t.match(told, [/^opening a consumer of stream F\d+ from seq 1 failed \(no responders\); trying again$/])

    const gone = new StreamFollower({ js: f.js, jsm: f.jsm, stream: 'NO_SUCH_STREAM' })
    await t.rejects(
      collect(gone).done,
      { message: 'the consumer of stream NO_SUCH_STREAM cannot be opened again: stream not found' },
      'a stream that does not exist',
    )

    const nc = await connectNats({ servers: nats.url, name: 'closing' })
    const js = jetstream(nc)
    const jsm = await jetstreamManager(nc)
    await nc.close()
    await t.rejects(
      collect(new StreamFollower({ js, jsm, stream: f.stream })).done,
      { message: `the consumer of stream ${f.stream} cannot be opened again: closed connection` },
      'a closed connection',
    )
  })

  t.test('closed while it waits to open a consumer again, or before its first message', async (t) => {
    const f = await fixture(t, nats.url)
    const told: string[] = []
    const waiting = new StreamFollower(
      optionsOn(f, told, async () => {
        throw new Error('refused')
      }),
    )
    const { seen, done } = collect(waiting)
    // told just before the pause
    await waitFor('the first open refused', () => told.length === 1)
    await waiting.close()
    await done
    t.same(seen, [], 'ends at once, in the pause between opens')
    await waiting.close()

    let finish!: (consumer: FollowedConsumer) => void
    const late = new StreamFollower({
      js: f.js,
      jsm: f.jsm,
      stream: f.stream,
      open: () => new Promise((resolve) => (finish = resolve)),
    })
    const lateRun = collect(late)
    await waitFor('the open started', () => finish !== undefined)
    const closing = late.close()
    let closedConsumer = false
    finish({ ...silentConsumer(), close: async () => void (closedConsumer = true) })
    await closing
    await lateRun.done
    t.ok(closedConsumer, 'a consumer opened after the close is closed at once')
  })

  t.test('the stall check: a subject with nothing stored yet, a stream that cannot be asked', async (t) => {
    const f = await fixture(t, nats.url)
    const clock = new VirtualClock()
    const quiet = new StreamFollower({
      js: f.js,
      jsm: f.jsm,
      stream: f.stream,
      subject: `f${streams}.none`,
      stallMs: 100,
      scheduler: clock,
      open: async () => silentConsumer(),
    })
    const quietRun = collect(quiet)
    await waitFor('waiting', () => quiet['waitingSince'] !== undefined)
    clock.advance(1000)
    await f.jsm.streams.info(f.stream)
    t.equal(quiet.replaced, 0, 'nothing stored on the subject: not a stall')
    await f.publish('none', 'n1')
    clock.advance(1000)
    await waitFor('the stall noticed', () => quiet.replaced === 1)
    t.pass('a message stored on the subject, none delivered: a stall')
    await quiet.close()
    await quietRun.done

    await f.publish('x', 'm1')
    let asked = 0
    const down = {
      streams: {
        info: async () => {
          asked++
          throw new Error('no responders')
        },
      },
    } as unknown as JetStreamManager
    const blindTold: string[] = []
    const blind = new StreamFollower(optionsOn(f, blindTold, async () => silentConsumer(), { jsm: down, stallMs: 100, scheduler: clock }))
    const blindRun = collect(blind)
    await waitFor('waiting', () => blind['waitingSince'] !== undefined)
    clock.advance(100)
    await waitFor('the stream asked', () => asked === 1)
    t.match(blindTold, [/^the stall check of stream F\d+ could not ask the stream \(no responders\); it asks again$/], 'told once')
    clock.advance(100)
    await waitFor('asked again at the next check', () => asked === 2)
    t.equal(blind.replaced, 0, 'not replaced while it has waited under 3 × stallMs')
    t.equal(blindTold.length, 1, 'and not told again in the same wait')
    // each check's failure comes back before the clock moves on
    await waitFor('replaced blind once 3 × stallMs have passed', async () => {
      clock.advance(50)
      await f.jsm.streams.info(f.stream)
      return blind.replaced === 1
    })
    t.match(
      blindTold[1],
      /^the consumer of stream F\d+ stalled: no message for (3|4)\d\d ms, and the stream could not be asked; reading on from seq 1 with a new one$/,
    )
    await blind.close()
    await blindRun.done
  })

  t.test('closed while an open that then fails is under way', async (t) => {
    const f = await fixture(t, nats.url)
    let fail!: (error: Error) => void
    const follower = new StreamFollower({ js: f.js, jsm: f.jsm, stream: f.stream, open: () => new Promise((_, reject) => (fail = reject)) })
    const run = collect(follower)
    await waitFor('the open started', () => fail !== undefined)
    const closing = follower.close()
    fail(new Error('refused'))
    await closing
    await run.done
    t.same(run.seen, [])
    t.equal(follower.replaced, 0)
  })

  t.test('an open that takes stallMs is given up and tried again; the consumer it opens late is closed', async (t) => {
    const f = await fixture(t, nats.url)
    await f.publish('x', 'm1')
    const clock = new VirtualClock()
    const told: string[] = []
    let finishFirst!: (consumer: FollowedConsumer) => void
    let lateClosed = false
    let opens = 0
    const options = optionsOn(
      f,
      told,
      async (options, from) => {
        if (++opens > 1) return orderedConsumer(options, from)
        return new Promise<FollowedConsumer>((resolve) => (finishFirst = resolve))
      },
      { stallMs: 1000, scheduler: clock },
    )
    const follower = new StreamFollower(options)
    const { seen, done } = collect(follower, 1)
    await waitFor('the first open started', () => finishFirst !== undefined)
    clock.advance(1000)
    await waitFor('given up', () => told.length === 1)
    t.match(told[0], /^opening a consumer of stream F\d+ from seq 1 failed \(no answer within 1000 ms opening it\); trying again$/)
    clock.advance(100)
    await done
    t.same(seen, ['1:m1'], 'read by the second consumer')
    finishFirst({ ...silentConsumer(), close: async () => void (lateClosed = true) })
    await waitFor('the late consumer closed', () => lateClosed)
    t.pass('the consumer the first open gave late is closed')
  })

  t.test('a stall check whose request hangs does not hold back the next ones; its late answer counts for nothing', async (t) => {
    const f = await fixture(t, nats.url)
    const clock = new VirtualClock()
    const answers: { resolve: (info: unknown) => void; reject: (error: Error) => void }[] = []
    const hanging = {
      streams: { info: () => new Promise((resolve, reject) => answers.push({ resolve, reject })) },
    } as unknown as JetStreamManager
    const told: string[] = []
    const follower = new StreamFollower(optionsOn(f, told, async () => silentConsumer(), { jsm: hanging, stallMs: 100, scheduler: clock }))
    const run = collect(follower)
    await waitFor('waiting', () => follower['waitingSince'] !== undefined)
    clock.advance(100)
    t.equal(answers.length, 1, 'the first check asks')
    clock.advance(250)
    t.equal(answers.length, 1, 'no second check while the first is under 3 × stallMs old')
    clock.advance(50)
    t.equal(answers.length, 2, 'a second check once it is')
    answers[0].resolve({ state: { last_seq: 99 } })
    clock.advance(300)
    t.equal(answers.length, 3, 'and a third')
    answers[1].reject(new Error('late'))
    await f.jsm.streams.info(f.stream)
    t.same([follower.replaced, told], [0, []], 'the late answers of the first two checks count for nothing')
    answers[2].resolve({ state: { last_seq: 99 } })
    await waitFor('replaced on the third check’s answer', () => follower.replaced === 1)
    t.match(told, [/stalled: no message for \d+ ms while the stream holds seq 1 or later/])
    await follower.close()
    await run.done
  })
})
