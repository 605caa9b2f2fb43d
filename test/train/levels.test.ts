// Smoke tests of `eval --level hard` and `eval --ablation` at a tiny size: the wiring, the table,
// the JSON and the picture — not the figures (those need the full runs, see the README).
import { existsSync, mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { parseConfig } from '../../src/core/config.js'
import {
  ABLATION_ROWS,
  ablationMarkdown,
  formatAblation,
  formatAblationLevel,
  runAblation,
  summariseRow,
  type AblationLevelReport,
} from '../../src/apps/train/ablation.js'
import { ablationSvg } from '../../src/apps/train/curves.js'
import { accuracyGainBySeed, accuracySpread, formatEvaluation, formatTimings, hardLevelChecks, runEvaluation } from '../../src/apps/train/evaluation.js'
import { runEvalJob, type EvalRunResult } from '../../src/apps/train/evalWorker.js'
import { FGRPO_CONFIG, LEVEL_PRESETS, defaultDataDir, rlStepsFor } from '../../src/apps/train/presets.js'
import { SpatialGridTrainer } from '../../src/apps/train/trainer.js'
import { runCli } from '../support/cli.js'

const tempDir = () => mkdtempSync(join(tmpdir(), 'dualstream-levels-'))
const tiny = { sftSteps: 2, sftBatch: 8, hidden: [8], evalScenes: 20 }

t.test('eval --level hard in process: level in the report, the hard checks, accuracy spread, timings', async (t) => {
  const report = await runEvaluation({ level: 'hard', seeds: [0, 1], steps: 2, settings: tiny, inProcess: true })
  t.equal(report.level, 'hard')
  t.same(
    report.runs.map((r) => [r.method, r.seed, r.level]),
    [
      ['grpo', 0, 'hard'],
      ['fgrpo', 0, 'hard'],
      ['grpo', 1, 'hard'],
      ['fgrpo', 1, 'hard'],
    ],
  )
  t.same(
    report.checks.map((c) => c.name),
    [
      'GRPO shows the failure mode: inconsistency ≥ 20%',
      'FGRPO inconsistency ≤ 2%',
      'FGRPO grounding ≥ GRPO + 13 points',
      'FGRPO accuracy ≥ GRPO + 2 points (mean of seeds)',
      'FGRPO accuracy above GRPO on every seed',
    ],
  )
  t.equal(report.timings.steps, 8, 'four runs of two RL steps')
  t.ok(report.timings.total > 0 && report.timings.gradient > 0 && report.timings.forward > 0)
  const text = formatEvaluation(report)
  t.match(text, /accuracy over seeds: GRPO \d+\.\d–\d+\.\d \(sd \d+\.\d\), FGRPO/)
  t.match(text, 'level hard; held-out scenes per run: 20; 2 RL steps per run')
  t.match(text, /time per RL step \d+\.\d\d ms: .*ONNX gradient \d+%/)
})

t.test('RL steps: the ones asked for, else the level default', async (t) => {
  t.equal(rlStepsFor(undefined, undefined), 30_000)
  t.equal(rlStepsFor('hard', undefined), 5_000)
  t.equal(defaultDataDir('fgrpo', undefined), 'data/fgrpo')
  t.equal(defaultDataDir('grpo', 'easy'), 'data/grpo')
  t.equal(defaultDataDir('fgrpo', 'hard'), 'data/fgrpo-hard', 'a hard run has a folder of its own')
  t.equal(rlStepsFor('hard', 7), 7)
})

t.test('the hard checks and the per-seed gains', async (t) => {
  const run = (method: string, seed: number, accuracy: number) => ({ method, seed, final: { accuracy, inconsistencyRate: 0, grounding: 1 } }) as EvalRunResult
  const runs = [run('grpo', 0, 0.9), run('fgrpo', 0, 0.95), run('grpo', 1, 0.9), run('fgrpo', 1, 0.93)]
  t.same(
    accuracyGainBySeed(runs).map((g) => [g.seed, +g.gain.toFixed(2)]),
    [
      [0, 0.05],
      [1, 0.03],
    ],
  )
  const pass = hardLevelChecks({ accuracy: 0.9, inconsistencyRate: 0.3, grounding: 0.5 }, { accuracy: 0.94, inconsistencyRate: 0.01, grounding: 0.95 }, runs)
  t.same(
    pass.map((c) => c.pass),
    [true, true, true, true, true],
  )
  t.equal(pass[4].detail, 'seed 0 +5.0, seed 1 +3.0')
  const mixed = [...runs.slice(0, 2), run('grpo', 1, 0.95), run('fgrpo', 1, 0.9), run('fgrpo', 2, 1)]
  const fail = hardLevelChecks({ accuracy: 0.92, inconsistencyRate: 0.1, grounding: 0.9 }, { accuracy: 0.93, inconsistencyRate: 0.05, grounding: 0.9 }, mixed)
  t.same(
    fail.map((c) => c.pass),
    [false, false, false, false, false],
  )
  t.equal(fail[4].detail, 'seed 0 +5.0, seed 1 -5.0', 'a seed without both methods is left out')
  t.equal(
    hardLevelChecks({ accuracy: 0, inconsistencyRate: 0, grounding: 0 }, { accuracy: 1, inconsistencyRate: 0, grounding: 1 }, [])[4].pass,
    false,
    'no seed, no claim',
  )
  t.equal(accuracySpread([run('grpo', 0, 0.5), run('fgrpo', 0, 0.75)]), 'accuracy over seeds: GRPO 50.0–50.0 (sd 0.0), FGRPO 75.0–75.0 (sd 0.0)')
  t.match(
    formatTimings({ steps: 0, forward: 0, sampling: 0, judges: 0, pipeline: 0, gradient: 0, adam: 0, other: 0, total: 0 }),
    'time per RL step 0.00 ms: ONNX gradient 0%',
  )
})

t.test('ablation in process, both levels: every row, the table, the curves and the picture', async (t) => {
  const report = await runAblation({ levels: ['easy', 'hard'], seeds: [0], steps: { easy: 2, hard: 2 }, settings: tiny, historyEvery: 1, inProcess: true })
  t.same(
    report.levels.map((l) => [l.level, l.steps, l.rows.length, l.runs.length]),
    [
      ['easy', 2, 10, 10],
      ['hard', 2, 10, 10],
    ],
  )
  const hard = report.levels[1]
  t.same(
    hard.rows.map((r) => r.id),
    ABLATION_ROWS.map((r) => r.id),
  )
  for (const run of hard.runs) t.same(run.history?.step, [1, 2], `${run.method}: one window per step`)
  const byId = Object.fromEntries(hard.rows.map((r) => [r.id, r]))
  t.same(byId.grpo.lambda, {})
  t.same(Object.keys(byId['fgrpo-pid'].lambda), ['consistency', 'grounding'])
  t.equal(byId['fixed-0.1'].fixedLambda, 0.1)
  t.same(Object.keys(hard.runs.find((r) => r.method === 'fgrpo-sgd')!.history!.lambda), ['consistency', 'grounding'])
  const text = formatAblation(report)
  for (const row of ABLATION_ROWS) t.match(text, row.label)
  t.match(text, /level easy: 2 RL steps per run, seeds 0/)
  t.match(text, /fixed 0\.1/)
  t.match(text, /never/)
  const svg = ablationSvg(hard)
  t.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/)
  t.equal((svg.match(/<polyline /g) ?? []).length, 6 + 6 + 3 * 2 + 2, 'accuracy and inconsistency of 6 rows; λ of 3 FGRPO rows × 2 channels, 2 fixed')
  t.match(svg, 'FGRPO, pid (OmniSafe defaults)')
  t.match(ablationMarkdown(hard), /^\| row \| accuracy/)
})

t.test('ablation table: steps to meet, a row that never ran, markdown', async (t) => {
  const row = {
    id: 'fgrpo-sgd',
    label: 'FGRPO',
    accuracy: 0.9,
    inconsistencyRate: 0.01,
    grounding: 0.96,
    stepsToMeet: 120,
    firstMet: [120],
    lambda: { consistency: 0.5 },
    seconds: 3,
    accuracyBySeed: [0.9],
  }
  const level: AblationLevelReport = {
    level: 'easy',
    steps: 10,
    rows: [row],
    runs: [],
    timings: { steps: 1, forward: 1, sampling: 0, judges: 0, pipeline: 0, gradient: 2, adam: 0, other: 0, total: 3 },
  }
  t.match(formatAblationLevel(level, [0]), /FGRPO +90\.0% +1\.0% +96\.0% +120 +c 0\.500 +3 s/)
  t.match(ablationMarkdown(level), '| FGRPO | 90.0% | 1.0% | 96.0% | 120 | c 0.500 | 3 s |')
  t.match(ablationSvg(level), '0 RL steps'.replace('0', '10'), 'no runs, no curves: an empty picture')
  await t.rejects(runAblation({ levels: ['easy'], seeds: [0], steps: {}, rows: ['grpo'] }), /ablation: no RL steps given for level easy/)
  await t.rejects(
    runAblation({ levels: ['easy'], seeds: [0], steps: { easy: 1 }, rows: ['grpo', 'nope'] }),
    /ablation: no row named nope \(the rows: grpo, sum-then-normalize/,
  )
})

t.test('eval jobs: steps to meet both constraints are counted; an unknown method without config is refused', async (t) => {
  const never = await runEvalJob({ method: 'fgrpo', seed: 0, steps: 3, level: 'hard', settings: { ...tiny, sftSteps: 0 } })
  t.equal(never.firstMet, null, 'an untrained policy meets nothing')
  // batches of two rollouts after a warm start: one of them soon has both right, grounded and consistent
  const small = await runEvalJob({
    method: 'small',
    config: { ...FGRPO_CONFIG, groupSize: 2, batchGroups: 1 },
    seed: 0,
    steps: 50,
    settings: { sftSteps: 400, sftBatch: 32, hidden: [32], evalScenes: 20 },
    historyEvery: 20,
  })
  t.ok(Number.isInteger(small.firstMet) && small.firstMet! >= 1 && small.firstMet! <= 50, `first met at step ${small.firstMet}`)
  t.same(small.history?.step, [20, 40, 50], 'windows of 20 steps, the last one shorter')
  const row = summariseRow(ABLATION_ROWS[4], [small, { ...small, firstMet: 31 }])
  t.equal(row.stepsToMeet, (small.firstMet! + 31) / 2, 'the mean over seeds when every seed met them')
  t.equal(summariseRow(ABLATION_ROWS[4], [small, never]).stepsToMeet, null, 'null when a seed never did')
  await t.rejects(runEvalJob({ method: 'nope', seed: 0, steps: 1 }), /eval job 'nope': not a preset \(fgrpo, grpo\) and no config given/)
})

t.test('eval --level hard and --ablation from the CLI (child processes), and train --level hard', async (t) => {
  const dir = tempDir()
  const json = join(dir, 'hard.json')
  const hard = await runCli([
    'eval',
    '--level',
    'hard',
    '--seeds',
    '3',
    '--steps',
    '1',
    '--parallel',
    '2',
    '--warm-steps',
    '2',
    '--scenes',
    '20',
    '--json',
    json,
  ])
  t.equal(hard.code, 0, hard.stderr)
  t.match(hard.stdout, 'dualstream eval — GRPO and FGRPO on level hard, seeds 3, 1 RL steps each')
  t.match(hard.stdout, /(PASS|FAIL) {2}FGRPO accuracy above GRPO on every seed/)
  const report = JSON.parse(readFileSync(json, 'utf8'))
  t.equal(report.level, 'hard')
  t.same(Object.keys(report.grpo), ['accuracy', 'inconsistencyRate', 'grounding', 'lambda'])

  const artifacts = join(dir, 'artifacts')
  const ablationJson = join(dir, 'ablation-copy.json')
  const argv = ['eval', '--ablation', '--level', 'hard', '--rows', 'grpo,fgrpo-sgd', '--seeds', '0', '--steps', '1', '--warm-steps', '2', '--scenes', '20']
  const ablation = await runCli([...argv, '--parallel', '2', '--artifacts', artifacts, '--json', ablationJson])
  t.equal(ablation.code, 0, ablation.stderr)
  t.match(ablation.stdout, 'dualstream eval --ablation — levels hard (1 RL steps), seeds 0')
  t.match(ablation.stdout, /\[2\/2\] hard (grpo|fgrpo-sgd) seed 0/)
  t.match(ablation.stdout, /GRPO \(accuracy only\) +\d+\.\d%/)
  t.ok(existsSync(join(artifacts, 'ablation-hard.svg')))
  const saved = JSON.parse(readFileSync(join(artifacts, 'ablation.json'), 'utf8'))
  t.same(
    saved.levels.map((l: AblationLevelReport) => l.rows.map((r) => r.id)),
    [['grpo', 'fgrpo-sgd']],
  )
  t.same(JSON.parse(readFileSync(ablationJson, 'utf8')), saved)
  const defaults = await runCli([
    'eval',
    '--ablation',
    '--rows',
    'grpo',
    '--seeds',
    '0',
    '--steps',
    '0',
    '--warm-steps',
    '1',
    '--scenes',
    '5',
    '--artifacts',
    artifacts,
  ])
  t.equal(defaults.code, 0, defaults.stderr)
  t.match(defaults.stdout, 'levels easy (0 RL steps), hard (0 RL steps)', 'both levels without --level')
  t.equal((await runCli(['eval', '--level', 'medium'])).code, 2)

  // a hard run past a tiny warm start, so that the CLI's run is one RL step
  const data = join(dir, 'train')
  const warm = await SpatialGridTrainer.create({ config: parseConfig(FGRPO_CONFIG), seed: 0, settings: tiny, dataDir: data, task: LEVEL_PRESETS.hard.task })
  await warm.warmStart()
  await warm.close()
  const train = await runCli(['train', '--level', 'hard', '--steps', '1', '--no-dashboard', '--data', data])
  t.equal(train.code, 0, train.stderr)
  t.match(train.stdout, 'dualstream train — fgrpo (SpatialGrid level hard)')
  t.match(train.stdout, /at RL step 1 /)
  const again = await runCli(['train', '--steps', '1', '--no-dashboard', '--data', data])
  t.equal(again.code, 1, 'an easy run refuses the hard checkpoint')
  t.match(again.stderr, /saved run is SpatialGrid level hard \(grid 6, 8 types, 6 objects\), this one level easy \(grid 4, 4 types, 3 objects\)/)
})

t.test('a checkpoint from before there were levels resumes as the easy level', async (t) => {
  const dataDir = tempDir()
  const config = parseConfig({ ...FGRPO_CONFIG, batchGroups: 2 })
  const first = await SpatialGridTrainer.create({ config, seed: 0, settings: tiny, dataDir })
  t.equal(first.spec.level, 'easy')
  await first.warmStart()
  // what an older build saved: no task in the meta
  delete (first as unknown as { meta: { task?: unknown } }).meta.task
  await first.checkpoint()
  await first.close()
  const resumed = await SpatialGridTrainer.create({ config, seed: 0, settings: tiny, dataDir, task: LEVEL_PRESETS.easy.task })
  t.ok(resumed.warmStarted)
  await resumed.close()
  await t.rejects(SpatialGridTrainer.create({ config, seed: 0, settings: tiny, dataDir, task: LEVEL_PRESETS.hard.task }), /saved run is SpatialGrid level easy/)
})
