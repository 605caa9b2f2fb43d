/**
 * The whole run's series, bounded however long the run (issue 15). Every dashboard series
 * (λ, J, violations, objectives, throughput, the learner's figures…) is kept from step 1 by
 * min/max buckets: each series holds at most `(maxPoints − 2) / 2` buckets of `width`
 * consecutive points and keeps, per bucket, the point with the least and the point with the
 * greatest value (real steps, with their wall time), and its first and last point. When the buckets are full, neighbours merge and the width
 * doubles. So a spike of one step survives any length of run (a plain stride would lose it),
 * memory is `series × maxPoints × 3` numbers, and a page opened at step 10⁶ draws the run from
 * step 1. Up to `maxPoints − 2` points a series is exact (but for a value repeated within a
 * bucket of two, drawn once). Pure: no I/O; `serve` rebuilds it from the committed batch summaries, the built-in
 * training saves it with its checkpoint.
 *
 * @example
 * const history = new RunHistory({ maxPoints: 2000 })
 * history.add(frame.step, frame.ts, seriesOfFrame(frame))
 * hello.overview = history.overview()
 */
import type { BatchFrame, HistoryOverview, SeriesPoints } from './frames.js'

export type { HistoryOverview, SeriesPoints } from './frames.js'

/** What `/history` (and `RunHistory.query`) is asked: series by name, a range of steps, most points per series. */
export interface HistoryQuery {
  series?: readonly string[]
  from?: number
  to?: number
  points?: number
}

/** The value of every series at one step (null: no value at that step). */
export type SeriesValues = Record<string, number | null | undefined>

/** What a `RunHistory` saves (plain data, for a checkpoint). */
export interface HistorySnapshot {
  maxPoints: number
  steps: number
  first: number | null
  last: number | null
  series: Record<string, SeriesSnapshot>
}

interface SeriesSnapshot {
  width: number
  count: number
  /** Per bucket: min step, min ts, min value, max step, max ts, max value (ts NaN when unknown). */
  buckets: (number | null)[]
  /** The first and the last point: step, ts, value each. */
  ends: (number | null)[]
}

export const DEFAULT_HISTORY_POINTS = 2000
/** The fewest points a series can be drawn with: its first and last, one bucket's min and max. */
export const MIN_POINTS = 4

const FIELDS = 6
const [MIN_STEP, MIN_TS, MIN_VALUE, MAX_STEP, MAX_TS, MAX_VALUE] = [0, 1, 2, 3, 4, 5]

/** One series by min/max buckets of equal counts of points. */
export class MinMaxSeries {
  private readonly capacity: number
  private buckets: Float64Array
  /** Points per bucket (a power of two). */
  private width = 1
  /** Points added. */
  private count = 0

  // the first and the last point added (step, ts, value each): a chart starts and ends where the series does
  private readonly ends = new Float64Array(6)

  constructor(readonly maxPoints: number) {
    if (!Number.isSafeInteger(maxPoints) || maxPoints < MIN_POINTS) throw new RangeError(`maxPoints must be an integer >= ${MIN_POINTS}, got ${maxPoints}`)
    this.capacity = Math.floor((maxPoints - 2) / 2)
    this.buckets = new Float64Array(this.capacity * FIELDS)
  }

  get length(): number {
    return this.count
  }

  /** Adds the next point (steps increasing; `value` finite). */
  add(step: number, ts: number | null, value: number): void {
    if (this.count === this.capacity * this.width) this.mergePairs()
    const bucket = Math.floor(this.count / this.width)
    const at = bucket * FIELDS
    const b = this.buckets
    const time = ts ?? NaN
    if (this.count === 0) this.ends.set([step, time, value], 0)
    this.ends.set([step, time, value], 3)
    if (this.count % this.width === 0) {
      b[at + MIN_STEP] = b[at + MAX_STEP] = step
      b[at + MIN_TS] = b[at + MAX_TS] = time
      b[at + MIN_VALUE] = b[at + MAX_VALUE] = value
    } else if (value < b[at + MIN_VALUE]) {
      b[at + MIN_STEP] = step
      b[at + MIN_TS] = time
      b[at + MIN_VALUE] = value
    } else if (value > b[at + MAX_VALUE]) {
      b[at + MAX_STEP] = step
      b[at + MAX_TS] = time
      b[at + MAX_VALUE] = value
    }
    this.count++
  }

  private mergePairs(): void {
    const b = this.buckets
    // an odd capacity leaves the last bucket unpaired: it becomes the first half of a wider one
    for (let i = 0; i < Math.ceil(this.capacity / 2); i++) {
      const into = i * FIELDS
      const left = 2 * i * FIELDS
      const right = left + FIELDS
      const paired = 2 * i + 1 < this.capacity
      // ties keep the earlier point: the same data always gives the same points
      const min = paired && b[right + MIN_VALUE] < b[left + MIN_VALUE] ? right : left
      const max = paired && b[right + MAX_VALUE] > b[left + MAX_VALUE] ? right : left
      b.copyWithin(into + MIN_STEP, min + MIN_STEP, min + MIN_VALUE + 1)
      b.copyWithin(into + MAX_STEP, max + MAX_STEP, max + MAX_VALUE + 1)
    }
    this.width *= 2
  }

  /** The points (each bucket's min and max, once when they are the same step) with steps in `[from, to]`. */
  points(from = -Infinity, to = Infinity): SeriesPoints {
    const out: SeriesPoints = { steps: [], ts: [], values: [] }
    const push = (step: number, ts: number, value: number) => {
      if (step < from || step > to) return
      out.steps.push(step)
      out.ts.push(Number.isNaN(ts) ? null : ts)
      out.values.push(value)
    }
    if (this.count === 0) return out
    const b = this.buckets
    const e = this.ends
    const used = Math.ceil(this.count / this.width)
    // the first point, unless the first bucket's own first point is it
    if (e[0] < Math.min(b[MIN_STEP], b[MAX_STEP])) push(e[0], e[1], e[2])
    for (let i = 0; i < used; i++) {
      const at = i * FIELDS
      const minFirst = b[at + MIN_STEP] <= b[at + MAX_STEP]
      const [first, second] = minFirst ? [MIN_STEP, MAX_STEP] : [MAX_STEP, MIN_STEP]
      push(b[at + first], b[at + first + 1], b[at + first + 2])
      if (b[at + MIN_STEP] !== b[at + MAX_STEP]) push(b[at + second], b[at + second + 1], b[at + second + 2])
    }
    const lastAt = (used - 1) * FIELDS
    if (e[3] > Math.max(b[lastAt + MIN_STEP], b[lastAt + MAX_STEP])) push(e[3], e[4], e[5])
    return out
  }

  snapshot(): SeriesSnapshot {
    const used = Math.ceil(this.count / this.width)
    return { width: this.width, count: this.count, buckets: Array.from(this.buckets.subarray(0, used * FIELDS)), ends: Array.from(this.ends) }
  }

  static restore(maxPoints: number, saved: SeriesSnapshot): MinMaxSeries {
    const series = new MinMaxSeries(maxPoints)
    const used = Math.ceil(saved.count / saved.width)
    const valid =
      Number.isSafeInteger(saved.count) &&
      saved.count >= 0 &&
      Number.isSafeInteger(saved.width) &&
      saved.width >= 1 &&
      used <= series.capacity &&
      saved.buckets.length === used * FIELDS &&
      saved.ends?.length === 6
    if (!valid) throw new RangeError(`a saved history series does not fit ${maxPoints} points (width ${saved.width}, count ${saved.count})`)
    series.width = saved.width
    series.count = saved.count
    const numbers = (values: readonly (number | null)[]) => values.map((v) => (v === null ? NaN : v))
    series.buckets.set(numbers(saved.buckets))
    series.ends.set(numbers(saved.ends))
    return series
  }
}

/** Every series of a run, by name, downsampled by `MinMaxSeries`. */
export class RunHistory {
  readonly maxPoints: number
  private readonly series = new Map<string, MinMaxSeries>()
  private steps = 0
  private first: number | null = null
  private last: number | null = null

  constructor(options: { maxPoints?: number } = {}) {
    this.maxPoints = options.maxPoints ?? DEFAULT_HISTORY_POINTS
    if (!Number.isSafeInteger(this.maxPoints) || this.maxPoints < MIN_POINTS)
      throw new RangeError(`maxPoints must be an integer >= ${MIN_POINTS}, got ${this.maxPoints}`)
  }

  /** Steps summarised so far. */
  get length(): number {
    return this.steps
  }

  /** The last step held (null when empty). */
  get lastStep(): number | null {
    return this.last
  }

  /**
   * Adds one step's values (null and non-finite values are no point). A step at or before the
   * last one held is ignored: after a restore, steps seen again are not counted twice.
   */
  add(step: number, ts: number | null, values: SeriesValues): void {
    if (this.last !== null && step <= this.last) return
    this.first ??= step
    this.last = step
    this.steps++
    for (const [name, value] of Object.entries(values)) {
      if (value === null || value === undefined || !Number.isFinite(value)) continue
      let series = this.series.get(name)
      if (series === undefined) this.series.set(name, (series = new MinMaxSeries(this.maxPoints)))
      series.add(step, ts, value)
    }
  }

  /** The whole run, every series. */
  overview(): HistoryOverview {
    return this.query({})
  }

  /**
   * The series named (all by default) with steps in `[from, to]`, each at most `points` points
   * (by default `maxPoints`; fewer than that thins the held points again by min/max).
   */
  query(range: HistoryQuery): HistoryOverview {
    const points = Math.min(range.points ?? this.maxPoints, this.maxPoints)
    const out: HistoryOverview = { maxPoints: points, steps: this.steps, first: this.first, last: this.last, series: {} }
    for (const name of range.series ?? [...this.series.keys()].sort()) {
      const held = this.series.get(name)
      if (held === undefined) continue
      const inRange = held.points(range.from, range.to)
      out.series[name] = inRange.steps.length <= points ? inRange : downsample(inRange, points)
    }
    return out
  }

  snapshot(): HistorySnapshot {
    const series: Record<string, SeriesSnapshot> = {}
    for (const [name, held] of this.series) series[name] = held.snapshot()
    return { maxPoints: this.maxPoints, steps: this.steps, first: this.first, last: this.last, series }
  }

  /** A history as saved by `snapshot()`. */
  static restore(saved: HistorySnapshot): RunHistory {
    const history = new RunHistory({ maxPoints: saved.maxPoints })
    history.steps = saved.steps
    history.first = saved.first
    history.last = saved.last
    for (const [name, series] of Object.entries(saved.series)) history.series.set(name, MinMaxSeries.restore(saved.maxPoints, series))
    return history
  }
}

/** Thins points (in step order) to at most `points` by min/max buckets. */
export function downsample(input: SeriesPoints, points: number): SeriesPoints {
  const series = new MinMaxSeries(points)
  for (let i = 0; i < input.steps.length; i++) series.add(input.steps[i], input.ts[i], input.values[i])
  return series.points()
}

/**
 * The series of one batch frame (or of a committed batch's figures, when restored from disk:
 * then the live-only series are absent). Names: README, "Whole-run history".
 */
export function seriesOfFrame(
  frame: Pick<BatchFrame, 'rollouts' | 'groups' | 'partialGroups' | 'objectives' | 'constraints' | 'fracZeroStd' | 'advantage'> &
    Partial<Pick<BatchFrame, 'throughput' | 'latencyMs' | 'learner' | 'metrics' | 'policyVersion'>>,
): SeriesValues {
  const values: SeriesValues = {
    rollouts: frame.rollouts,
    groups: frame.groups,
    partialGroups: frame.partialGroups,
    advantageMean: frame.advantage.mean,
    advantageStd: frame.advantage.std,
  }
  for (const [channel, c] of Object.entries(frame.constraints)) {
    values[`lambda.${channel}`] = c.lambda
    values[`mean.${channel}`] = c.mean
    values[`violation.${channel}`] = c.violation
    values[`sampleViolationRate.${channel}`] = c.sampleViolationRate
  }
  for (const [channel, mean] of Object.entries(frame.objectives)) values[`objective.${channel}`] = mean
  for (const [channel, share] of Object.entries(frame.fracZeroStd)) values[`fracZeroStd.${channel}`] = share
  if (frame.throughput !== undefined) values.rolloutsPerSec = frame.throughput.rolloutsPerSec
  if (frame.latencyMs !== undefined) values.latencyMs = frame.latencyMs
  if (frame.policyVersion !== undefined) values.policyVersion = frame.policyVersion
  if (frame.learner !== undefined) Object.assign(values, frame.learner)
  if (frame.metrics !== undefined) Object.assign(values, frame.metrics)
  return values
}
