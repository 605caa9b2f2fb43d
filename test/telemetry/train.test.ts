import { createServer } from 'node:net'
import { PassThrough } from 'node:stream'
import t from 'tap'
import { parseConfig } from '../../src/core/config.js'
import { initialDualState } from '../../src/math/dual.js'
import { scoreGroups } from '../../src/math/score.js'
import { PRESETS } from '../../src/apps/train/presets.js'
import { DEFAULT_DASHBOARD_PORT, trainCommand } from '../../src/apps/train/commands.js'
import type { Group, ScoredBatch } from '../../src/core/types.js'
import { TrainingTelemetry, type StepReportLike } from '../../streams/telemetry/telemetry.js'
import { runCli } from '../support/cli.js'
import { Client, tempDir, upgradeStatus } from '../serve/support.js'

const config = parseConfig(PRESETS.fgrpo)

/** A step report over one scored group (the trainer's shape), counting calls of `sample`. */
function report(step: number, calls: { n: number }): StepReportLike {
  const groups: Group[] = [
    {
      promptId: 'p',
      partial: false,
      ts: step,
      rollouts: [0, 1].map((i) => ({ id: `s${step}-${i}`, promptId: 'p', rewards: { accuracy: i, consistency: 1, grounding: 0.5 } })),
    },
  ]
  const scored = scoreGroups(groups, config, { ...initialDualState(config.constraints), step: step - 1 })
  const batch: ScoredBatch = { groups, ts: step, reason: 'full', columns: { offsets: Int32Array.of(0, 2), columns: {} }, windows: {}, ...scored }
  return {
    step,
    policyVersion: step,
    batch,
    learner: { loss: 0.1, clipFraction: 0, meanRatio: 1, gradNorm: 0.5 },
    metrics: { accuracy: 0.5, inconsistencyRate: 0, grounding: 0.5 },
    ms: 3,
    sample: () => {
      calls.n++
      return {
        grid: 4,
        objects: [],
        question: { a: 'red', b: 'blue', axis: 'x', text: '?' },
        claims: [],
        answer: 'less',
        correctAnswer: 'less',
        judgement: { accuracy: 1, grounding: 1, consistency: 1 },
        text: `step ${step}`,
      }
    },
  }
}

t.test('training telemetry: phases throttled within a phase, a sample a few times a second at most, counts and λ', async (t) => {
  let now = 1000
  const telemetry = new TrainingTelemetry(config, { step: 10, lambda: { consistency: 0.5, grounding: 0 } }, { now: () => now, processMetrics: false })
  const published: { type: string; phase?: string; done?: number; step?: number; sample?: unknown }[] = []
  const publish = telemetry.hub.publish.bind(telemetry.hub)
  telemetry.hub.publish = (frame) => {
    published.push(frame)
    publish(frame)
  }
  t.match(telemetry.hub.hello(), {
    source: 'train',
    step: 10,
    lambda: { consistency: 0.5, grounding: 0 },
    counts: null,
    phase: 'starting',
    history: [],
    sample: null,
  })

  telemetry.status('warm start', 0, 500)
  now += 50
  telemetry.status('warm start', 10, 500) // too soon: skipped
  now += 200
  telemetry.status('warm start', 250, 500)
  now += 10
  telemetry.status('warm start', 500, 500) // the last of a phase always goes
  telemetry.status('RL')
  t.same(published, [
    { type: 'status', phase: 'warm start', done: 0, total: 500 },
    { type: 'status', phase: 'warm start', done: 250, total: 500 },
    { type: 'status', phase: 'warm start', done: 500, total: 500 },
    { type: 'status', phase: 'RL' },
  ])

  const calls = { n: 0 }
  published.length = 0
  telemetry.onStep(report(11, calls))
  now += 100
  telemetry.onStep(report(12, calls))
  now += 200
  telemetry.onStep(report(13, calls))
  t.equal(calls.n, 2, 'the sample is described only when one goes out')
  t.same(
    published.map((f) => [f.step, f.sample !== undefined]),
    [
      [11, true],
      [12, false],
      [13, true],
    ],
  )
  const hello = telemetry.hub.hello()
  t.equal(hello.step, 13)
  t.equal(hello.phase, 'RL')
  t.same(hello.lambda, { consistency: telemetry.latest!.constraints.consistency.lambda, grounding: telemetry.latest!.constraints.grounding.lambda })
  t.match(hello.counts, { ingested: 6, batches: 3, rolloutsInBatches: 6, rejected: 0, rejectedByReason: {} })
  t.match(hello.sample, { text: 'step 13' })
  t.same(
    hello.history.map((f) => f.step),
    [11, 12, 13],
  )
  t.match(telemetry.latest, { learner: { loss: 0.1, gradNorm: 0.5 }, metrics: { accuracy: 0.5 }, policyVersion: 13, latencyMs: 3 })
  t.match(await telemetry.metrics.text(), /dualstream_batches_total 3/)
  telemetry.close()
})

/** The state folder of the first training here, past its warm start: the next one resumes it. */
let warmStarted: string | undefined

t.test('train serves the dashboard while it trains: the URL, the phases, a frame per step', async (t) => {
  const data = tempDir('dualstream-train-dash-')
  const stdout = new PassThrough()
  let out = ''
  stdout.on('data', (c: Buffer) => (out += c.toString()))
  let progress = ''
  const terminal = Object.assign(new PassThrough(), { isTTY: true, columns: 200 })
  terminal.on('data', (c: Buffer) => (progress += c.toString()))
  let viewer: Client | undefined
  const stepsSeen: number[] = []
  let page = ''
  let metrics = ''
  await trainCommand(
    {
      method: 'fgrpo',
      steps: 3,
      seed: 0,
      data,
      port: 0,
      onStep: (report) => stepsSeen.push(report.step),
      onDashboard: async (url, telemetry) => {
        t.ok(telemetry instanceof TrainingTelemetry)
        page = await (await fetch(url)).text()
        metrics = await (await fetch(`${url}metrics`)).text()
        viewer = await Client.open(`${url.replace('http', 'ws')}telemetry?format=json`)
        await viewer.nth('hello')
      },
    },
    { stdout, stderr: terminal },
  )
  t.match(progress, /warm start .* 500\/500 steps/, 'the warm-start bar on a terminal')
  t.match(progress, /RL .* step 3 \| \d+ steps\/s \| acc [\d.]+% incons [\d.]+% ground [\d.]+% \| λ c [\d.]+ g [\d.]+/, 'the RL line')
  t.match(out, /dashboard: http:\/\/127\.0\.0\.1:\d+\/ \(live telemetry: WebSocket \/telemetry, Prometheus \/metrics\)\n/)
  t.match(page, '<title>dualstream — live telemetry</title>')
  t.match(metrics, /^dualstream_lambda\{constraint="consistency"\} 0$/m)
  const client = viewer!
  await client.until(() => client.closed !== undefined)
  t.equal(client.closed!.code, 1001, 'closed when the run ends')
  t.match(client.frames[0], { type: 'hello', source: 'train', step: 0, phase: 'starting' })
  const phases = client.of('status').map((f) => f.phase)
  t.equal(phases[0], 'warm start')
  t.same(phases.slice(-3), ['RL', 'held-out evaluation', 'done'])
  t.same(client.of('status').find((f) => f.phase === 'warm start' && f.done === f.total)?.total, 500)
  const batches = client.of('batch')
  t.same(
    batches.map((f) => f.step),
    [1, 2, 3],
  )
  t.match(batches[0], { policyVersion: 1, learner: { loss: Number }, metrics: { accuracy: Number }, sample: { grid: 4, claims: [{}, {}] } })
  t.notOk('sample' in batches[1], 'the next sample waits its turn')
  t.same(stepsSeen, [1, 2, 3], 'the caller’s onStep too')
  warmStarted = data
})

t.test('train: the default port in use falls back to a free one and says so; --no-dashboard; a bad --port', async (t) => {
  // resumes the run above (at RL step 3): the warm start is not what this test is about
  const data = warmStarted ?? tempDir('dualstream-train-port-')
  const resumedAt = warmStarted === undefined ? 0 : 3
  // make sure 8787 is taken (it may be already: then by someone else)
  const busy = createServer()
  await new Promise<void>((resolve) => {
    busy.once('error', () => resolve())
    busy.listen(DEFAULT_DASHBOARD_PORT, '127.0.0.1', resolve)
  })
  t.teardown(() => busy.close())
  const saved = process.env.DUALSTREAM_VIEWER_TOKEN
  process.env.DUALSTREAM_VIEWER_TOKEN = 'see'
  t.teardown(() => {
    if (saved === undefined) delete process.env.DUALSTREAM_VIEWER_TOKEN
    else process.env.DUALSTREAM_VIEWER_TOKEN = saved
  })
  const stdout = new PassThrough()
  let out = ''
  stdout.on('data', (c: Buffer) => (out += c.toString()))
  let health: unknown
  let history: { steps: number; series: Record<string, { steps: number[] }> } | undefined
  await trainCommand(
    {
      method: 'fgrpo',
      steps: 1,
      seed: 0,
      data,
      onDashboard: async (url) => {
        health = await (await fetch(`${url}healthz`)).json()
        // the whole-run history came back with the checkpoint: a page opened now draws from step 1
        history = (await (await fetch(`${url}history?token=see&series=lambda.consistency,loss`)).json()) as typeof history
        t.equal((await upgradeStatus(`${url.replace('http', 'ws')}telemetry`)).status, 401, 'the viewer token is asked for')
      },
    },
    { stdout, stderr: new PassThrough() },
  )
  t.match(out, new RegExp(`dashboard: port ${DEFAULT_DASHBOARD_PORT} is in use, using (\\d+) instead\\n`))
  t.match(out, '; viewer token required)')
  t.same(health, { status: 'ok', step: resumedAt })
  const resumedSteps = Array.from({ length: resumedAt }, (_, i) => i + 1)
  t.match(history, { steps: resumedAt })
  t.same(history?.series['lambda.consistency']?.steps ?? [], resumedSteps, 'λ from step 1, restored from the checkpoint')
  t.same(history?.series.loss?.steps ?? [], resumedSteps, 'and the learner’s figures')
  const none = await runCli(['train', '--steps', '1', '--data', data, '--no-dashboard', '--port', '0'])
  t.equal(none.code, 0, none.stderr)
  t.notMatch(none.stdout, 'dashboard:')
  const bad = await runCli(['train', '--port', '70000'])
  t.equal(bad.code, 2)
  t.match(bad.stderr, /--port <n>' argument '70000' is invalid. must be an integer from 0 to 65535/)
})
