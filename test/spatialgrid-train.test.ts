import t from 'tap';
import { DEFAULT_TRAIN_SETTINGS, groupNormalize, resolveTrainSettings, trainSpatialGrid, type StepMetrics } from '../src/spatialgrid/train.js';

t.test('groupNormalize: sample std per group, zero for flat groups', async (t) => {
  const a = groupNormalize([1, 0, 0, 1, 1, 1, 1, 1], 4);
  const sd = Math.sqrt(1 / 3); // values {1,0,0,1}: mean 0.5, sample variance 1/3
  t.same(Array.from(a.subarray(0, 4)).map((x) => +x.toFixed(6)), [0.5, -0.5, -0.5, 0.5].map((x) => +(x / (sd + 1e-6)).toFixed(6)));
  t.same(Array.from(a.subarray(4)), [0, 0, 0, 0], 'a group with std 0 contributes nothing');
  t.same(Array.from(groupNormalize([3, 5], 1)), [0, 0], 'groups of one contribute nothing');
});

t.test('settings: calibrated defaults, overrides, errors naming the setting', async (t) => {
  t.same(resolveTrainSettings(), DEFAULT_TRAIN_SETTINGS);
  t.match(resolveTrainSettings({ rlSteps: 10, dual: { eta: 0.01 } }), { rlSteps: 10, sftSteps: 500, dual: { eta: 0.01, lambdaMax: 1, tauConsistency: 0.98, tauGrounding: 0.95 } });
  t.throws(() => resolveTrainSettings({ groupSize: 1 }), /groupSize must be an integer ≥ 2 \(got 1\)/);
  t.throws(() => resolveTrainSettings({ evalScenes: 0 }), /evalScenes must be an integer ≥ 1/);
  t.throws(() => resolveTrainSettings({ lr: -1 }), /lr must be > 0 \(got -1\)/);
  t.throws(() => resolveTrainSettings({ dual: { eta: -0.1 } }), /dual\.eta and dual\.lambdaMax must be ≥ 0/);
});

t.test('trainSpatialGrid: warm start learns; GRPO and FGRPO run from the same start', async (t) => {
  const common = { seed: 3, hidden: [32], sftSteps: 150, sftBatch: 64, rlSteps: 4, prompts: 4, groupSize: 4, evalScenes: 200, lr: 1e-2, maxGradNorm: 5 } as const;
  const progress: StepMetrics[] = [];
  const grpo = await trainSpatialGrid({ ...common, method: 'grpo', progressEvery: 2, onProgress: (p) => progress.push(p) });
  t.ok(grpo.afterWarmStart.grounding > 0.3, `warm start grounds claims (${grpo.afterWarmStart.grounding}; a uniform policy gets 0.125)`);
  t.same(progress.map((p) => p.step), [2, 4]);
  t.same(grpo.lambda, { consistency: 0, grounding: 0 }, 'GRPO has no multipliers');
  t.ok(grpo.seconds.perRlStep > 0);
  const fgrpo = await trainSpatialGrid({ ...common, method: 'fgrpo', dual: { eta: 0.5, lambdaMax: 2, tauConsistency: 1, tauGrounding: 1 } });
  t.same(fgrpo.warmStartParams, grpo.warmStartParams, 'identical warm start at a given seed');
  t.ok(fgrpo.lambda.consistency > 0 && fgrpo.lambda.grounding > 0, 'unmet constraints raise λ');
  t.ok(fgrpo.lambda.consistency <= 2 && fgrpo.lambda.grounding <= 2, 'λ capped at λmax');
  for (const r of [grpo.final, fgrpo.final]) for (const v of Object.values(r)) t.ok(v >= 0 && v <= 1);

  // resuming stage 2 from given parameters skips the warm start
  const resumed = await trainSpatialGrid({ ...common, method: 'grpo', rlSteps: 0, initialParams: grpo.warmStartParams });
  t.same(resumed.afterWarmStart, grpo.afterWarmStart, 'same parameters, same held-out evaluation');
  t.ok(resumed.seconds.perRlStep < 0.05, 'no RL steps');
});
