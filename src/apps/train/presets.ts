/**
 * The embedded defaults of the built-in training: the engine configs of GRPO and FGRPO on
 * SpatialGrid (they differ only in their constraints) and the training settings, calibrated
 * on this 2-core machine (see README "Built-in training").
 */
import type { ConfigInput } from '../../core/config.js'
import type { Level, SpatialGridConfig } from '../../models/spatialgrid/config.js'

/** FGRPO: accuracy objective; consistency and grounding constraints by sgd dual ascent (DESIGN §7). */
export const FGRPO_CONFIG: ConfigInput = {
  groupSize: 8,
  batchGroups: 64,
  maxStaleness: 0,
  objectives: [{ channel: 'accuracy', weight: 1 }],
  constraints: [
    { channel: 'consistency', sense: '>=', threshold: 0.98, sampleThreshold: 0.5, dual: { rule: 'sgd', lr: 0.05, init: 0, max: 1 } },
    { channel: 'grounding', sense: '>=', threshold: 0.95, sampleThreshold: 1, dual: { rule: 'sgd', lr: 0.05, init: 0, max: 1 } },
  ],
}

/** GRPO: the same channels, consistency and grounding only reported (weight 0), no constraints. */
export const GRPO_CONFIG: ConfigInput = {
  groupSize: 8,
  batchGroups: 64,
  maxStaleness: 0,
  objectives: [
    { channel: 'accuracy', weight: 1 },
    { channel: 'consistency', weight: 0 },
    { channel: 'grounding', weight: 0 },
  ],
}

export const PRESETS = { fgrpo: FGRPO_CONFIG, grpo: GRPO_CONFIG } as const
export type Method = keyof typeof PRESETS

/** Training settings that are not part of the engine config. */
export interface TrainSettings {
  /** Stage 1: supervised warm-start steps on gold traces, and scenes per step. */
  sftSteps: number
  sftBatch: number
  /** Adam learning rate of both stages. */
  lr: number
  /** Hidden widths of the policy MLP. */
  hidden: number[]
  /** Held-out scenes of the final evaluation. */
  evalScenes: number
  /** RL steps between checkpoints. */
  checkpointEvery: number
}

export const DEFAULT_TRAIN_SETTINGS: TrainSettings = {
  sftSteps: 500,
  sftBatch: 128,
  lr: 3e-3,
  hidden: [128],
  evalScenes: 2000,
  checkpointEvery: 1000,
}

/** RL steps of one `npm start` / one evaluation run (easy level). */
export const DEFAULT_RL_STEPS = 30_000

/** What a task level changes in a training: the SpatialGrid sizes, the training settings, the default RL steps. */
export interface LevelPreset {
  task: Partial<SpatialGridConfig>
  settings: Partial<TrainSettings>
  rlSteps: number
}

/**
 * The levels of the built-in task (`--level`). `easy` is the default of `npm start` and `npm run
 * eval` and keeps the settings above; `hard` compares sums of coordinates on a 6 × 6 grid with 6
 * of 8 object types (see src/models/spatialgrid/config.ts).
 */
export const LEVEL_PRESETS: Readonly<Record<Level, LevelPreset>> = {
  easy: { task: { level: 'easy' }, settings: {}, rlSteps: DEFAULT_RL_STEPS },
  // the same warm start as the easy level; 5,000 RL steps keep `npm run eval -- --level hard` near 5 min on 2 cores (≈ 17 ms a step)
  hard: { task: { level: 'hard' }, settings: {}, rlSteps: 5_000 },
}

/** The data folder of a run when none is given: `data/<label>`, `data/<label>-hard` at the hard level (a level's checkpoint does not fit another level's network). */
export function defaultDataDir(label: string, level: Level | undefined): string {
  return level === 'hard' ? `data/${label}-hard` : `data/${label}`
}

/** The RL steps of a run: the ones asked for, else the level's default. */
export function rlStepsFor(level: Level | undefined, steps: number | undefined): number {
  return steps ?? LEVEL_PRESETS[level ?? 'easy'].rlSteps
}
