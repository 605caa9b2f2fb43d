import { existsSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { parseConfig } from '../../src/core/config.js'
import { FGRPO_CONFIG, GRPO_CONFIG } from '../../src/apps/train/presets.js'
import { SpatialGridTrainer, type StepReport } from '../../src/apps/train/trainer.js'

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length
const tempDir = () => mkdtempSync(join(tmpdir(), 'dualstream-train-'))

t.test('smoke: after the warm start, GRPO raises the reward within a few dozen steps', async (t) => {
  const trainer = await SpatialGridTrainer.create({ config: parseConfig(GRPO_CONFIG), seed: 0 })
  await trainer.warmStart()
  const before = await trainer.evaluate(1000)
  const accuracy: number[] = []
  await trainer.train(60, (r) => accuracy.push(r.metrics.accuracy))
  const after = await trainer.evaluate(1000)
  t.ok(
    mean(accuracy.slice(-10)) > mean(accuracy.slice(0, 10)) + 0.02,
    `batch accuracy ${mean(accuracy.slice(0, 10)).toFixed(3)} → ${mean(accuracy.slice(-10)).toFixed(3)}`,
  )
  t.ok(after.accuracy > before.accuracy, `held-out accuracy ${before.accuracy} → ${after.accuracy}`)
  t.same(trainer.lambda, {}, 'GRPO has no multipliers')
  t.equal(trainer.rlSteps, 60)
  await trainer.close()
})

t.test('FGRPO: the rollouts go through the pipeline; unmet constraints raise λ, within λmax', async (t) => {
  const config = parseConfig({ ...FGRPO_CONFIG, batchGroups: 8 })
  const trainer = await SpatialGridTrainer.create({ config, seed: 1, settings: { sftSteps: 50, sftBatch: 32, hidden: [32] } })
  await trainer.warmStart()
  const reports: StepReport[] = []
  await trainer.train(5, (r) => reports.push(r))
  t.same(
    reports.map((r) => [r.step, r.policyVersion]),
    [
      [1, 1],
      [2, 2],
      [3, 3],
      [4, 4],
      [5, 5],
    ],
  )
  const first = reports[0]
  t.equal(first.batch.rolloutCount, 64, '8 prompts × G = 8 in one batch')
  t.equal(first.batch.groups.length, 8)
  t.ok(first.batch.constraints.consistency.mean < 0.98)
  t.ok(first.batch.lambda.consistency.after > first.batch.lambda.consistency.before, 'λ rises on a violated constraint')
  t.ok(reports.every((r) => r.batch.lambda.consistency.after <= 1 && r.batch.lambda.grounding.after <= 1))
  t.equal(trainer.lambda.consistency, reports[4].batch.lambda.consistency.after)
  t.ok(Number.isFinite(first.learner.loss) && first.learner.gradNorm > 0 && first.learner.clipFraction >= 0 && first.ms > 0)
  const sample = first.sample()
  t.match(sample, { grid: 4, objects: Array, claims: Array })
  await trainer.close()
})

t.test('a resumed run is exactly an uninterrupted one', async (t) => {
  const config = parseConfig({ ...FGRPO_CONFIG, batchGroups: 4 })
  const settings = { sftSteps: 20, sftBatch: 16, hidden: [16], checkpointEvery: 2 }
  const straight = await SpatialGridTrainer.create({ config, seed: 7, settings })
  await straight.warmStart()
  await straight.train(6)
  const dataDir = tempDir()
  let resumed = await SpatialGridTrainer.create({ config, seed: 7, settings, dataDir })
  await resumed.warmStart()
  await resumed.train(4)
  await resumed.close()
  resumed = await SpatialGridTrainer.create({ config, seed: 999, settings, dataDir })
  t.equal(resumed.rlSteps, 4, 'the seed of a saved run is its own')
  await resumed.warmStart()
  await resumed.train(2)
  t.same(resumed.policy.params, straight.policy.params, 'parameters, Adam, λ and the RNG all carried over')
  t.same(resumed.lambda, straight.lambda)
  await resumed.exportOnnx(join(dataDir, 'policy.onnx'))
  t.ok(existsSync(join(dataDir, 'policy.onnx')))
  await resumed.close()
  await straight.close()

  await t.rejects(
    SpatialGridTrainer.create({ config: parseConfig(GRPO_CONFIG), seed: 7, settings, dataDir }),
    /does not fit this config \(use another --data folder\):\n {2}constraint "consistency": in the saved state, not in the config/,
  )
  await t.rejects(
    SpatialGridTrainer.create({ config: parseConfig(FGRPO_CONFIG), seed: 7, settings, dataDir }),
    /saved run used groupSize 8 × batchGroups 4, the config says 8 × 64/,
  )
})

t.test('an abort stops after the current step, with a checkpoint', async (t) => {
  const dataDir = tempDir()
  const config = parseConfig({ ...GRPO_CONFIG, batchGroups: 2 })
  const abort = new AbortController()
  const trainer = await SpatialGridTrainer.create({ config, seed: 0, settings: { sftSteps: 0, hidden: [8] }, dataDir })
  await trainer.train(100, (r) => r.step === 3 && abort.abort(), abort.signal)
  t.equal(trainer.rlSteps, 3)
  await trainer.close()
  const again = await SpatialGridTrainer.create({ config, seed: 0, settings: { sftSteps: 0, hidden: [8] }, dataDir })
  t.equal(again.rlSteps, 3)
  await again.close()
})

t.test('a config naming channels the task does not score is refused', async (t) => {
  const config = parseConfig({
    groupSize: 2,
    batchGroups: 1,
    objectives: [{ channel: 'accuracy' }],
    constraints: [{ channel: 'length', sense: '<=', threshold: 1, dual: { rule: 'sgd', lr: 1 } }],
  })
  await t.rejects(SpatialGridTrainer.create({ config, seed: 0 }), /the built-in task scores accuracy, consistency, grounding; the config also names length/)
})
