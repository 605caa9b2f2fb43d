/**
 * Whole-run history (issue 15) on `serve`: the hello's `overview` holds the run from step 1,
 * also after a restart on the same data folder; `/history` answers JSON or CSV for any range
 * with the viewer token, exact from the data folder, thinned by min/max to `points`, and says
 * what is wrong with a request; `dualstream export` writes one row per committed step equal to
 * the batch records of `replay --log`.
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { PassThrough } from 'node:stream'
import t from 'tap'
import { parseConfig } from '../../src/core/config.js'
import { serve } from '../../src/apps/serve.js'
import { runCli } from '../support/cli.js'
import type { DurableEngine } from '../../src/state/durableEngine.js'
import type { BatchRecord } from '../../src/state/batchRecord.js'
import { addSummaries, type EngineTelemetry } from '../../streams/telemetry/telemetry.js'
import { RunHistory, type HistoryOverview, type HistorySnapshot } from '../../streams/telemetry/runHistory.js'
import { EngineStore } from '../../src/state/engineStore.js'
import { historyCsv, parseHistoryQuery, MAX_HISTORY_POINTS } from '../../streams/telemetry/routes.js'
import { csvLines, stepRow } from '../../src/apps/exportSteps.js'
import { baseConfig, Client, produce, prompts, tempDir } from '../serve/support.js'
import { ackingTrainer } from './browser.js'

/** `serve` in-process on a free port, on `dataDir`. */
async function startServe(dataDir: string, tokens: Record<string, string> = {}, historySaveEvery?: number) {
  const stop = new AbortController()
  const quiet = new PassThrough().resume()
  let ready!: (parts: { engine: DurableEngine; telemetry: EngineTelemetry; port: number }) => void
  const listening = new Promise<{ engine: DurableEngine; telemetry: EngineTelemetry; port: number }>((resolve) => (ready = resolve))
  const exit = serve(
    {
      config: parseConfig(baseConfig),
      dataDir,
      host: '127.0.0.1',
      port: 0,
      tokens,
      heartbeatMs: 0,
      telemetry: { processMetrics: false, historySaveEvery },
      onListening: ready,
    },
    { stdout: quiet },
    stop.signal,
  )
  const parts = await listening
  return {
    ...parts,
    ws: (path: string, query = '') => `ws://127.0.0.1:${parts.port}${path}${query}`,
    http: (path: string) => `http://127.0.0.1:${parts.port}${path}`,
    stop: async () => {
      stop.abort()
      return exit
    },
  }
}

type Served = Awaited<ReturnType<typeof startServe>>

/** Streams `prompts` prompts (2 per batch) and waits until the engine committed them all. */
async function runSteps(served: Served, prefix: string, count: number): Promise<void> {
  const trainer = await ackingTrainer(served.ws('/batches'))
  const producer = await Client.open(served.ws('/ingest'))
  await produce(producer, prompts(prefix, count), 40)
  await served.engine.settled()
  producer.ws.close()
  trainer.close()
}

const lambdas = (served: Served) => [...served.engine.store.summaries()].map((s) => (s.summary as BatchRecord).lambda.consistency.after)

t.test('the hello holds the whole run from step 1, also after a restart; /history reads any range exactly', async (t) => {
  const dataDir = tempDir()
  const first = await startServe(dataDir)
  await runSteps(first, 'a', 40)
  const steps = first.engine.stats().step
  t.equal(steps, 20)
  const expected = lambdas(first)
  await first.stop()

  const again = await startServe(dataDir)
  t.teardown(again.stop)
  const viewer = await Client.open(again.ws('/telemetry', '?format=json'))
  const hello = await viewer.nth('hello')
  t.same(hello.history, [], 'no live frame since the restart')
  const overview = hello.overview as HistoryOverview
  t.match(overview, { steps: 20, first: 1, last: 20 })
  t.same(
    overview.series['lambda.consistency'].steps,
    Array.from({ length: 20 }, (_, i) => i + 1),
    'every step, from step 1',
  )
  t.same(overview.series['lambda.consistency'].values, expected)
  t.ok(
    overview.series['lambda.consistency'].ts.every((ts) => typeof ts === 'number'),
    'with the commit times',
  )
  t.same(overview.series.latencyMs?.steps.length, 20, 'live-only series too: the history was saved at the clean stop')

  // steps after the restart extend it, with the live-only series
  await runSteps(again, 'b', 4)
  const all = (await (await fetch(again.http('/history'))).json()) as HistoryOverview
  t.match(all, { steps: 22, first: 1, last: 22 })
  t.same(all.series['lambda.consistency'].steps.length, 22)
  t.same(all.series.latencyMs?.steps.length, 22, 'latency (not in the summaries) from memory')
  const range = (await (await fetch(again.http('/history?series=lambda.consistency,mean.consistency&from=5&to=8'))).json()) as HistoryOverview
  t.same(Object.keys(range.series).sort(), ['lambda.consistency', 'mean.consistency'])
  t.same(range.series['lambda.consistency'].values, expected.slice(4, 8), 'a range, exact')
  const thin = (await (await fetch(again.http('/history?series=lambda.consistency&points=4'))).json()) as HistoryOverview
  t.ok(thin.series['lambda.consistency'].steps.length <= 4, 'thinned to the points asked')
  t.equal(Math.max(...thin.series['lambda.consistency'].values), Math.max(...lambdas(again)), 'the greatest λ survives')

  const csv = await fetch(again.http('/history?format=csv&series=lambda.consistency&to=3'))
  t.equal(csv.headers.get('content-type'), 'text/csv; charset=utf-8')
  t.match(csv.headers.get('content-disposition'), 'dualstream-history.csv')
  const lines = (await csv.text()).trim().split('\n')
  t.equal(lines[0], 'series,step,ts,value')
  t.same(
    lines.slice(1).map((line) => line.split(',')),
    expected
      .slice(0, 3)
      .map((value, i) => [
        'lambda.consistency',
        String(i + 1),
        String(range.series['lambda.consistency'].ts[0] === null ? '' : lines[i + 1].split(',')[2]),
        String(value),
      ]),
  )
  const head = await fetch(again.http('/history?format=csv'), { method: 'HEAD' })
  t.equal(head.status, 200)
  t.equal(await head.text(), '')
})

t.test('/history: the viewer token, bad requests said plainly, other methods and read failures', async (t) => {
  const served = await startServe(tempDir(), { viewer: 'see' })
  t.teardown(served.stop)
  const refused = await fetch(served.http('/history'))
  t.equal(refused.status, 401)
  t.match(await refused.json(), { error: /missing token: the viewer token is required/ })
  t.equal((await fetch(served.http('/history?token=see'))).status, 200)
  t.equal((await fetch(served.http('/history'), { headers: { Authorization: 'Bearer see' } })).status, 200)
  const bad = await fetch(served.http('/history?token=see&points=3'))
  t.equal(bad.status, 400)
  t.same(await bad.json(), { error: `points: must be an integer from 4 to ${MAX_HISTORY_POINTS}, got "3"` })
  t.equal((await fetch(served.http('/history?token=see'), { method: 'POST' })).status, 405)
  served.telemetry.queryHistory = () => Promise.reject(new Error('disk gone'))
  const failed = await fetch(served.http('/history?token=see'))
  t.equal(failed.status, 500)
  t.same(await failed.json(), { error: 'history could not be read: Error: disk gone' })
})

t.test('parseHistoryQuery: every parameter checked, with the value that was wrong', async (t) => {
  const parse = (query: string) => parseHistoryQuery(new URLSearchParams(query), 2000)
  t.same(parse(''), { ok: true, query: { points: 2000 }, format: 'json' })
  t.same(parse('series=a,,b&from=3&to=9&points=10&format=csv'), { ok: true, query: { points: 10, from: 3, to: 9, series: ['a', 'b'] }, format: 'csv' })
  t.same(parse('from=x'), { ok: false, error: 'from: must be an integer from 0 to 9007199254740991, got "x"' })
  t.same(parse('to=-1'), { ok: false, error: 'to: must be an integer from 0 to 9007199254740991, got "-1"' })
  t.same(parse('points=100001'), { ok: false, error: 'points: must be an integer from 4 to 100000, got "100001"' })
  t.same(parse('from=9&to=3'), { ok: false, error: 'from (9) is after to (3)' })
  t.same(parse('format=xml'), { ok: false, error: 'format: must be "json" or "csv", got "xml"' })
  t.equal(
    historyCsv({ maxPoints: 2, steps: 1, first: 1, last: 1, series: { x: { steps: [1], ts: [null], values: [0.5] } } }),
    'series,step,ts,value\nx,1,,0.5\n',
  )
})

t.test('dualstream export: one row per committed step, equal to the batch records of replay --log (CSV and JSON Lines)', async (t) => {
  const dataDir = tempDir()
  const served = await startServe(dataDir)
  await runSteps(served, 'e', 12)
  // read-only: serve keeps running meanwhile
  const jsonl = await runCli(['export', '--data', dataDir, '--format', 'jsonl'])
  t.equal(jsonl.code, 0)
  t.equal(jsonl.stderr, `export: 6 steps from ${dataDir}\n`)
  await served.stop()
  const rows = jsonl.stdout
    .trim()
    .split('\n')
    .map((line) => JSON.parse(line) as Record<string, number | string | null>)

  const dir = mkdtempSync(join(tmpdir(), 'dualstream-export-'))
  const configPath = join(dir, 'config.json')
  writeFileSync(configPath, JSON.stringify(baseConfig))
  const replayed = await runCli(['replay', '--config', configPath, '--log', dataDir])
  const records = replayed.stdout
    .trim()
    .split('\n')
    .map((line) => JSON.parse(line) as BatchRecord)
  t.equal(rows.length, records.length)
  records.forEach((record, i) => {
    const row = rows[i]
    t.match(row, { step: record.step, rollouts: record.rollouts, groups: record.groups, partialGroups: record.partialGroups })
    for (const [channel, change] of Object.entries(record.lambda))
      t.same([row[`lambdaBefore.${channel}`], row[`lambda.${channel}`]], [change.before, change.after])
    for (const [channel, c] of Object.entries(record.constraints))
      t.same(
        [row[`mean.${channel}`], row[`violation.${channel}`], row[`sampleViolationRate.${channel}`], row[`count.${channel}`]],
        [c.mean, c.violation, c.sampleViolationRate, c.count],
      )
    for (const [channel, mean] of Object.entries(record.objectives)) t.equal(row[`objective.${channel}`], mean)
    t.equal(new Date(row.time as string).getTime(), row.ts, 'the commit time, in ms and ISO')
  })

  const out = join(dir, 'steps.csv')
  const csv = await runCli(['export', '-d', dataDir, '-o', out])
  t.equal(csv.code, 0)
  t.equal(csv.stderr, `export: 6 steps from ${dataDir} to ${out}\n`)
  const [header, ...lines] = readFileSync(out, 'utf8').trim().split('\n')
  const columns = header.split(',')
  t.same(columns, Object.keys(rows[0]), 'the columns of the rows, in order')
  t.same(
    lines.map((line) => line.split(',')),
    rows.map((row) => columns.map((c) => (row[c] === null ? '' : String(row[c])))),
    'the same values as JSON Lines',
  )

  const missing = await runCli(['export', '--data', join(dir, 'nothing')])
  t.equal(missing.code, 1)
  t.match(missing.stderr, /^dualstream export: no engine log in .*nothing \(expected .*data\.mdb, written by `dualstream serve --data`\)\n$/)
})

/** A batch summary as stored before commit times were kept (no `ts`). */
const oldSummary = {
  step: 1,
  groups: 1,
  rollouts: 2,
  partialGroups: 0,
  lambda: {},
  constraints: {},
  objectives: {},
  fracZeroStd: {},
  advantageMean: 0,
  advantageStd: 1,
}

t.test('export rows: a summary from before commit times were kept; CSV fields quoted when they must be', async (t) => {
  const row = stepRow({ ...oldSummary, objectives: { accuracy: null } })
  t.match(row, { step: 1, ts: null, time: null, 'objective.accuracy': null })
  t.same([...csvLines(['a', 'b', 'c'], [{ a: 'x,"y"', b: null }])], ['a,b,c\n', '"x,""y""",,\n'])
})

t.test(
  'serve keeps the history in its data folder: a stale save is completed from the steps after it, a bad one rebuilt; long ranges come from memory',
  async (t) => {
    const dataDir = tempDir()
    const first = await startServe(dataDir, {}, 4)
    const saves: Promise<void>[] = []
    const save = first.engine.store.saveAuxiliary.bind(first.engine.store)
    first.engine.store.saveAuxiliary = (key, value) => {
      const saved = save(key, value)
      saves.push(saved)
      return saved
    }
    await runSteps(first, 'a', 20)
    t.equal(first.engine.stats().step, 10)
    // the saves are written in the background: wait for them
    await Promise.all(saves)
    t.equal(saves.length, 2, 'saved at steps 4 and 8')
    const savedAt8 = first.engine.store.auxiliary('history') as HistorySnapshot
    t.equal(savedAt8.last, 8, 'saved every 4 steps (the last at step 8)')
    const expected = lambdas(first)
    await first.stop()

    const startWith = async (saved: unknown) => {
      const store = EngineStore.open(dataDir)
      await store.saveAuxiliary('history', saved)
      await store.close()
      const served = await startServe(dataDir)
      const overview = served.telemetry.history.overview()
      await served.stop()
      return overview
    }
    const fromStale = await startWith(savedAt8)
    t.match(fromStale, { steps: 10, first: 1, last: 10 })
    t.same(fromStale.series['lambda.consistency'].values, expected, 'the save up to step 8, then steps 9 and 10 from the data folder')
    t.same(fromStale.series.latencyMs.steps, [1, 2, 3, 4, 5, 6, 7, 8], 'live-only series as saved')
    const rebuilt = await startWith({ series: 'not a history' })
    t.match(rebuilt, { steps: 10, first: 1, last: 10 }, 'an unreadable save: rebuilt from every step')
    t.same(rebuilt.series['lambda.consistency'].values, expected)

    const served = await startServe(dataDir)
    t.teardown(served.stop)
    const long = await served.telemetry.queryHistory({ from: 1, to: 10 ** 9 })
    t.same(long, served.telemetry.history.query({ from: 1, to: 10 ** 9 }), 'a range longer than EXACT_HISTORY_STEPS is answered from memory')
    served.engine.store.saveAuxiliary = () => Promise.reject(new Error('disk gone'))
    await served.telemetry.saveHistory()
    t.pass('a failed save is only a longer next start')
    Object.defineProperty(served.engine, 'error', { value: new Error('failed'), configurable: true })
    served.engine.store.saveAuxiliary = () => t.fail('a failed engine writes nothing') as never
    await served.telemetry.saveHistory()
  },
)

t.test('export: an output that cannot be written, a data folder that is not LMDB; history from summaries without commit times', async (t) => {
  const dataDir = tempDir()
  const served = await startServe(dataDir)
  await runSteps(served, 'x', 2)
  await served.stop()
  const unwritable = await runCli(['export', '-d', dataDir, '-o', join(dataDir, 'no', 'such', 'dir', 'steps.csv')])
  t.equal(unwritable.code, 1)
  t.match(unwritable.stderr, /^dualstream export: ENOENT: no such file or directory, open '.*steps\.csv'\n$/)
  // a summary that is not one (written by something else): not a problem of the invocation, shown whole
  const store = EngineStore.open(dataDir)
  await store.steps.put(99, { step: 99 })
  await store.close()
  const foreign = await runCli(['export', '-d', dataDir])
  t.equal(foreign.code, 1)
  t.match(foreign.stderr, /^dualstream: TypeError: /)

  // a stray data.mdb is refused with what it is (lmdb would crash on it)
  const notLmdb = mkdtempSync(join(tmpdir(), 'dualstream-export-'))
  writeFileSync(join(notLmdb, 'data.mdb'), 'not a database')
  const stray = await runCli(['export', '-d', notLmdb])
  t.equal(stray.code, 1)
  t.match(stray.stderr, /data\.mdb is not an LMDB data file/)

  const history = new RunHistory()
  addSummaries(history, [{ summary: oldSummary }], parseConfig(baseConfig))
  t.same(history.overview().series.rollouts, { steps: [1], ts: [null], values: [2] }, 'a summary from before commit times were kept: no wall time')
})
