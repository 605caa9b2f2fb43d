/** Helpers for the dashboard tests: headless Chromium (Debian's), the artifacts folder, a synthetic run. */
import { existsSync, mkdirSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { chromium, type Browser, type Page } from 'playwright-core'
import WebSocket from 'ws'
import { mulberry32 } from '../../examples/support/random.js'
import { pack, unpackr } from '../serve/support.js'

/** Debian's chromium (`apt-get install -y chromium`; `.ci/run` installs it); DUALSTREAM_CHROMIUM overrides. */
export const CHROMIUM = process.env.DUALSTREAM_CHROMIUM ?? '/usr/bin/chromium'

export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--no-first-run',
  '--disable-component-update',
  '--disable-sync',
]

/** Launches headless Chromium, or fails with what to do: the dashboard test never skips silently. */
export async function launchChromium(): Promise<Browser> {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `the dashboard test needs headless Chromium at ${CHROMIUM}: install it with "apt-get install -y chromium" (as .ci/run does), or set DUALSTREAM_CHROMIUM to its path`,
    )
  }
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS })
}

/** `artifacts/` at the repository root (gitignored): where the screenshots go. */
export function artifactsDir(): string {
  const dir = fileURLToPath(new URL('../../artifacts/', import.meta.url))
  mkdirSync(dir, { recursive: true })
  return dir
}

/** Opens a page that records its errors (uncaught exceptions and console errors). */
export async function openPage(browser: Browser): Promise<{ page: Page; errors: string[] }> {
  const page = await browser.newPage({ viewport: { width: 1440, height: 960 }, deviceScaleFactor: 1 })
  const errors: string[] = []
  page.on('pageerror', (error) => errors.push(`pageerror: ${error.message}`))
  page.on('console', (message) => {
    // logged by the browser itself: a refused WebSocket upgrade (the token test), a server away (the restart test)
    if (message.type() === 'error' && !/WebSocket connection|401|ERR_CONNECTION_REFUSED/.test(message.text())) errors.push(`console: ${message.text()}`)
  })
  return { page, errors }
}

/** The engine config of the synthetic run: one objective, a `>=` and a `<=` constraint. */
export const dashboardConfig = {
  groupSize: 4,
  batchGroups: 4,
  objectives: [{ channel: 'accuracy' }],
  constraints: [
    { channel: 'consistency', sense: '>=' as const, threshold: 0.9, sampleThreshold: 0.5, dual: { rule: 'sgd' as const, lr: 0.5, max: 5 } },
    { channel: 'toxicity', sense: '<=' as const, threshold: 0.1, sampleThreshold: 0.25, dual: { rule: 'sgd' as const, lr: 1, max: 5 } },
  ],
}

/** The synthetic run's config with 4 rollouts a step instead of 16: a long run streams quickly. */
export const longRunConfig = { ...dashboardConfig, groupSize: 2, batchGroups: 2 }

/**
 * Rollouts of steps `from` to `to` (exclusive) of a synthetic run that improves: accuracy and
 * consistency rise, toxicity falls, so λ climbs and then comes back down. `shape`: the config's
 * groups per batch and rollouts per group.
 */
export function syntheticSteps(from: number, to: number, total: number, shape: { groupSize: number; batchGroups: number } = dashboardConfig) {
  const { groupSize, batchGroups } = shape
  const random = mulberry32(from + 1)
  const out = []
  for (let s = from; s < to; s++) {
    const progress = s / total
    for (let p = 0; p < batchGroups; p++) {
      for (let i = 0; i < groupSize; i++) {
        out.push({
          id: `s${s}-p${p}-${i}`,
          promptId: `s${s}-p${p}`,
          rewards: {
            accuracy: Number(random() < 0.3 + 0.6 * progress),
            consistency: Number(random() < 0.55 + 0.44 * progress),
            toxicity: random() * 2 * Math.max(0.02, 0.3 - 0.32 * progress),
          },
        })
      }
    }
  }
  return out
}

/**
 * A trainer that acknowledges every batch it receives, by its step (so it also serves an
 * engine restarted on a data folder): keeps the outbox empty. `received` is the last step.
 */
export function ackingTrainer(url: string): Promise<{ received: () => number; close: () => void }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url)
    let step = 0
    ws.on('message', (data: Buffer) => {
      step = (unpackr.unpack(data) as { step: number }).step
      ws.send(ackFrame(step))
    })
    ws.once('open', () => resolve({ received: () => step, close: () => ws.close() }))
    ws.once('error', reject)
  })
}

const ackFrame = (step: number): Buffer => pack({ type: 'ack', step })
