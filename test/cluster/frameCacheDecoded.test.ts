/**
 * The frame cache's decoded frames (src/state/cluster/frameCache.ts `decoded`) against a real
 * nats-server: a frame is fetched and decoded once for every reader (the partition owners of
 * a node), concurrent reads share one decode, the decoded frames are kept up to a number of
 * rollouts (least recently used out first; a frame with more is returned but not kept), a
 * frame this node `put` is decoded without a fetch, and what is not a rollouts frame (or no
 * message at all) is an error naming the frame, not remembered.
 */
import t from 'tap'
import { jetstream, jetstreamManager } from '@nats-io/jetstream'
import { connect } from '@nats-io/transport-node'
import { wirePackr } from '../../src/state/codec.js'
import { FrameCache } from '../../src/state/cluster/frameCache.js'
import { decodePartitionFrame } from '../../src/state/cluster/partitionState.js'
import { runLayout } from '../../src/state/cluster/runLayout.js'
import { createRunStreams } from '../../src/state/cluster/runStreams.js'
import { RawPayload } from '../../src/state/rawPayload.js'
import { natsMissing, startNats } from '../support/natsServers.js'

/** A rollouts frame of `count` items whose ids start with `tag`, each with a small payload. */
const frameOf = (tag: string, count: number) =>
  wirePackr.pack({ type: 'rollouts', rollouts: Array.from({ length: count }, (_, k) => ({ id: `${tag}${k}`, promptId: 'p', rewards: {}, payload: [k] })) })

t.test('decoded frames: once for every reader, bounded by rollouts', { skip: natsMissing }, async (t) => {
  const nats = await startNats({ servers: 1 })
  t.teardown(() => nats.stop())
  const nc = await connect({ servers: nats.urls })
  t.teardown(() => nc.close())
  const layout = runLayout('decoded')
  const jsm = await jetstreamManager(nc)
  await createRunStreams(jsm, layout, 1)
  const js = jetstream(nc)
  // seqs 1..4: frames of 2, 2, 2 and 5 rollouts; seq 5 is not a rollouts frame
  const frames = [frameOf('a', 2), frameOf('b', 2), frameOf('c', 2), frameOf('d', 5)]
  for (const bytes of frames) await js.publish(layout.subjects.frames, bytes)
  await js.publish(layout.subjects.frames, wirePackr.pack({ type: 'credit' }))

  t.test('decoded once, shared by concurrent and later readers; payloads are views of the bytes', async (t) => {
    const cache = new FrameCache({ jsm, stream: layout.streams.rollouts })
    const reads = await Promise.all([cache.decoded(1), cache.decoded(1), cache.decoded(1)])
    t.equal(cache.fetched, 1)
    t.equal(cache.decodes, 1)
    t.equal(reads[0], reads[1], 'the same decoded frame')
    t.equal(reads[0], reads[2])
    t.equal(await cache.decoded(1), reads[0], 'a later read: the cached one')
    t.equal(cache.decodes, 1)
    const [first] = reads[0].items as { id: string; payload: RawPayload }[]
    t.equal(first.id, 'a0')
    t.ok(first.payload instanceof RawPayload)
    t.equal(first.payload.bytes!.buffer, reads[0].bytes.buffer, 'a view of the frame’s bytes')
    t.same(Buffer.from(reads[0].bytes), frames[0])
  })

  t.test('kept up to maxDecodedRollouts, least recently used out first; a bigger frame is returned but not kept', async (t) => {
    const cache = new FrameCache({ jsm, stream: layout.streams.rollouts, maxDecodedRollouts: 4 })
    const one = await cache.decoded(1)
    await cache.decoded(2)
    t.equal(await cache.decoded(1), one, 'frame 1 read again: now the most recently used')
    await cache.decoded(3) // 6 rollouts > 4: frame 2 goes
    t.equal(cache.decodes, 3)
    t.equal(await cache.decoded(1), one, 'frame 1 kept')
    await cache.decoded(3)
    t.equal(cache.decodes, 3)
    await cache.decoded(2)
    t.equal(cache.decodes, 4, 'frame 2 decoded again')
    const big = await cache.decoded(4)
    t.equal(big.items.length, 5)
    t.not(await cache.decoded(4), big, 'frame 4 (5 rollouts) is decoded on every read')
    t.equal(cache.decodes, 6)
    t.equal(cache.fetched, 4, 'its bytes are kept, though')
  })

  t.test('a frame this node put is decoded without a fetch', async (t) => {
    const cache = new FrameCache({ jsm, stream: layout.streams.rollouts })
    const mine = frameOf('m', 3)
    cache.put(2, mine)
    const frame = await cache.decoded(2)
    t.equal(frame.bytes, mine)
    t.same(
      frame.items.map((item) => (item as { id: string }).id),
      ['m0', 'm1', 'm2'],
    )
    t.equal(cache.fetched, 0)
  })

  t.test('a frame this node put decoded (its ingest) is neither fetched nor decoded again', async (t) => {
    const cache = new FrameCache({ jsm, stream: layout.streams.rollouts })
    const mine = decodePartitionFrame(frameOf('n', 2), 'mine')
    cache.putDecoded(3, mine)
    cache.putDecoded(3, decodePartitionFrame(frameOf('x', 2), 'again'))
    t.equal(await cache.decoded(3), mine, 'the frame as put (a second put of the seq changes nothing)')
    t.equal(await cache.get(3), mine.bytes, 'and its bytes')
    t.same([cache.fetched, cache.decodes], [0, 0])
  })

  t.test('no message, or not a rollouts frame: an error naming the frame, and a later read tries again', async (t) => {
    const cache = new FrameCache({ jsm, stream: layout.streams.rollouts })
    await t.rejects(cache.decoded(99), { message: `frame 99: stream ${layout.streams.rollouts} has no message 99 (deleted or purged?)` })
    await t.rejects(cache.decoded(5), /^frame 5: not a rollouts frame \(its rollouts are nothing\)$/)
    await t.rejects(cache.decoded(5), /^frame 5: not a rollouts frame/)
    t.equal(cache.decodes, 0)
    t.equal(cache.fetched, 1, 'the bytes of frame 5 were fetched once (they are cached)')
  })
})
