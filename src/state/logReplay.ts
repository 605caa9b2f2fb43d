/**
 * `dualstream replay --log DIR`: the engine's ingest log, read-only, through a fresh
 * pipeline under any config — the counterfactual "what would λ have done with τ = 0.9?",
 * and the reference a restarted engine must agree with.
 */
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import type { Config } from '../core/config.js'
import { EngineStore } from './engineStore.js'
import type { ScoredBatch } from '../core/types.js'
import { EnginePipeline } from './pipeline.js'

/** There is no engine log where one was asked for. */
export class LogNotFoundError extends Error {
  constructor(readonly dataDir: string) {
    super(`no engine log in ${dataDir} (expected ${join(dataDir, 'data.mdb')}, written by \`dualstream serve --data\`)`)
    this.name = 'LogNotFoundError'
  }
}

/** Replays every record of the log in `dataDir`; calls `onBatch` for each batch, in order. */
export async function replayLog(config: Config, dataDir: string, onBatch: (batch: ScoredBatch) => void): Promise<{ records: number; batches: number }> {
  if (!existsSync(join(dataDir, 'data.mdb'))) throw new LogNotFoundError(dataDir)
  const store = EngineStore.open(dataDir, { readOnly: true })
  let failure: unknown
  let batches = 0
  let records = 0
  const pipeline = new EnginePipeline(config, {
    onBatch: (batch) => {
      batches++
      onBatch(batch)
    },
    onError: (error) => (failure ??= error),
  })
  try {
    for (const record of store.records(0)) {
      records++
      pipeline.feed(record)
      if (failure !== undefined) throw failure
    }
    pipeline.complete()
    if (failure !== undefined) throw failure
  } finally {
    pipeline.close()
    await store.close()
  }
  return { records, batches }
}
