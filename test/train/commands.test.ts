import { spawn } from 'node:child_process'
import { cpSync, existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { acceptanceChecks, formatEvaluation, runEvaluation, runInChild } from '../../src/apps/train/evaluation.js'
import { formatTrainSummary } from '../../src/apps/train/commands.js'
import { mainScript, runCli } from '../support/cli.js'

const tempDir = () => mkdtempSync(join(tmpdir(), 'dualstream-cmd-'))

/** A state folder past its warm start (the first test's), for the tests that only need RL steps. */
let warmStarted: string | undefined

t.test('train: warm start, RL steps, summary table, exported policy; a second run continues', async (t) => {
  const data = tempDir()
  const first = await runCli(['train', '--steps', '3', '--data', data])
  t.equal(first.code, 0, first.stderr)
  t.match(first.stdout, 'dualstream train — fgrpo: objectives accuracy×1; constraints consistency >= 0.98, grounding >= 0.95')
  t.match(first.stdout, `state: ${data} (new run)`)
  t.match(first.stdout, /warm start: 500 supervised steps on gold traces in \d+\.\d s\n/)
  t.match(first.stdout, /after warm start +\d+\.\d% +\d+\.\d% +\d+\.\d%/)
  t.match(first.stdout, 'RL: steps 1 to 3; Ctrl-C stops after the current step and saves')
  t.match(first.stdout, /at RL step 3 /)
  t.match(first.stdout, /λ at the end: consistency \d\.\d{3}, grounding \d\.\d{3}/)
  t.ok(existsSync(join(data, 'policy.onnx')))
  const second = await runCli(['train', '--steps', '2', '--data', data])
  t.equal(second.code, 0, second.stderr)
  t.match(second.stdout, `state: ${data} (resuming after RL step 3)`)
  t.match(second.stdout, /now at RL step 5/)
  t.notMatch(second.stdout, 'after warm start', 'the warm start is not repeated')
  t.notMatch(second.stdout, 'supervised steps')
  warmStarted = tempDir()
  cpSync(data, warmStarted, { recursive: true })

  const config = join(data, 'grpo.json')
  writeFileSync(config, JSON.stringify({ groupSize: 4, batchGroups: 2, objectives: [{ channel: 'accuracy' }] }))
  const custom = await runCli(['train', '--config', config, '--steps', '1', '--data', join(data, 'custom')])
  t.equal(custom.code, 0, custom.stderr)
  t.match(custom.stdout, 'dualstream train — grpo: objectives accuracy×1; constraints none')
  t.match(custom.stdout, 'λ: none (no constraints)')
  t.equal((await runCli(['train', '--steps', 'many'])).code, 2)
})

t.test('train: the default state folder is data/<method>; --steps 0 only warms up', async (t) => {
  const cwd = process.cwd()
  process.chdir(tempDir())
  t.teardown(() => process.chdir(cwd))
  const warm = await runCli(['train', '--method', 'grpo', '--steps', '0', '--no-dashboard'])
  t.equal(warm.code, 0, warm.stderr)
  t.match(warm.stdout, /state: .*data\/grpo \(new run\)/)
  t.notMatch(warm.stdout, 'RL: steps', 'no RL steps to announce')
  t.ok(existsSync(join('data', 'grpo', 'policy.onnx')))
  const again = await runCli(['train', '--method', 'grpo', '--steps', '0', '--no-dashboard'])
  t.match(again.stdout, /state: .*data\/grpo \(warm start done\)/)
})

t.test('train: Ctrl-C stops after the current step, saves, summarises and exits 0', async (t) => {
  // resumes the first test's state (past its warm start at RL step 5) so the run reaches RL quickly
  const data = tempDir()
  if (warmStarted !== undefined) cpSync(warmStarted, data, { recursive: true })
  const child = spawn(process.execPath, [...process.execArgv, mainScript, 'train', '--steps', '1000000', '--data', data, '--no-dashboard'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let stdout = ''
  let interrupted = false
  child.stdout.on('data', (c: Buffer) => {
    stdout += c.toString()
    // the line is written just before the first RL step starts: Ctrl-C now stops after that step
    if (!interrupted && /RL: steps \d+ to \d+;/.test(stdout)) {
      interrupted = true
      child.kill('SIGINT')
    }
  })
  const code = await new Promise((resolve) => child.on('close', resolve))
  t.equal(code, 0)
  t.ok(interrupted, 'the run announced its RL steps')
  const from = Number(/RL: steps (\d+) to/.exec(stdout)?.[1])
  const steps = Number(/now at RL step (\d+)/.exec(stdout)?.[1])
  t.ok(steps >= from && steps < 1_000_000, `stopped at RL step ${steps} (started at ${from})`)
  t.match(stdout, `run again to continue from step ${steps}`)
})

t.test('eval: both methods per seed in child processes, the table and the JSON', async (t) => {
  const json = join(tempDir(), 'eval.json')
  // small runs: the wiring is under test, not the figures (the in-process test below checks those)
  const result = await runCli(['eval', '--seeds', '4', '--steps', '2', '--parallel', '2', '--warm-steps', '20', '--scenes', '50', '--json', json])
  t.equal(result.code, 0, result.stderr)
  t.match(result.stdout, 'dualstream eval — GRPO and FGRPO, seeds 4, 2 RL steps each')
  t.match(result.stdout, /\[2\/2\] (grpo|fgrpo) seed 4/)
  t.match(result.stdout, /method +seed +accuracy +inconsistency +grounding +λ at the end/)
  t.match(result.stdout, /FGRPO +mean/)
  t.match(result.stdout, /(PASS|FAIL) {2}FGRPO inconsistency ≤ 2%/)
  t.match(result.stdout, 'held-out scenes per run: 50; 2 RL steps per run')
  const report = JSON.parse(readFileSync(json, 'utf8'))
  t.same(Object.keys(report.grpo), ['accuracy', 'inconsistencyRate', 'grounding', 'lambda'])
  t.same(report.seeds, [4])
  t.equal(report.runs.length, 2)
  t.same(report.grpo.lambda, {})
  t.same(Object.keys(report.fgrpo.lambda), ['consistency', 'grounding'])
  t.same(report.runs[0].settings, { sftSteps: 20, evalScenes: 50 })
  t.equal((await runCli(['eval', '--scenes', '0'])).code, 2, 'at least one held-out scene')
})

t.test('a training that fails in its worker process fails the evaluation, naming the run', async (t) => {
  await t.rejects(runEvaluation({ seeds: [0], steps: 1, settings: { hidden: [-1] }, parallel: 1 }), /^(grpo|fgrpo) seed 0: Error: .*hidden/)
})

t.test('a worker that dies without a word fails its run', async (t) => {
  const script = join(tempDir(), 'dies.mjs')
  writeFileSync(script, 'process.exit(3)\n')
  await t.rejects(runInChild({ method: 'fgrpo', seed: 9, steps: 1 }, script), /fgrpo seed 9: the worker exited with code 3 before reporting/)
})

t.test('in-process evaluation, the checks and the table', async (t) => {
  const report = await runEvaluation({ seeds: [0], steps: 1, settings: { sftSteps: 5, sftBatch: 8, hidden: [8], evalScenes: 50 }, inProcess: true })
  t.equal(report.runs.length, 2)
  t.equal(report.runs[0].settings?.evalScenes, 50)
  t.match(formatEvaluation(report), 'held-out scenes per run: 50; 1 RL steps per run')
  const withDefaults = { ...report, runs: report.runs.map((run) => ({ ...run, settings: {} })) }
  t.match(formatEvaluation(withDefaults), 'held-out scenes per run: 2000;', 'the default when the runs did not set it')
  const checks = acceptanceChecks({ accuracy: 0.999, inconsistencyRate: 0.25, grounding: 0.4 }, { accuracy: 0.995, inconsistencyRate: 0.01, grounding: 0.95 })
  t.same(
    checks.map((c) => c.pass),
    [true, true, true, true],
  )
  t.same(
    acceptanceChecks({ accuracy: 1, inconsistencyRate: 0.1, grounding: 0.9 }, { accuracy: 0.9, inconsistencyRate: 0.05, grounding: 0.9 }).map((c) => c.pass),
    [false, false, false, false],
  )
  t.match(formatTrainSummary([{ label: 'x', metrics: { accuracy: NaN, inconsistencyRate: 0, grounding: 1 } }], {}), /x +– +0\.0% +100\.0%/)
})
