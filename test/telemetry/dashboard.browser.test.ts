/**
 * The dashboard in a real browser (headless Debian Chromium driven by playwright-core):
 * `serve` in-process, rollouts fed by a WebSocket producer, the page opened mid-run; the
 * charts must show every streamed step and the λ values; screenshots go to artifacts/.
 * Then a run with a viewer token (the page asks for it), and the built-in training's page
 * with its sample-rollout picture.
 */
import { join } from 'node:path'
import t from 'tap'
import type { Browser, Page } from 'playwright-core'
import { parseConfig } from '../../src/core/config.js'
import { serve } from '../../src/apps/serve.js'
import { PRESETS } from '../../src/apps/train/presets.js'
import { SpatialGridTrainer } from '../../src/apps/train/trainer.js'
import { TrainingTelemetry } from '../../streams/telemetry/telemetry.js'
import { TelemetryServer } from '../../streams/telemetry/telemetryServer.js'
import type { DurableEngine } from '../../src/state/durableEngine.js'
import { Client, produce, tempDir } from '../serve/support.js'
import { ackingTrainer, artifactsDir, dashboardConfig, launchChromium, openPage, syntheticSteps } from './browser.js'

let browser: Browser
t.before(async () => {
  browser = await launchChromium()
})
t.teardown(() => browser?.close())

/** Runs `serve` in-process on a free port until the returned `stop`. */
async function startServe(tokens: Record<string, string> = {}) {
  const stop = new AbortController()
  const quiet = { write: () => true } as unknown as NodeJS.WritableStream
  let ready!: (parts: { engine: DurableEngine; port: number }) => void
  const listening = new Promise<{ engine: DurableEngine; port: number }>((resolve) => (ready = resolve))
  const exit = serve(
    {
      config: parseConfig(dashboardConfig),
      dataDir: tempDir(),
      host: '127.0.0.1',
      port: 0,
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

t.test('serve with a viewer token: the page asks for it, refuses a wrong one, then connects', async (t) => {
  const served = await startServe({ viewer: 'let-me-see' })
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
