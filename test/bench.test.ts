import { mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { runBenchmarks } from '../src/apps/bench/run.js'
import { formatRate, median, quantile, throughput } from '../src/apps/bench/measure.js'

t.test('the benchmarks run at small size, print a table and write JSON', async (t) => {
  const json = join(mkdtempSync(join(tmpdir(), 'dualstream-bench-')), 'bench.json')
  const lines: string[] = []
  const report = await runBenchmarks({ rollouts: 2048, runs: 1, warmup: 0, json, log: (l) => lines.push(l) })
  t.same(
    report.results.map((r) => r.name),
    [
      'core math (measure + dual + advantages)',
      'operator chain: fgrpo (groups → batches → λ → advantages)',
      'operator chain with in-memory dedup (Set of every id)',
      'replay end to end (JSONL file → validate → dedup → fgrpo → JSONL)',
      'durable floor: msgpack decode + LMDB log append + flush (no network)',
      'durable: producer process → WS → LMDB log → fgrpo → batches → trainer acks',
    ],
  )
  for (const r of report.results.slice(0, 5)) {
    t.equal(r.units, 2048, `${r.name}: every rollout processed`)
    t.ok(r.median > 0 && Number.isFinite(r.median))
  }
  const durable = report.results[5]
  t.equal(durable.units, 2048, 'the durable path: every rollout of the 16 full batches delivered')
  t.ok(durable.median > 0 && Number.isFinite(durable.median))
  t.match(durable.extra, { 'ack→batch p50 ms': /^\d+\.\d$/, 'p99 ms': /^\d+\.\d$/, 'of floor': /^\d+%$/, frame: 1000 })
  t.match(lines.join('\n'), /benchmark +per run +median +range/)
  t.same(JSON.parse(readFileSync(json, 'utf8')).results.length, 6)
})

t.test('measure helpers', (t) => {
  t.equal(median([3, 1, 2]), 2)
  t.equal(median([4, 1, 2, 3]), 2.5)
  t.equal(quantile([5, 1, 4, 2, 3], 0.5), 3)
  t.equal(quantile([5, 1, 4, 2, 3], 0.99), 5)
  t.equal(quantile([5, 1], 0), 1)
  t.equal(formatRate(5_310_000), '5.31 M/s')
  t.equal(formatRate(812_400), '812.4 k/s')
  t.equal(formatRate(12), '12.0 /s')
  t.end()
})

t.test('throughput runs the warm-up unmeasured', async (t) => {
  let calls = 0
  const result = await throughput('x', 'items', () => ++calls && 10, { runs: 2, warmup: 1 })
  t.equal(calls, 3)
  t.match(result, { name: 'x', unit: 'items', units: 10, runs: 2 })
})
