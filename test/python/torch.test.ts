/**
 * examples/python/torch_fgrpo.py end to end: a torch policy trained through `dualstream serve`
 * (started by the script), rollouts from worker processes (dualstream_client.Producer) and two
 * trainer ranks (dualstream_client.Trainer, gloo all-reduce). FGRPO must learn the task and
 * hold the format constraint; plain GRPO learns to hedge and breaks it; a rank killed between
 * its checkpoint and its ack resumes without training a step twice. ≈ 40–55 s here (2 cores).
 */
import { execFile } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import t, { type Test } from 'tap'
import { PYTHON, pythonMissing } from '../support/python.js'

const script = fileURLToPath(new URL('../../examples/python/torch_fgrpo.py', import.meta.url))
const missing = pythonMissing(['torch', 'numpy', 'msgpack', 'websockets'], ['python3-torch', 'python3-numpy', 'python3-msgpack', 'python3-websockets'])
const run = promisify(execFile)
// two trainings of ≈ 12–15 s each here; more under the load of a full suite
t.setTimeout(300_000)

interface Window {
  steps: [number, number]
  accuracy: number
  format: number
  strict: number
  lambda: number | null
}
interface Summary {
  settings: { method: string; steps: number; ranks: number; max_async: number | null }
  steps: { step: number; rollouts: number; engineFormat: number | null; format: number; lambda: number | null }[]
  windows: Window[]
  stale: { engineDropped: number; refused: number }
  rollouts: { generated: number; trained: number }
}

/** Runs the script with its own serve; each run takes ≈ 12–15 s here (2 cores). */
async function train(t: Test, method: 'fgrpo' | 'grpo', steps: number, extra: string[]): Promise<Summary> {
  const dir = mkdtempSync(join(tmpdir(), 'dualstream-torch-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const out = join(dir, `${method}.json`)
  const args = [
    script,
    '--serve',
    '--method',
    method,
    '--steps',
    String(steps),
    '--group-size',
    '8',
    '--batch-groups',
    '16',
    '--workers',
    '2',
    '--report-every',
    '20',
  ]
  // the serve it starts runs on this very node
  const { stdout } = await run(PYTHON, [...args, '--node', process.execPath, ...extra, '--json', out], { timeout: 240_000 })
  t.comment(stdout.trimEnd())
  return JSON.parse(readFileSync(out, 'utf8')) as Summary
}

const fixed = (x: number) => x.toFixed(3)

t.test('FGRPO through serve, 2 ranks, maxAsync 1: accuracy rises and the format constraint holds', { skip: missing }, async (t) => {
  const summary = await train(t, 'fgrpo', 80, ['--ranks', '2', '--max-async', '1'])
  t.equal(summary.settings.ranks, 2)
  t.same(
    summary.steps.map((s) => s.step),
    Array.from({ length: 80 }, (_, i) => i + 1),
    'every step trained once, in order',
  )
  t.ok(
    summary.steps.every((s) => s.rollouts === 128),
    'the two shards of every batch together hold all its rollouts',
  )
  // the engine measures the constraint from the rewards; the trainer judges the same completions from the payload's tokens
  t.ok(
    summary.steps.every((s) => s.engineFormat !== null && Math.abs(s.engineFormat - s.format) < 1e-9),
    'the engine’s format mean equals the rate judged from the payloads’ tokens',
  )
  const first = summary.windows[0]
  const last = summary.windows.at(-1)!
  t.ok(last.accuracy > first.accuracy + 0.3, `accuracy rises: ${fixed(first.accuracy)} → ${fixed(last.accuracy)}`)
  t.ok(last.strict > first.strict + 0.3, `single right answers rise: ${fixed(first.strict)} → ${fixed(last.strict)}`)
  t.ok(last.format >= 0.93, `the format rate holds: ${fixed(last.format)} over steps ${last.steps.join('-')} (threshold 0.95)`)
  t.ok(
    summary.steps.some((s) => (s.lambda ?? 0) > 0),
    'λ rose when the format rate fell below the threshold',
  )
  // admission by maxAsync (1) within maxStaleness (2): a logged rollout is never too stale for the pipeline
  t.equal(summary.stale.engineDropped, 0, 'no rollout dropped as stale by the engine')
  t.comment(`stale refused at ingest: ${summary.stale.refused}; trained ${summary.rollouts.trained} of ${summary.rollouts.generated} generated`)
})

t.test('plain GRPO through serve learns to hedge: the format rate collapses', { skip: missing }, async (t) => {
  const summary = await train(t, 'grpo', 100, ['--ranks', '1'])
  const first = summary.windows[0]
  const last = summary.windows.at(-1)!
  t.ok(last.accuracy > first.accuracy + 0.3, `judged accuracy rises: ${fixed(first.accuracy)} → ${fixed(last.accuracy)}`)
  // how far it falls depends on the workers' timing (asynchronous, unseeded): 0.09–0.63 by step 100
  // in runs here; FGRPO holds it above 0.93 with the same budget (the test above)
  t.ok(
    last.format < first.format - 0.25 && last.format < 0.8,
    `the format rate collapses, far below the 0.95 FGRPO holds: ${fixed(first.format)} → ${fixed(last.format)}`,
  )
  t.ok(
    summary.steps.every((s) => s.lambda === null && s.engineFormat === null),
    'no λ: the format channel is only reported',
  )
  t.comment(`without maxAsync (workers sync every 32 groups): ${summary.stale.engineDropped} rollouts dropped as stale by the engine`)
})

t.test('a rank killed between its checkpoint and its ack: the run resumes, each step trained once, the ranks equal', { skip: missing }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dualstream-torch-resume-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const runDir = join(dir, 'run')
  const out = join(dir, 'resumed.json')
  const args = [script, '--serve', '--node', process.execPath, '--steps', '12', '--batch-groups', '8', '--ranks', '2', '--max-async', '1', '--run-dir', runDir]
  const crashed = await run(PYTHON, [...args, '--crash-after-checkpoint', '6'], { timeout: 120_000 }).catch((error: { code: number; stderr: string }) => error)
  t.equal((crashed as { code: number }).code, 1, 'the first run stops when its rank dies')
  t.match((crashed as { stderr: string }).stderr, /a trainer rank exited with code 3/, 'the orchestrator says which process died')
  t.match(JSON.parse(readFileSync(join(runDir, 'trainer-rank1.json'), 'utf8')), { lastStep: 5 }, 'the killed rank had acknowledged step 5, not 6')

  await run(PYTHON, [...args, '--json', out], { timeout: 120_000 })
  const summary = JSON.parse(readFileSync(out, 'utf8')) as Summary
  t.same(
    summary.steps.map((s) => s.step),
    Array.from({ length: 12 }, (_, i) => i + 1),
    'steps 1..12 trained, the one cut short included',
  )
  for (const rank of [0, 1]) {
    t.match(
      JSON.parse(readFileSync(join(runDir, `trainer-rank${rank}.json`), 'utf8')),
      { lastStep: 12, policyVersion: 12 },
      `rank ${rank} acknowledged step 12`,
    )
  }
  // had a rank trained a step twice, or the ranks paired different steps in an all-reduce, their weights would differ
  const compare = `import torch, sys
a, b = (torch.load(f"${runDir}/checkpoints/rank{r}-step12.pt")["policy"] for r in (0, 1))
sys.exit(0 if all(torch.equal(a[k], b[k]) for k in a) else 1)`
  await run(PYTHON, ['-c', compare])
  t.pass('both ranks end with the same weights')
})
