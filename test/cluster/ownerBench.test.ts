/**
 * The partition owner bench (src/apps/bench/ownerBench.ts) at a small size against a real
 * nats-server: it prepares the run, times the three scenarios (their entries, rollouts and
 * messages add up), prints them as a table, refuses a single partition, and says so when an
 * owner stops before it is through instead of timing it.
 */
import t from 'tap'
import { connect } from '@nats-io/transport-node'
import { benchOwner, formatOwnerBench } from '../../src/apps/bench/ownerBench.js'
import { runLayout } from '../../src/state/cluster/runLayout.js'
import { natsMissing, startNats } from '../support/natsServers.js'

t.test('benchOwner: one owner, its takeover, the other owners of a node', { skip: natsMissing }, async (t) => {
  const nats = await startNats({ servers: 1 })
  t.teardown(() => nats.stop())
  const nc = await connect({ servers: nats.urls })
  t.teardown(() => nc.close())
  // 80 messages prepared: more than the 64 publishes kept in flight
  const report = await benchOwner({ nc, layout: runLayout('ob1'), entries: 20, frameRollouts: 48, partitions: 3, payloadBytes: 16, groupSize: 4 })
  t.match(report, { frames: 20, frameRollouts: 48, partitions: 3, payloadBytes: 16 })
  t.ok(report.frameBytes > 20 * 48 * 16, 'the frames hold the payloads')
  t.same(
    report.rows.map((r) => [r.owners, r.entries, r.rollouts]),
    [
      [1, 20, 20 * 16],
      [1, 20, 20 * 16],
      [2, 40, 40 * 16],
    ],
  )
  const [scratch, takeover, node] = report.rows
  t.ok(scratch.messages >= 1 && scratch.messages <= 20, 'coalesced messages: at least one, at most one an entry')
  t.equal(takeover.messages, 0, 'the takeover publishes nothing: all was published')
  t.same(
    report.rows.map((r) => [r.framesFetched, r.framesDecoded]),
    [
      [20, 20],
      [20, 20],
      [20, 20],
    ],
  )
  t.ok(node.messages >= 2)
  for (const row of report.rows) {
    t.ok(row.seconds > 0)
    t.equal(row.entriesPerSecond, row.entries / row.seconds)
    t.equal(row.rolloutsPerSecond, row.rollouts / row.seconds)
  }
  const table = formatOwnerBench(report)
  t.match(table, /^20 frames of 48 rollouts \(16-byte payloads, \d+ MB\) over 3 partitions: 20 entries of 16 rollouts per partition\n/)
  t.match(table, /scenario +owners +entries +messages +time +entries\/s +rollouts\/s +frames fetched \/ decoded\n/)
  t.match(
    table,
    /\n2 owners of one node at once, from scratch +2 +40 +\d+ +\d+\.\d\d s +[\d.]+( k)? +[\d.]+( [kM])? +20 \/ 20$/,
    'each frame fetched and decoded once for both owners',
  )

  await t.rejects(benchOwner({ nc, layout: runLayout('ob2'), partitions: 1 }), {
    message: 'benchOwner: partitions must be at least 2 (one owner alone, then the others together), got 1',
  })
  // the defaults (5,000 frames of 1,000 over 8 partitions) with a config that cannot be: refused before anything is prepared
  await t.rejects(benchOwner({ nc, layout: runLayout('ob4'), groupSize: 0 }), /groupSize/)
  // groups published where no stream takes them: the owner fails, and the bench says which
  const layout = runLayout('ob3')
  const nowhere = { ...layout, subjects: { ...layout.subjects, groups: (p: number) => `nowhere.${p}` } }
  const failure = await benchOwner({ nc, layout: nowhere, entries: 2, frameRollouts: 8, partitions: 2, payloadBytes: 8 }).catch(
    (error: unknown) => error as Error,
  )
  t.equal((failure as Error).message, 'benchOwner: the owner of partition 0 stopped before it was through')
  t.equal(((failure as Error).cause as { reason: string }).reason, 'failed')
})
