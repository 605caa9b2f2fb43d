/**
 * `dualstream export`: one row per committed step of a `serve` data folder — λ before and
 * after, J, violation, per-sample violation rate and count per constraint, objective means,
 * counts, advantage mean/std, commit time — as CSV or JSON Lines, a pandas one-liner away
 * (`pd.read_csv(path)`, `pd.read_json(path, lines=True)`). Read-only: `serve` may be running.
 */
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import type { BatchSummary } from '../state/batchRecord.js'
import { EngineStore } from '../state/engineStore.js'
import { LogNotFoundError } from '../state/logReplay.js'

/** A batch summary as the data folder keeps it: with its commit time (ms since the epoch). */
export type StoredSummary = BatchSummary & { ts?: number }

export type StepRow = Record<string, number | string | null>

/** The flat row of one committed step (column names as the `/history` series, plus `lambdaBefore.<c>`, `count.<c>`, `time`). */
export function stepRow(summary: StoredSummary): StepRow {
  const row: StepRow = {
    step: summary.step,
    ts: summary.ts ?? null,
    time: summary.ts === undefined ? null : new Date(summary.ts).toISOString(),
    rollouts: summary.rollouts,
    groups: summary.groups,
    partialGroups: summary.partialGroups,
    advantageMean: summary.advantageMean,
    advantageStd: summary.advantageStd,
  }
  for (const [channel, change] of Object.entries(summary.lambda)) {
    row[`lambdaBefore.${channel}`] = change.before
    row[`lambda.${channel}`] = change.after
  }
  for (const [channel, c] of Object.entries(summary.constraints)) {
    row[`mean.${channel}`] = c.mean
    row[`violation.${channel}`] = c.violation
    row[`sampleViolationRate.${channel}`] = c.sampleViolationRate
    row[`count.${channel}`] = c.count
  }
  for (const [channel, mean] of Object.entries(summary.objectives)) row[`objective.${channel}`] = mean
  for (const [channel, share] of Object.entries(summary.fracZeroStd)) row[`fracZeroStd.${channel}`] = share
  return row
}

/** Every committed step's row, in step order. */
export function* stepRows(store: EngineStore): Generator<StepRow> {
  for (const { summary } of store.summaries()) yield stepRow(summary as StoredSummary)
}

const csvField = (value: number | string | null | undefined): string => {
  if (value === null || value === undefined) return ''
  const text = String(value)
  return /[",\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text
}

/** CSV lines: a header with every column any row has (first seen first), then one line per row. */
export function* csvLines(columns: readonly string[], rows: Iterable<StepRow>): Generator<string> {
  yield `${columns.map(csvField).join(',')}\n`
  for (const row of rows) yield `${columns.map((column) => csvField(row[column])).join(',')}\n`
}

/** JSON Lines: one object per row. */
export function* jsonLines(rows: Iterable<StepRow>): Generator<string> {
  for (const row of rows) yield `${JSON.stringify(row)}\n`
}

/**
 * Writes the rows of the data folder `dataDir` to `output` (ending it when `end`); resolves to
 * the number of steps. Throws `LogNotFoundError` when `dataDir` holds no engine state.
 */
export async function exportSteps(dataDir: string, format: 'csv' | 'jsonl', output: NodeJS.WritableStream, end = true): Promise<number> {
  if (!existsSync(join(dataDir, 'data.mdb'))) throw new LogNotFoundError(dataDir)
  const store = EngineStore.open(dataDir, { readOnly: true })
  let steps = 0
  const rows = (function* () {
    for (const row of stepRows(store)) {
      steps++
      yield row
    }
  })()
  try {
    let lines: Iterable<string>
    if (format === 'jsonl') lines = jsonLines(rows)
    else {
      // every row's columns (a constraint added under a later config is a column, empty before it)
      const columns = new Set<string>()
      for (const row of stepRows(store)) for (const column of Object.keys(row)) columns.add(column)
      lines = csvLines([...columns], rows)
    }
    await pipeline(Readable.from(lines), output, { end })
  } finally {
    await store.close()
  }
  return steps
}
