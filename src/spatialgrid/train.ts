/**
 * A thin reference loop for SpatialGrid: stage 1 (supervised warm start on gold traces), stage 2
 * (GRPO or FGRPO), held-out evaluation. It exists to calibrate the task and the policy; the
 * product's loop runs the same pieces through the RxJS operator pipeline, whose core math
 * replaces the two small helpers below (group normalisation, sgd dual ascent).
 */
import { Adam } from '../policy/adam.js';
import { OnnxPolicy, type PolicyOptions } from '../policy/policy.js';
import type { ParamValues } from '../policy/params.js';
import { resolveSpatialGridConfig, type SpatialGridConfig, type SpatialGridSpec } from './config.js';
import { Rng, deriveSeed } from './rng.js';
import { goldRollouts, judgeRollouts, sampleRollouts, type Rollouts } from './rollout.js';
import { sampleScenes, type Scene } from './scene.js';

export type Method = 'grpo' | 'fgrpo';

export interface DualOptions {
  /** Dual step size η of λ ← clip(λ + η(τ − J), 0, λmax). Default 0.05. */
  readonly eta?: number;
  readonly lambdaMax?: number;
  readonly tauConsistency?: number;
  readonly tauGrounding?: number;
}

export interface TrainOptions {
  readonly method: Method;
  readonly seed: number;
  readonly task?: Partial<SpatialGridConfig>;
  readonly hidden?: readonly number[];
  /** Start stage 2 from these parameters and skip stage 1. */
  readonly initialParams?: ParamValues;
  readonly sftSteps?: number;
  readonly sftBatch?: number;
  readonly rlSteps?: number;
  readonly prompts?: number;
  readonly groupSize?: number;
  readonly lr?: number;
  /** Learning rate of the warm start (default lr). */
  readonly sftLr?: number;
  readonly maxGradNorm?: number;
  readonly dual?: DualOptions;
  readonly evalScenes?: number;
  readonly surrogate?: PolicyOptions['surrogate'];
  readonly executionProviders?: PolicyOptions['executionProviders'];
  readonly intraOpNumThreads?: number;
  /** Called every `progressEvery` RL steps (default 100) with batch metrics. */
  readonly onProgress?: (p: StepMetrics) => void;
  readonly progressEvery?: number;
}

export interface EvalMetrics {
  readonly accuracy: number;
  /** Share of rollouts with consistency 0 (the paper's inconsistency rate). */
  readonly inconsistency: number;
  readonly grounding: number;
}

export interface StepMetrics extends EvalMetrics {
  readonly step: number;
  readonly lambdaConsistency: number;
  readonly lambdaGrounding: number;
  readonly clipFraction: number;
}

export interface TrainResult {
  readonly afterWarmStart: EvalMetrics;
  readonly final: EvalMetrics;
  readonly lambda: { readonly consistency: number; readonly grounding: number };
  readonly seconds: { readonly warmStart: number; readonly rl: number; readonly perRlStep: number; readonly eval: number };
  readonly warmStartParams: ParamValues;
  readonly params: ParamValues;
}

const mean = (x: ArrayLike<number>): number => {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i];
  return x.length ? s / x.length : 0;
};

/** Group-relative advantage: (x − group mean) / (sample std + 1e-6); 0 for a group with std < 1e-6. */
export function groupNormalize(x: ArrayLike<number>, groupSize: number): Float64Array {
  const out = new Float64Array(x.length);
  for (let g0 = 0; g0 < x.length; g0 += groupSize) {
    let m = 0;
    for (let i = g0; i < g0 + groupSize; i++) m += x[i];
    m /= groupSize;
    let ss = 0;
    for (let i = g0; i < g0 + groupSize; i++) ss += (x[i] - m) ** 2;
    const sd = groupSize > 1 ? Math.sqrt(ss / (groupSize - 1)) : 0;
    if (sd < 1e-6) continue;
    for (let i = g0; i < g0 + groupSize; i++) out[i] = (x[i] - m) / (sd + 1e-6);
  }
  return out;
}

function repeatEach<T>(items: readonly T[], times: number): T[] {
  const out: T[] = [];
  for (const it of items) for (let k = 0; k < times; k++) out.push(it);
  return out;
}

/** Evaluate by sampling one trace per held-out scene (as the prototype: sampled, not greedy). */
export async function evaluate(policy: OnnxPolicy, scenes: readonly Scene[], rng: Rng, spec: SpatialGridSpec): Promise<EvalMetrics> {
  const j = judgeRollouts(await sampleRollouts(policy, scenes, rng, spec), spec);
  return { accuracy: mean(j.accuracy), inconsistency: 1 - mean(j.consistency), grounding: mean(j.grounding) };
}

/** Broadcast a per-sequence value onto every token row (step-major layout). */
function perToken(values: ArrayLike<number>, r: Rollouts, steps: number): Float32Array {
  const out = new Float32Array(steps * r.rows);
  for (let s = 0; s < steps; s++) for (let i = 0; i < r.rows; i++) out[s * r.rows + i] = values[i];
  return out;
}

export async function trainSpatialGrid(options: TrainOptions): Promise<TrainResult> {
  const spec = resolveSpatialGridConfig(options.task);
  const { seed, method } = options;
  const sftSteps = options.sftSteps ?? 400;
  const sftBatch = options.sftBatch ?? 128;
  const rlSteps = options.rlSteps ?? 6000;
  const prompts = options.prompts ?? 64;
  const G = options.groupSize ?? 8;
  const lr = options.lr ?? 3e-3;
  const eta = options.dual?.eta ?? 0.05;
  const lambdaMax = options.dual?.lambdaMax ?? 1;
  const tau = { consistency: options.dual?.tauConsistency ?? 0.98, grounding: options.dual?.tauGrounding ?? 0.95 };
  const evalScenes = sampleScenes(new Rng(deriveSeed(seed, 'eval-scenes')), options.evalScenes ?? 2000, spec);
  const policy = await OnnxPolicy.create({
    inputDim: spec.featureDim,
    vocab: spec.vocab,
    hidden: options.hidden,
    seed: deriveSeed(seed, 'init'),
    params: options.initialParams,
    surrogate: options.surrogate,
    executionProviders: options.executionProviders,
    intraOpNumThreads: options.intraOpNumThreads,
  });
  try {
    // Stage 1: warm start — identical for both methods at a given seed (its own streams).
    let t0 = performance.now();
    if (!options.initialParams) {
      const sftRng = new Rng(deriveSeed(seed, 'sft-scenes'));
      const adam = new Adam(policy.specs, { lr: options.sftLr ?? lr, maxGradNorm: options.maxGradNorm });
      const weights = new Float32Array(spec.steps * sftBatch).fill(1 / sftBatch);
      for (let it = 0; it < sftSteps; it++) {
        const r = goldRollouts(sampleScenes(sftRng, sftBatch, spec), spec);
        const { grads } = await policy.nllGradients({ rows: r.actions.length, features: r.features, mask: r.masks, actions: r.actions, weights });
        adam.step(policy.params, grads);
      }
    }
    const warmStartParams = structuredClone(policy.params);
    const warmSeconds = (performance.now() - t0) / 1000;
    const afterWarmStart = await evaluate(policy, evalScenes, new Rng(deriveSeed(seed, 'eval-sampling')), spec);

    // Stage 2: GRPO (accuracy only) or FGRPO (+ Lagrangian constraints on consistency, grounding).
    t0 = performance.now();
    const rng = new Rng(deriveSeed(seed, 'rl'));
    const adam = new Adam(policy.specs, { lr, maxGradNorm: options.maxGradNorm });
    const lambda = { consistency: 0, grounding: 0 };
    const rows = prompts * G;
    const weights = new Float32Array(spec.steps * rows).fill(1 / rows); // sequence-level advantage on every token
    for (let step = 1; step <= rlSteps; step++) {
      const r = await sampleRollouts(policy, repeatEach(sampleScenes(rng, prompts, spec), G), rng, spec);
      const j = judgeRollouts(r, spec);
      const adv = groupNormalize(j.accuracy, G);
      if (method === 'fgrpo') {
        for (const k of ['consistency', 'grounding'] as const) {
          lambda[k] = Math.min(Math.max(lambda[k] + eta * (tau[k] - mean(j[k])), 0), lambdaMax);
          const a = groupNormalize(j[k], G);
          for (let i = 0; i < rows; i++) adv[i] += lambda[k] * a[i];
        }
      }
      const res = await policy.surrogateGradients({
        rows: r.actions.length,
        features: r.features,
        mask: r.masks,
        actions: r.actions,
        advantages: perToken(adv, r, spec.steps),
        oldLogProbs: r.logProbs,
        weights,
      });
      adam.step(policy.params, res.grads);
      if (options.onProgress && step % (options.progressEvery ?? 100) === 0) {
        options.onProgress({
          step,
          accuracy: mean(j.accuracy),
          inconsistency: 1 - mean(j.consistency),
          grounding: mean(j.grounding),
          lambdaConsistency: lambda.consistency,
          lambdaGrounding: lambda.grounding,
          clipFraction: res.clipFraction,
        });
      }
    }
    const rlSeconds = (performance.now() - t0) / 1000;
    t0 = performance.now();
    const final = await evaluate(policy, evalScenes, new Rng(deriveSeed(seed, 'eval-sampling')), spec);
    return {
      afterWarmStart,
      final,
      lambda: { ...lambda },
      seconds: { warmStart: warmSeconds, rl: rlSeconds, perRlStep: rlSteps ? rlSeconds / rlSteps : 0, eval: (performance.now() - t0) / 1000 },
      warmStartParams,
      params: structuredClone(policy.params),
    };
  } finally {
    await policy.release();
  }
}
