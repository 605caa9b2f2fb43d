/**
 * The data model shared by the math, the operators and the streams (DESIGN §2).
 */

/** A reward value: a finite number, or null/absent when the channel was not scored. */
export type RewardValue = number | null | undefined

/** One sampled completion. `id` is the idempotency key: counted at most once, ever. */
export interface Rollout<P = unknown> {
  id: string
  promptId: string
  /** Version of the policy that sampled it; used to drop stale rollouts. */
  policyVersion?: number
  /** Every scalar signal, objective and constraint alike. null/missing = not scored. */
  rewards: Record<string, RewardValue>
  /** Expected size of this rollout's group, when the producer knows better than the config. */
  groupSize?: number
  /** Opaque; passed through to the trainer untouched. */
  payload?: P
  /** Ingest sequence number, stamped by the engine. */
  seq?: number
  /** Event time in ms, stamped at ingest; every timeout and window is evaluated on it. */
  ts?: number
}

/** The rollouts of one prompt, emitted when complete or when its timeout expired. */
export interface Group<P = unknown> {
  promptId: string
  rollouts: Rollout<P>[]
  /** True when emitted by timeout (or at end of input) with fewer than the expected size. */
  partial: boolean
  /** Event time at which the group was completed. */
  ts: number
  /**
   * The rollouts' rewards as columns, when the group was read from a columnar source (a
   * cluster's GROUPS stream). `batchColumns` copies these instead of reading every rollout
   * (the sequencer's groups build their rollouts only when something asks for them); they
   * must agree with `rollouts`.
   */
  rewardColumns?: RewardColumns
}

/** A group's rewards in columns shared with other groups: rollout k's value of `channel` is `values[channel][start + k]` (NaN where not scored), k < `size`. */
export interface RewardColumns {
  values: Readonly<Record<string, Float64Array>>
  start: number
  size: number
}

/** Why a batch window closed. */
export type BatchCloseReason = 'full' | 'maxWait' | 'flush'

/** A window of groups: the unit of a dual update and of a trainer step. */
export interface Batch<P = unknown> {
  groups: Group<P>[]
  /** Event time at which the batch closed. */
  ts: number
  reason: BatchCloseReason
}

/** The batch-level measurement of one constraint channel (DESIGN §3). */
export interface ConstraintMeasure {
  /** J: mean of the valid values over the batch, or over the last `window` batches pooled. NaN when none. */
  mean: number
  /** e = τ − J for '>=', J − τ for '<='; positive means violated. NaN when J is undefined. */
  violation: number
  /** Fraction of this batch's valid values on the wrong side of `sampleThreshold`. NaN when none. */
  sampleViolationRate: number
  /** Number of valid values in this batch. */
  count: number
}

/** A batch with its constraints measured. */
export interface MeasuredBatch<P = unknown> extends Batch<P> {
  constraints: Record<string, ConstraintMeasure>
  /** The batch as float64 columns, one per configured channel (kept for the advantage step). */
  columns: BatchColumns
  /** Each constraint's window after this batch (part of the dual state to persist). */
  windows: Record<string, WindowEntry[]>
}

/** λ of one constraint around a dual update. */
export interface LambdaChange {
  before: number
  after: number
}

/** A batch after the dual update: numbered, with the multipliers and the state to persist. */
export interface DualBatch<P = unknown> extends MeasuredBatch<P> {
  step: number
  lambda: Record<string, LambdaChange>
  /** The dual state after this step; persisting it with the batch makes a restart exact. */
  dualState: DualState
}

/** Final advantages for every rollout of a batch, in group order. */
export interface ScoredBatch<P = unknown> extends DualBatch<P> {
  /** One advantage per rollout, aligned with `groups.flatMap(g => g.rollouts)`. */
  advantages: Float64Array
  /** Per channel, fraction of groups that carried no signal (fewer than 2 values or std <= minStd). */
  fracZeroStd: Record<string, number>
  /** Per objective channel, mean of the valid values in the batch (NaN when none). */
  objectiveMeans: Record<string, number>
  /** Mean and sample std of the final advantages. */
  advantageMean: number
  advantageStd: number
  rolloutCount: number
}

/** Serialisable state of one dual controller (DESIGN §3). */
export type ControllerState =
  | { rule: 'sgd'; lambda: number }
  | { rule: 'log'; logLambda: number; lambda: number }
  /** `costEma`: the EMA of the sign-adjusted cost (J for `<=`, −J for `>=`); `history`: its last `delay` values (see stepController). */
  | { rule: 'pid'; integral: number; proportional: number; costEma: number; history: number[]; lambda: number }

/** Sums of one batch for a constraint channel, kept for the pooled window. */
export interface WindowEntry {
  sum: number
  count: number
}

/** Everything the dual side needs to resume exactly: step, controllers and windows. */
export interface DualState {
  step: number
  constraints: Record<string, { controller: ControllerState; window: WindowEntry[] }>
}

/** Why a rollout did not reach a batch. Every drop is reported, never silent. */
export type DropReason = 'invalid' | 'duplicate' | 'stale' | 'incomplete-group'

/** A report of rollouts that left the stream before a batch. */
export interface DropEvent {
  reason: DropReason
  /** The rollouts dropped (for 'invalid' the raw items are not rollouts: see `count`). */
  rollouts: Rollout[]
  count: number
  promptId?: string
  /** Human-readable detail: what was wrong and where. */
  detail?: string
}

/** A batch laid out as columns: one Float64Array per channel (NaN = not scored). */
export interface BatchColumns {
  /** Group g spans rollouts `offsets[g] .. offsets[g + 1]`. */
  offsets: Int32Array
  columns: Record<string, Float64Array>
}
