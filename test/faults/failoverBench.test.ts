/**
 * The failover bench (src/apps/bench/failover.ts, part of `npm run bench -- --cluster`) at small
 * size: three node processes on a NATS server, the sequencer's node SIGKILLed twice; each kill
 * is timed to the next new step at the trainer, within issue 11's 10 s, and the line the
 * bench prints names what it measured.
 */
import t from 'tap'
import { formatFailover } from '../../src/apps/bench/cluster.js'
import { benchFailover } from '../../src/apps/bench/failover.js'
import { natsMissing } from '../support/natsServers.js'
import { requireBuild } from './support.js'

t.test('two sequencer kills, each timed to the next new step at the trainer', { skip: natsMissing || requireBuild(), timeout: 180_000 }, async (t) => {
  const lines: string[] = []
  const report = await benchFailover({ kills: 2, leaseMs: 1500, log: (line) => lines.push(line) })
  t.equal(report.failoverMs.length, 2)
  t.equal(report.restartMs.length, 2)
  for (const ms of report.failoverMs) t.ok(ms > 0 && ms <= 10_000, `failover in ${ms.toFixed(0)} ms: within 10 s`)
  t.equal(report.max, Math.max(...report.failoverMs))
  t.match(lines, [/^failover 1\/2: SIGKILL node n\d \(the sequencer\) at step \d+ → step \d+ at the trainer in \d+ ms$/, /^failover 2\/2: /])
  t.match(
    formatFailover(report),
    /2 kills, 3 nodes on a 1-server NATS, a lease of 1500 ms:\n {2}p50 \d+ ms, max \d+ ms \(each: \d+, \d+\); a killed node restarts and listens in \d+–\d+ ms/,
  )
  t.comment(formatFailover(report))
})
