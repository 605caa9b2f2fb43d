/**
 * The dashboard in a real browser (headless Debian Chromium driven by playwright-core):
 * `serve` in-process, rollouts fed by a WebSocket producer, the page opened mid-run; the
 * charts must show every streamed step and the λ values; screenshots go to artifacts/.
 * Then a run with a viewer token (the page asks for it), and the built-in training's page
 * with its sample-rollout picture.
 */
import { join } from 'node:path'
import t, { type Test } from 'tap'
import type { Browser, Page } from 'playwright-core'
import { parseConfig } from '../../src/core/config.js'
import { serve } from '../../src/apps/serve.js'
import { PRESETS } from '../../src/apps/train/presets.js'
import { SpatialGridTrainer } from '../../src/apps/train/trainer.js'
import { TrainingTelemetry } from '../../streams/telemetry/telemetry.js'
import { TelemetryServer } from '../../streams/telemetry/telemetryServer.js'
import type { DurableEngine } from '../../src/state/durableEngine.js'
import { Client, produce, tempDir } from '../serve/support.js'
import { ackingTrainer, artifactsDir, dashboardConfig, launchChromium, longRunConfig, openPage, syntheticSteps } from './browser.js'

let browser: Browser
t.before(async () => {
  browser = await launchChromium()
})
t.teardown(() => browser?.close())

/** Runs `serve` in-process until the returned `stop` (on a free port and a new data folder unless given). */
async function startServe({
  tokens = {},
  dataDir = tempDir(),
  port: wanted = 0,
  config = dashboardConfig,
}: { tokens?: Record<string, string>; dataDir?: string; port?: number; config?: typeof dashboardConfig } = {}) {
  const stop = new AbortController()
  const quiet = { write: () => true } as unknown as NodeJS.WritableStream
  let ready!: (parts: { engine: DurableEngine; port: number }) => void
  const listening = new Promise<{ engine: DurableEngine; port: number }>((resolve) => (ready = resolve))
  const exit = serve(
    {
      config: parseConfig(config),
      dataDir,
      host: '127.0.0.1',
      port: wanted,
      tokens,
      heartbeatMs: 0,
      telemetry: { processMetrics: false },
      onListening: ready,
    },
    { stdout: quiet },
    stop.signal,
  )
  const { engine, port } = await listening
  return {
    engine,
    port,
    url: (path: string, query = '') => `ws://127.0.0.1:${port}${path}${query}`,
    page: `http://127.0.0.1:${port}/`,
    stop: async () => {
      stop.abort()
      await exit
    },
  }
}

/** Feeds steps `from`..`to` a few at a time, like a live producer (each chunk acknowledged before the next). */
async function feed(producer: Client, from: number, to: number, total: number) {
  for (let s = from; s < to; s += 8) await produce(producer, syntheticSteps(s, Math.min(s + 8, to), total), 64)
}

const stepShown = (page: Page, step: number) => page.waitForSelector(`#step[data-step="${step}"]`, { timeout: 15_000 })

t.test('serve: the page opened mid-run charts every streamed step and shows λ', async (t) => {
  const served = await startServe()
  t.teardown(() => served.stop())
  const total = 160
  // a viewer from the start (MessagePack, the default): the reference for what the page must show
  const viewer = await Client.open(served.url('/telemetry'))
  const trainer = await ackingTrainer(served.url('/batches'))
  const producer = await Client.open(served.url('/ingest'))
  await feed(producer, 0, total / 2, total)
  await viewer.until(() => viewer.count('batch') === total / 2)

  const { page, errors } = await openPage(browser)
  await page.goto(served.page)
  await stepShown(page, total / 2)
  t.equal(await page.getAttribute('body', 'data-state'), 'live')
  t.equal(await page.getAttribute('[data-chart="lambda"]', 'data-points'), String(total / 2), 'the hello history fills the charts at once')

  await feed(producer, total / 2, total, total)
  await stepShown(page, total)
  await viewer.until(() => viewer.count('batch') === total)
  const frames = viewer.of('batch')
  t.same(
    frames.map((f) => f.step),
    Array.from({ length: total }, (_, i) => i + 1),
  )

  // every panel has its chart, with every step
  const panels = await page.$$eval('.panel', (els) =>
    els.map((el) => ({
      id: el.getAttribute('data-chart'),
      points: el.getAttribute('data-points'),
      lastStep: el.getAttribute('data-last-step'),
      canvases: el.querySelectorAll('canvas').length,
    })),
  )
  t.same(
    panels.map((p) => p.id),
    ['lambda', 'constraints', 'violation', 'objectives', 'throughput'],
  )
  for (const panel of panels) {
    t.equal(panel.points, String(total), `${panel.id}: every step`)
    t.equal(panel.lastStep, String(total), `${panel.id}: up to the last`)
    t.ok(panel.canvases >= 1, `${panel.id}: a chart canvas`)
  }

  // λ in the table is the engine's, and the λ chart holds each step's λ as streamed
  const lambda = served.engine.stats().lambda
  for (const constraint of ['consistency', 'toxicity']) {
    const shown = await page.getAttribute(`#constraints tr[data-constraint="${constraint}"]`, 'data-lambda')
    t.equal(Number(shown), lambda[constraint], `λ ${constraint} shown`)
    t.equal(Number(shown), frames[total - 1].constraints[constraint].lambda)
  }
  t.ok(lambda.consistency > 0 || lambda.toxicity > 0, 'the constraints were violated at some point: λ moved')
  const series = await page.evaluate(() => {
    const panel = (
      globalThis as unknown as { dualstream: { panels: { spec: { id: string }; columns: { cols: (number | null)[][] } }[] } }
    ).dualstream.panels.find((p) => p.spec.id === 'lambda')!
    return panel.columns.cols
  })
  t.same(
    series[0],
    Array.from({ length: total }, (_, i) => i + 1),
    'x: the steps',
  )
  t.same(
    series[1],
    frames.map((f) => f.constraints.consistency.lambda),
    'λ consistency per step',
  )
  t.same(
    series[2],
    frames.map((f) => f.constraints.toxicity.lambda),
    'λ toxicity per step',
  )
  t.match(await page.textContent('#constraints tbody'), /consistency.*≥ 0\.9.*toxicity.*≤ 0\.1/s)

  const shot = join(artifactsDir(), 'dashboard.png')
  await page.screenshot({ path: shot, fullPage: true })
  t.pass(`screenshot: ${shot}`)
  t.same(errors, [], 'no errors in the page')
  await page.close()
  trainer.close()
  await Promise.all([viewer.close(), producer.close()])
})

/** What a chart shows: its x range, its first and last point, and the first and last step its overview series hold. */
interface ChartView {
  id: string
  xMin: number
  xMax: number
  first: number | null
  last: number | null
  overviewFirst: number | null
  overviewLast: number | null
}

/** The run chart, then every live chart, as the page holds them (`window.dualstream`). */
function chartViews(page: Page): Promise<ChartView[]> {
  return page.evaluate(() => {
    type Chart = { spec: { id: string; keys: unknown[] }; columns: { cols: number[][] }; plot: { scales: { x: { min: number; max: number } } } }
    type Overview = { series: Record<string, { steps: number[] } | undefined> }
    const state = (globalThis as unknown as { dualstream: { runChart: Chart; panels: Chart[]; hello: { overview: Overview } } }).dualstream
    return [state.runChart, ...state.panels].map((chart) => {
      const held = chart.spec.keys.flatMap((key) => (typeof key === 'string' ? (state.hello.overview.series[key]?.steps ?? []) : []))
      const steps = chart.columns.cols[0]
      return {
        id: chart.spec.id,
        xMin: chart.plot.scales.x.min,
        xMax: chart.plot.scales.x.max,
        first: steps.length === 0 ? null : steps[0],
        last: steps.length === 0 ? null : steps[steps.length - 1],
        overviewFirst: held.length === 0 ? null : Math.min(...held),
        overviewLast: held.length === 0 ? null : Math.max(...held),
      }
    })
  })
}

/**
 * Every chart spans the run from step 1 to `last` and starts with the overview's first point;
 * its last point is the last frame's (`framesUntil`, when the page got frames) or the overview's.
 */
async function checkWholeRun(t: Test, page: Page, last: number, framesUntil: number | null, when: string): Promise<ChartView[]> {
  const views = await chartViews(page)
  t.same(
    views.map((v) => v.id),
    ['overview', 'lambda', 'constraints', 'violation', 'objectives', 'throughput'],
    `${when}: the run chart, then the live charts`,
  )
  for (const view of views) {
    t.equal(view.xMin, 1, `${when}: ${view.id} starts at step 1`)
    t.equal(view.xMax, last, `${when}: ${view.id} ends at step ${last}`)
    // throughput and latency are live-only: not in the overview after a restart
    if (view.overviewFirst !== null) t.equal(view.first, view.overviewFirst, `${when}: ${view.id}: its first point is the overview's first (${view.first})`)
    const lastPoint = framesUntil ?? view.overviewLast
    t.equal(view.last, lastPoint, `${when}: ${view.id}: its last point is step ${lastPoint}`)
  }
  // this run starts with both constraints violated, so λ climbs from its lowest at step 1: min/max thinning keeps that point
  for (const id of ['overview', 'lambda']) t.equal(views.find((v) => v.id === id)?.first, 1, `${when}: ${id}: the first point is step 1`)
  return views
}

t.test('serve: every chart draws the whole run from step 1, for a page opened late and after a restart; the run chart zooms; CSV', async (t) => {
  const dataDir = tempDir()
  const total = 2100
  const first = await startServe({ dataDir, config: longRunConfig })
  const trainer = await ackingTrainer(first.url('/batches'))
  const producer = await Client.open(first.url('/ingest'))
  await produce(producer, syntheticSteps(0, total, total, longRunConfig), 512)

  const { page, errors } = await openPage(browser)
  await page.goto(first.page)
  await stepShown(page, total)
  await checkWholeRun(t, page, total, total, 'opened at the end')
  t.equal(await page.getAttribute('body', 'data-zoom'), '', 'not zoomed')
  await page.screenshot({ path: join(artifactsDir(), 'dashboard-whole-run.png'), fullPage: true })

  // drag over the second quarter of the run chart: the live charts show those steps
  const run = (await page.locator('[data-chart="overview"] .u-over').boundingBox())!
  const middle = run.y + run.height / 2
  await page.mouse.move(run.x + run.width * 0.25, middle)
  await page.mouse.down()
  await page.mouse.move(run.x + run.width * 0.5, middle, { steps: 5 })
  await page.mouse.up()
  await page.waitForSelector('body:not([data-zoom=""])')
  const zoomed = await chartViews(page)
  const [runView, ...live] = zoomed
  t.same([runView.xMin, runView.xMax], [1, total], 'the run chart still shows the whole run')
  for (const view of live) {
    t.ok(Math.abs(view.xMin - total / 4) < total / 50, `zoomed: ${view.id} from about step ${total / 4} (${view.xMin.toFixed(0)})`)
    t.ok(Math.abs(view.xMax - total / 2) < total / 50, `zoomed: ${view.id} to about step ${total / 2} (${view.xMax.toFixed(0)})`)
    t.same([view.xMin, view.xMax], [live[0].xMin, live[0].xMax], `zoomed: ${view.id} shows the same steps as the others`)
  }
  // hovering a live chart: its legend says the step under the pointer and its wall time
  const lambdaPlot = (await page.locator('[data-chart="lambda"] .u-over').boundingBox())!
  await page.mouse.move(lambdaPlot.x + lambdaPlot.width / 2, lambdaPlot.y + lambdaPlot.height / 2)
  const legendStep = page.locator('[data-chart="lambda"] .u-legend .u-series:first-child .u-value')
  await page.waitForFunction((el) => /^[\d,]+ · (\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d$/.test(el?.textContent ?? ''), await legendStep.elementHandle())
  const hovered = Number((await legendStep.textContent())!.split(' · ')[0].replace(/,/g, ''))
  t.ok(hovered > live[0].xMin && hovered < live[0].xMax, `the hovered step (${hovered}) is in the zoomed range`)
  await page.screenshot({ path: join(artifactsDir(), 'dashboard-zoomed.png'), fullPage: true })
  // a double-click on the run chart shows the whole run again
  await page.mouse.dblclick(run.x + run.width * 0.75, middle)
  await page.waitForSelector('body[data-zoom=""]')
  for (const view of (await chartViews(page)).slice(1)) t.same([view.xMin, view.xMax], [1, total], `reset: ${view.id} shows the whole run`)

  // the CSV link: the whole run's series, one row per point
  const href = await page.getAttribute('#csv', 'href')
  t.equal(href, '/history?format=csv', 'the CSV link (no viewer token)')
  const response = await fetch(new URL(href!, first.page))
  t.equal(response.status, 200)
  t.match(response.headers.get('content-type'), /^text\/csv/)
  const [header, ...rows] = (await response.text()).trimEnd().split('\n')
  t.equal(header, 'series,step,ts,value')
  const lambdaSteps = rows.filter((row) => row.startsWith('lambda.consistency,')).map((row) => Number(row.split(',')[1]))
  t.equal(lambdaSteps[0], 1, 'the CSV starts at step 1')
  // the last bucket's min and max: the last step only when it is one of them
  t.ok(lambdaSteps[lambdaSteps.length - 1] > total - 10, `and ends in the last steps (${lambdaSteps[lambdaSteps.length - 1]})`)
  trainer.close()
  await producer.close()

  // the same data folder and port, a new process: the open page reconnects and draws the run from step 1 again
  await page.evaluate(() => Object.assign((globalThis as unknown as { dualstream: { panels: object[] } }).dualstream.panels[0], { beforeRestart: true }))
  await first.stop()
  await page.waitForSelector('body:not([data-state="live"])')
  const second = await startServe({ dataDir, port: first.port, config: longRunConfig })
  t.teardown(() => second.stop())
  await page.waitForSelector('body[data-state="live"]', { timeout: 15_000 })
  // new charts (from the new hello), drawn
  await page.waitForFunction(() => {
    const lambda = (globalThis as unknown as { dualstream: { panels: { el: { dataset: { points: string } } }[] } }).dualstream.panels[0]
    return !('beforeRestart' in lambda) && lambda.el.dataset.points !== '0'
  })
  await checkWholeRun(t, page, total, null, 'reconnected after a restart')
  // and a page opened after the restart
  const reopened = await openPage(browser)
  await reopened.page.goto(second.page)
  await stepShown(reopened.page, total)
  await checkWholeRun(t, reopened.page, total, null, 'opened after a restart')
  t.same(reopened.errors, [], 'no errors in the page opened after the restart')
  await reopened.page.close()

  // the run goes on: live frames extend every chart
  const trainer2 = await ackingTrainer(second.url('/batches'))
  const producer2 = await Client.open(second.url('/ingest'))
  await produce(producer2, syntheticSteps(total, total + 16, total, longRunConfig), 512)
  await stepShown(page, total + 16)
  const views = await checkWholeRun(t, page, total + 16, total + 16, 'after a restart, then live')
  t.equal(views.find((v) => v.id === 'throughput')?.last, total + 16, 'the live-only series go on from the restart')
  await page.screenshot({ path: join(artifactsDir(), 'dashboard-restart.png'), fullPage: true })
  t.same(errors, [], 'no errors in the page')
  await page.close()
  trainer2.close()
  await producer2.close()
})

t.test('serve with a viewer token: the page asks for it, refuses a wrong one, then connects', async (t) => {
  const served = await startServe({ tokens: { viewer: 'let-me-see' } })
  t.teardown(() => served.stop())
  const { page, errors } = await openPage(browser)
  await page.goto(served.page)
  await page.waitForSelector('#token-dialog[open]')
  t.equal(await page.getAttribute('body', 'data-state'), 'token')
  t.match(await page.textContent('#token-message'), /needs the viewer token/)
  await page.fill('#token', 'not-it')
  await page.click('#token-submit')
  await page.waitForSelector('#token-message.error')
  t.match(await page.textContent('#token-message'), /refused: wrong token for role viewer/)
  await page.fill('#token', 'let-me-see')
  await page.click('#token-submit')
  await page.waitForSelector('body[data-state="live"]')
  t.equal(
    await page.evaluate(() =>
      (globalThis as unknown as { sessionStorage: { getItem(key: string): string | null } }).sessionStorage.getItem('dualstream.viewerToken'),
    ),
    'let-me-see',
  )
  t.equal(await page.getAttribute('#csv', 'href'), '/history?format=csv&token=let-me-see', 'the CSV link carries the viewer token')

  const trainer = await ackingTrainer(served.url('/batches'))
  const producer = await Client.open(served.url('/ingest'))
  await produce(producer, syntheticSteps(0, 3, 3), 64)
  await stepShown(page, 3)
  // a reload keeps the token for the tab
  await page.reload()
  await page.waitForSelector('body[data-state="live"]')
  await stepShown(page, 3)
  t.same(errors, [], 'no errors in the page')
  await page.close()
  trainer.close()
  await producer.close()
})

t.test('the built-in training: learner charts and the sample rollout picture', async (t) => {
  const config = parseConfig(PRESETS.fgrpo)
  const trainer = await SpatialGridTrainer.create({ config, seed: 0, settings: { sftSteps: 50 } })
  const telemetry = new TrainingTelemetry(config, { step: trainer.rlSteps, lambda: trainer.lambda }, { processMetrics: false })
  const server = new TelemetryServer({ heartbeatMs: 0 })
  telemetry.mount(server)
  const { port } = await server.listen(0, '127.0.0.1')
  t.teardown(async () => {
    telemetry.close()
    await server.close()
    await trainer.close()
  })
  const { page, errors } = await openPage(browser)
  await page.goto(`http://127.0.0.1:${port}/`)
  await page.waitForSelector('body[data-state="live"]')
  await trainer.warmStart((done, total) => telemetry.status('warm start', done, total))
  const steps = 100
  telemetry.status('RL')
  await trainer.train(steps, (report) => telemetry.onStep(report))
  await stepShown(page, steps)
  await page.waitForSelector('#sample svg [data-claim="2"]')

  t.equal(await page.getAttribute('body', 'data-source'), 'train')
  const panels = await page.$$eval('.panel', (els) =>
    els.map((el) => [el.getAttribute('data-chart'), el.getAttribute('data-points'), el.querySelectorAll('canvas').length]),
  )
  t.same(
    panels.map((p) => p[0]),
    ['lambda', 'constraints', 'violation', 'objectives', 'throughput', 'learner'],
  )
  for (const [id, points, canvases] of panels) {
    t.equal(points, String(steps), `${id}: every step`)
    t.ok(Number(canvases) >= 1, `${id}: a chart canvas`)
  }
  for (const [constraint, value] of Object.entries(trainer.lambda)) {
    t.equal(Number(await page.getAttribute(`#constraints tr[data-constraint="${constraint}"]`, 'data-lambda')), value, `λ ${constraint}`)
  }
  // the picture: the grid's objects, two claims marked true/false, the answer judged
  const picture = await page.$eval('#sample svg', (svg) => ({
    step: Number(svg.getAttribute('data-step')),
    claims: [...svg.querySelectorAll('[data-claim]')].map((g) => g.getAttribute('data-true')),
    answer: svg.querySelector('[data-answer]')?.getAttribute('data-answer'),
    text: svg.textContent,
  }))
  t.ok(picture.step >= 1 && picture.step <= steps, 'the sample comes from a streamed step')
  t.equal(picture.claims.length, 2)
  for (const c of picture.claims) t.ok(c === 'true' || c === 'false')
  t.match(picture.answer, /^(less|greater)$/)
  t.match(picture.text, /QUESTION.*CLAIMS.*(✓ true|✗ false).*ANSWER.*(✓ right|✗ wrong)/s)
  t.match(await page.textContent('#phase'), 'RL')

  const shot = join(artifactsDir(), 'dashboard-train.png')
  await page.screenshot({ path: shot, fullPage: true })
  t.pass(`screenshot: ${shot}`)
  t.same(errors, [], 'no errors in the page')
  await page.close()
})
