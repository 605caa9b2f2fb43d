/**
 * The frame cache against a real nats-server: frames come from the ROLLOUTS stream by
 * sequence, are kept up to a byte budget (least recently used out first), a frame larger
 * than the budget is returned but not kept, concurrent reads of one frame make one request,
 * a sequence with no message is an error naming it, and `put` keeps a frame without a fetch.
 */
import t from 'tap'
import { jetstream, jetstreamManager, type JetStreamManager } from '@nats-io/jetstream'
import { connect } from '@nats-io/transport-node'
import { FrameCache } from '../../src/state/cluster/frameCache.js'
import { runLayout } from '../../src/state/cluster/runLayout.js'
import { createRunStreams } from '../../src/state/cluster/runStreams.js'
import { natsMissing, startNats } from '../support/natsServers.js'

const bytesOf = (length: number, fill: number) => new Uint8Array(length).fill(fill)

t.test('frames by stream sequence, cached by bytes', { skip: natsMissing }, async (t) => {
  const nats = await startNats({ servers: 1 })
  t.teardown(() => nats.stop())
  const nc = await connect({ servers: nats.urls })
  t.teardown(() => nc.close())
  const layout = runLayout('cache')
  const jsm: JetStreamManager = await jetstreamManager(nc)
  await createRunStreams(jsm, layout, 1)
  const js = jetstream(nc)
  // seqs 1..4: 100, 100, 100 and 300 bytes
  const stored = [bytesOf(100, 1), bytesOf(100, 2), bytesOf(100, 3), bytesOf(300, 4)]
  for (const frame of stored) await js.publish(layout.subjects.frames, frame)

  t.test('LRU eviction by bytes', async (t) => {
    const cache = new FrameCache({ jsm, stream: layout.streams.rollouts, maxBytes: 250 })
    t.same(await cache.get(1), stored[0])
    t.same(await cache.get(2), stored[1])
    t.equal(cache.fetched, 2)
    // a cached read is not fetched again, and makes frame 1 the most recently used
    t.same(await cache.get(1), stored[0])
    t.equal(cache.fetched, 2)
    // 300 bytes > 250: frame 2 (least recently used) goes, frame 1 stays
    t.same(await cache.get(3), stored[2])
    t.equal(cache.fetched, 3)
    t.ok(cache.peek(1), 'frame 1 (recently read) is kept')
    t.equal(cache.peek(2), undefined, 'frame 2 (least recently used) was evicted')
    t.ok(cache.peek(3))
    await cache.get(2)
    t.equal(cache.fetched, 4, 'an evicted frame is fetched again')
  })

  t.test('a frame larger than the cache is returned but not kept', async (t) => {
    const cache = new FrameCache({ jsm, stream: layout.streams.rollouts, maxBytes: 250 })
    await cache.get(1)
    t.same(await cache.get(4), stored[3])
    t.equal(cache.peek(4), undefined)
    t.ok(cache.peek(1), 'and it evicted nothing to make room')
    await cache.get(4)
    t.equal(cache.fetched, 3, 'so each read fetches it')
    cache.put(4, stored[3])
    t.equal(cache.peek(4), undefined, 'put does not keep it either')
  })

  t.test('concurrent reads of one frame share one fetch', async (t) => {
    const cache = new FrameCache({ jsm, stream: layout.streams.rollouts })
    const reads = await Promise.all([cache.get(3), cache.get(3), cache.get(3)])
    t.equal(cache.fetched, 1)
    for (const frame of reads) t.same(frame, stored[2])
    t.equal(reads[0], reads[1], 'the same bytes')
  })

  t.test('a sequence with no message rejects naming it; a later read tries again', async (t) => {
    const cache = new FrameCache({ jsm, stream: layout.streams.rollouts })
    await t.rejects(cache.get(99), /frame 99: stream DS_cache_ROLLOUTS has no message 99/)
    await t.rejects(cache.get(99), /99/, 'a failed fetch is not remembered as in flight')
    t.equal(cache.fetched, 0)
  })

  t.test('put keeps a frame this node stored: no fetch; a second put of it is a no-op', async (t) => {
    const cache = new FrameCache({ jsm, stream: layout.streams.rollouts, maxBytes: 250 })
    const mine = bytesOf(100, 9)
    cache.put(2, mine)
    t.equal(await cache.get(2), mine)
    t.equal(cache.fetched, 0)
    cache.put(2, bytesOf(100, 8))
    t.equal(cache.peek(2), mine, 'the first stays')
    // the byte count was not doubled by the second put: two more frames of 100 still fit with… one eviction
    cache.put(1, stored[0])
    t.ok(cache.peek(2) && cache.peek(1))
    cache.put(3, stored[2])
    t.equal(cache.peek(2), undefined, '300 > 250: the oldest goes')
    t.ok(cache.peek(1) && cache.peek(3))
  })
})
