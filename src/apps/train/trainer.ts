/**
 * The built-in online training on SpatialGrid (DESIGN §7): stage 1, a supervised warm start on
 * gold traces; stage 2, online RL where the actor's rollouts go through the same `fgrpo`
 * operator pipeline as external rollouts, and each scored batch drives one learner update
 * (clipped surrogate gradient on onnxruntime, Adam in TypeScript), which publishes a new
 * policy version for the actor. GRPO and FGRPO differ only in the engine config.
 */
import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { Subject, type Subscription } from 'rxjs'
import { configChannels, type Config } from '../../core/config.js'
import { dualStateProblems, initialDualState, lambdasOf } from '../../math/dual.js'
import { Adam, type AdamState } from '../../models/policy/adam.js'
import { CheckpointStore } from '../../models/policy/checkpoint.js'
import { OnnxPolicy, type PolicyActivations, type PolicyOptions } from '../../models/policy/policy.js'
import type { PolicySnapshot } from '../../models/policy/snapshot.js'
import { resolveSpatialGridConfig, type SpatialGridConfig, type SpatialGridSpec } from '../../models/spatialgrid/config.js'
import { describeRollout, type RolloutDescription } from '../../models/spatialgrid/render.js'
import { Rng, deriveSeed } from '../../core/rng.js'
import { goldRollouts, judgeRollouts, sampleRollouts, type Rollouts, type TokenPolicy } from '../../models/spatialgrid/rollout.js'
import { sampleScenes, type Scene } from '../../models/spatialgrid/scene.js'
import type { DualState, Rollout, ScoredBatch } from '../../core/types.js'
import { fgrpo } from '../../../operators/fgrpo.js'
import { DEFAULT_TRAIN_SETTINGS, type TrainSettings } from './presets.js'

/** The channels the built-in task scores. */
export const TASK_CHANNELS = ['accuracy', 'consistency', 'grounding'] as const

/** Held-out metrics in the paper's terms. */
export interface EvalMetrics {
  accuracy: number
  /** Share of rollouts with consistency 0. */
  inconsistencyRate: number
  grounding: number
}

/**
 * Where the wall time of the RL steps went, ms summed over the steps (`SpatialGridTrainer.timings`):
 * the actor's ONNX forward passes, the rest of sampling (feature rows, masks, drawing tokens),
 * the judges, the operator pipeline (`fgrpo`), the learner's ONNX gradient and Adam.
 */
export interface StepTimings {
  steps: number
  forward: number
  sampling: number
  judges: number
  pipeline: number
  gradient: number
  adam: number
  /** Everything else in the step loop (scene sampling, advantages back onto rows, reports). */
  other: number
  /** Whole steps, for the shares. */
  total: number
}

/** What the learner did with one batch. */
export interface LearnerStats {
  loss: number
  clipFraction: number
  meanRatio: number
  gradNorm: number
}

/** One RL step, for progress lines and telemetry. */
export interface StepReport {
  /** RL step (1-based, counted across resumed runs). */
  step: number
  policyVersion: number
  batch: ScoredBatch<RowPayload>
  learner: LearnerStats
  /** This batch's accuracy, inconsistency rate and grounding. */
  metrics: EvalMetrics
  /** Wall time of the step, ms. */
  ms: number
  /** One rollout of the batch, described for the dashboard's picture. */
  sample: () => RolloutDescription
}

/** The payload that travels with each rollout through the pipeline: its row in the actor's batch. */
export interface RowPayload {
  row: number
}

export interface TrainerOptions {
  /** Engine config: channels, constraints, group size (G) and batch size (prompts per step). */
  config: Config
  seed: number
  settings?: Partial<TrainSettings>
  task?: Partial<SpatialGridConfig>
  /** Folder for the checkpoint (LMDB); none = nothing is saved. A checkpoint of another task level is refused. */
  dataDir?: string
  executionProviders?: PolicyOptions['executionProviders']
  intraOpNumThreads?: number
}

/** What is saved with the policy snapshot, to resume exactly. */
interface TrainMeta {
  seed: number
  warmStarted: boolean
  rlSteps: number
  policyVersion: number
  dualState: DualState
  rng: number[]
  channels: string[]
  groupSize: number
  batchGroups: number
  /** The task's level and sizes (absent in checkpoints made before there were levels: the easy defaults). */
  task?: SpatialGridConfig
  /** State of other parts saved with the checkpoint, by key (the dashboard's whole-run history). */
  extras?: Record<string, unknown>
}

const mean = (x: ArrayLike<number>): number => {
  let s = 0
  for (let i = 0; i < x.length; i++) s += x[i]
  return s / x.length
}

/** Accuracy, inconsistency rate and grounding of judged rollouts. */
function metricsOf(judged: { accuracy: Float64Array; consistency: Float64Array; grounding: Float64Array }): EvalMetrics {
  let inconsistent = 0
  for (let i = 0; i < judged.consistency.length; i++) if (judged.consistency[i] === 0) inconsistent++
  return { accuracy: mean(judged.accuracy), inconsistencyRate: inconsistent / judged.consistency.length, grounding: mean(judged.grounding) }
}

export class SpatialGridTrainer {
  readonly spec: SpatialGridSpec
  /** Where the RL steps' time went so far in this process (see {@link StepTimings}). */
  readonly timings: StepTimings = { steps: 0, forward: 0, sampling: 0, judges: 0, pipeline: 0, gradient: 0, adam: 0, other: 0, total: 0 }
  private readonly settings: TrainSettings
  private adam: Adam
  private meta: TrainMeta
  private rng: Rng
  private readonly checkpoints: CheckpointStore | undefined

  private constructor(
    readonly config: Config,
    readonly policy: OnnxPolicy,
    options: TrainerOptions,
    spec: SpatialGridSpec,
    settings: TrainSettings,
    snapshot: PolicySnapshot | undefined,
    checkpoints: CheckpointStore | undefined,
  ) {
    this.spec = spec
    this.settings = settings
    this.checkpoints = checkpoints
    const saved = snapshot?.meta as TrainMeta | undefined
    this.meta = saved ?? {
      seed: options.seed,
      warmStarted: false,
      rlSteps: 0,
      policyVersion: 0,
      dualState: initialDualState(config.constraints),
      rng: new Rng(deriveSeed(options.seed, 'rl')).state(),
      channels: configChannels(config),
      groupSize: config.groupSize,
      batchGroups: config.batchGroups,
      task: { level: spec.level, grid: spec.grid, types: spec.types, objects: spec.objects },
    }
    this.rng = Rng.fromState(this.meta.rng)
    this.adam = new Adam(policy.specs, { lr: settings.lr }, snapshot?.adam)
  }

  /**
   * Creates a trainer, resuming from the checkpoint in `dataDir` when there is one. A
   * checkpoint made under a config with other constraints is refused with the reason.
   */
  static async create(options: TrainerOptions): Promise<SpatialGridTrainer> {
    const { config } = options
    const unknown = configChannels(config).filter((c) => !(TASK_CHANNELS as readonly string[]).includes(c))
    if (unknown.length > 0) throw new Error(`the built-in task scores ${TASK_CHANNELS.join(', ')}; the config also names ${unknown.join(', ')}`)
    const spec = resolveSpatialGridConfig(options.task)
    const settings = { ...DEFAULT_TRAIN_SETTINGS, ...options.settings }
    let checkpoints: CheckpointStore | undefined
    let snapshot: PolicySnapshot | undefined
    if (options.dataDir !== undefined) {
      mkdirSync(options.dataDir, { recursive: true })
      checkpoints = CheckpointStore.open(join(options.dataDir, 'checkpoint'))
      snapshot = checkpoints.load('latest')
      if (snapshot !== undefined) {
        const meta = snapshot.meta as unknown as TrainMeta
        const problems = dualStateProblems(meta.dualState, config.constraints)
        if (meta.groupSize !== config.groupSize || meta.batchGroups !== config.batchGroups) {
          problems.push(
            `saved run used groupSize ${meta.groupSize} × batchGroups ${meta.batchGroups}, the config says ${config.groupSize} × ${config.batchGroups}`,
          )
        }
        const saved = resolveSpatialGridConfig(meta.task)
        if (saved.level !== spec.level || saved.grid !== spec.grid || saved.types !== spec.types || saved.objects !== spec.objects) {
          problems.push(
            `saved run is SpatialGrid level ${saved.level} (grid ${saved.grid}, ${saved.types} types, ${saved.objects} objects), this one level ${spec.level} (grid ${spec.grid}, ${spec.types} types, ${spec.objects} objects)`,
          )
        }
        if (problems.length > 0) {
          await checkpoints.close()
          throw new Error(`the checkpoint in ${options.dataDir} does not fit this config (use another --data folder):\n  ${problems.join('\n  ')}`)
        }
      }
    }
    const policy = await OnnxPolicy.create({
      inputDim: spec.featureDim,
      vocab: spec.vocab,
      hidden: snapshot?.network.hidden ?? settings.hidden,
      seed: deriveSeed(options.seed, 'init'),
      params: snapshot?.params,
      executionProviders: options.executionProviders,
      intraOpNumThreads: options.intraOpNumThreads,
    })
    return new SpatialGridTrainer(config, policy, options, spec, settings, snapshot, checkpoints)
  }

  /** RL steps done so far (across resumed runs). */
  get rlSteps(): number {
    return this.meta.rlSteps
  }

  // state of other parts to save with each checkpoint, by key
  private readonly extras = new Map<string, () => unknown>()

  /** Saves `state()` under `key` with every checkpoint from now on, so it resumes with the run (as the dashboard's whole-run history does). */
  keepWithCheckpoint(key: string, state: () => unknown): void {
    this.extras.set(key, state)
  }

  /** What the checkpoint being resumed holds under `key` (see `keepWithCheckpoint`), if anything. */
  saved(key: string): unknown {
    return this.meta.extras?.[key]
  }

  get warmStarted(): boolean {
    return this.meta.warmStarted
  }

  get lambda(): Record<string, number> {
    return lambdasOf(this.meta.dualState)
  }

  /**
   * Stage 1, once per run folder: cross-entropy on gold template traces. Seeded by the run's
   * seed alone, so GRPO and FGRPO start stage 2 from the same parameters.
   */
  async warmStart(onProgress?: (done: number, total: number) => void): Promise<void> {
    if (this.meta.warmStarted) return
    const { sftSteps, sftBatch, lr } = this.settings
    const rng = new Rng(deriveSeed(this.meta.seed, 'sft-scenes'))
    const adam = new Adam(this.policy.specs, { lr })
    const weights = new Float32Array(this.spec.steps * sftBatch).fill(1 / sftBatch)
    for (let it = 0; it < sftSteps; it++) {
      const r = goldRollouts(sampleScenes(rng, sftBatch, this.spec), this.spec)
      const { grads } = await this.policy.nllGradients({ rows: r.actions.length, features: r.features, mask: r.masks, actions: r.actions, weights })
      adam.step(this.policy.params, grads)
      onProgress?.(it + 1, sftSteps)
    }
    this.meta.warmStarted = true
    await this.checkpoint()
  }

  /**
   * Stage 2: `steps` more RL steps. The actor samples `batchGroups` prompts × `groupSize`
   * completions with the current policy version; they go through `fgrpo` as rollouts; the
   * one scored batch that comes out is the learner's update. Checkpoints every
   * `checkpointEvery` steps and at the end; stops early (after a checkpoint) when `signal` aborts.
   */
  async train(steps: number, onStep?: (report: StepReport) => void, signal?: AbortSignal): Promise<void> {
    const { groupSize: G, batchGroups: prompts } = this.config
    const rows = prompts * G
    const weights = new Float32Array(this.spec.steps * rows).fill(1 / rows) // sequence-level advantage on every token
    const input = new Subject<Rollout<RowPayload>>()
    const policyVersions = new Subject<number>()
    let scored: ScoredBatch<RowPayload> | undefined
    let failure: unknown
    const subscription: Subscription = input
      .pipe(fgrpo<RowPayload>(this.config, { initialState: this.meta.dualState, policyVersions, eventTime: (r) => r.ts! }))
      // the judges' scores are always finite: an error here would be a bug, surfaced below
      .subscribe({ next: (batch) => (scored = batch), error: /* c8 ignore next */ (error) => (failure = error) })
    policyVersions.next(this.meta.policyVersion)
    const time = this.timings
    // The actor's forward passes keep their activations, stacked step-major like the rollouts' rows,
    // so the learner's gradient over the same rows and parameters need not run the forward pass again.
    const activations = this.policy.allocateActivations(this.spec.steps * rows)
    let kept = 0 // rows of `activations` this step's sampling has filled
    // the actor's policy, timed: its ONNX forward passes are told apart from the rest of sampling
    const actor: TokenPolicy = {
      logProbs: async (features, mask, n) => {
        const t0 = performance.now()
        const out = await this.policy.forwardInto(features, mask, n, activations, kept)
        kept += n
        time.forward += performance.now() - t0
        return out
      },
    }
    try {
      for (let done = 0; done < steps && signal?.aborted !== true; done++) {
        const started = performance.now()
        const step = this.meta.rlSteps + 1
        const scenes = sampleScenes(this.rng, prompts, this.spec)
        const rowScenes: Scene[] = []
        for (const scene of scenes) for (let k = 0; k < G; k++) rowScenes.push(scene)
        const forwardBefore = time.forward
        kept = 0
        let t0 = performance.now()
        const sampled = await sampleRollouts(actor, rowScenes, this.rng, this.spec)
        // unreachable: sampleRollouts runs the policy once per token position over all rows, in order
        /* c8 ignore next */
        if (kept !== sampled.actions.length) throw new Error(`step ${step}: the actor ran ${kept} rows forward, the rollouts have ${sampled.actions.length}`)
        let t1 = performance.now()
        time.sampling += t1 - t0 - (time.forward - forwardBefore)
        const judged = judgeRollouts(sampled, this.spec)
        t0 = performance.now()
        time.judges += t0 - t1
        // the actor's rollouts enter the same operator pipeline as external ones
        scored = undefined
        for (let i = 0; i < rows; i++) {
          input.next({
            id: `s${step}-r${i}`,
            promptId: `s${step}-p${Math.floor(i / G)}`,
            policyVersion: this.meta.policyVersion,
            rewards: { accuracy: judged.accuracy[i], consistency: judged.consistency[i], grounding: judged.grounding[i] },
            payload: { row: i },
            ts: step,
          })
        }
        // unreachable: the scores are finite, and `prompts` complete groups of G always make one batch
        /* c8 ignore next 3 */
        if (failure !== undefined) throw failure
        if (scored === undefined)
          throw new Error(`step ${step}: the pipeline did not emit a batch for ${rows} rollouts (groupSize ${G}, batchGroups ${prompts})`)
        const batch: ScoredBatch<RowPayload> = scored
        t1 = performance.now()
        time.pipeline += t1 - t0
        const learner = await this.learn(batch, sampled, weights, activations)
        this.meta.rlSteps = step
        this.meta.policyVersion++
        this.meta.dualState = batch.dualState
        policyVersions.next(this.meta.policyVersion)
        const ms = performance.now() - started
        time.steps++
        time.total += ms
        time.other = time.total - (time.forward + time.sampling + time.judges + time.pipeline + time.gradient + time.adam)
        onStep?.({
          step,
          policyVersion: this.meta.policyVersion,
          batch,
          learner,
          metrics: metricsOf(judged),
          ms,
          sample: () => describeRollout(sampled.scenes[0], sampled.traces[0], this.spec),
        })
        if (step % this.settings.checkpointEvery === 0) await this.checkpoint()
      }
    } finally {
      subscription.unsubscribe()
      this.meta.rng = this.rng.state()
      await this.checkpoint()
    }
  }

  /**
   * One learner update from a scored batch: advantages back onto the actor's rows, surrogate
   * gradient (from the actor's kept activations: same rows, same parameters), Adam.
   */
  private async learn(batch: ScoredBatch<RowPayload>, sampled: Rollouts, weights: Float32Array, activations: PolicyActivations): Promise<LearnerStats> {
    const rows = sampled.rows
    const perRow = new Float32Array(rows)
    let i = 0
    for (const group of batch.groups) for (const rollout of group.rollouts) perRow[rollout.payload!.row] = batch.advantages[i++]
    const advantages = new Float32Array(this.spec.steps * rows)
    for (let s = 0; s < this.spec.steps; s++) advantages.set(perRow, s * rows)
    const t0 = performance.now()
    const result = await this.policy.surrogateGradients({
      rows: sampled.actions.length,
      features: sampled.features,
      mask: sampled.masks,
      actions: sampled.actions,
      advantages,
      oldLogProbs: sampled.logProbs,
      weights,
      activations,
    })
    const t1 = performance.now()
    const { gradNorm } = this.adam.step(this.policy.params, result.grads)
    const t2 = performance.now()
    this.timings.gradient += t1 - t0
    this.timings.adam += t2 - t1
    return { loss: result.loss, clipFraction: result.clipFraction, meanRatio: result.meanRatio, gradNorm }
  }

  /** Held-out evaluation: one sampled trace per scene, scenes and sampling seeded by the run's seed. */
  async evaluate(scenes = this.settings.evalScenes): Promise<EvalMetrics> {
    const held = sampleScenes(new Rng(deriveSeed(this.meta.seed, 'eval-scenes')), scenes, this.spec)
    const sampled = await sampleRollouts(this.policy, held, new Rng(deriveSeed(this.meta.seed, 'eval-sampling')), this.spec)
    return metricsOf(judgeRollouts(sampled, this.spec))
  }

  /** Saves parameters, Adam state, dual state and RNG state (when a data folder is set). */
  async checkpoint(): Promise<void> {
    if (this.checkpoints === undefined) return
    this.meta.rng = this.rng.state()
    if (this.extras.size > 0) this.meta.extras = { ...this.meta.extras, ...Object.fromEntries([...this.extras].map(([key, state]) => [key, state()])) }
    const adam: AdamState = this.adam.state()
    await this.checkpoints.save('latest', {
      network: this.policy.network,
      params: this.policy.params,
      adam,
      meta: { ...this.meta } as unknown as Record<string, unknown>,
    })
  }

  /** Writes the current policy as a standalone .onnx file (inputs: features, mask; output: logProbs). */
  async exportOnnx(path: string): Promise<void> {
    await this.policy.saveOnnx(path)
  }

  async close(): Promise<void> {
    await this.policy.release()
    await this.checkpoints?.close()
  }
}
