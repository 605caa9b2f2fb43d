/**
 * Benchmarks of the core engine: the math alone, the operator chain, and `replay` end to end.
 */
import { createReadStream, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { count, from, lastValueFrom } from 'rxjs'
import { parseConfig, type Config } from '../../core/config.js'
import { initialDualState } from '../../math/dual.js'
import { scoreGroups } from '../../math/score.js'
import type { Group } from '../../core/types.js'
import { dropDuplicates, fgrpo } from '../../../operators/index.js'
import { replay } from '../replay.js'
import { throughput, type Throughput } from './measure.js'
import { syntheticRollouts } from './synthetic.js'

// the rollouts every bench uses (their own module: the bench's client processes load nothing else of this one)
export { syntheticRollouts }

/** FGRPO as in the paper: one objective, two constraints (sgd and pid), G = 8, 16 groups per batch (as a config file holds it, and parsed). */
export const benchConfigSource = {
  groupSize: 8,
  batchGroups: 16,
  objectives: [{ channel: 'accuracy' }],
  constraints: [
    { channel: 'consistency', sense: '>=', threshold: 0.95, sampleThreshold: 0.5, dual: { rule: 'sgd', lr: 0.05, max: 1 } },
    { channel: 'grounding', sense: '>=', threshold: 0.9, dual: { rule: 'pid', max: 1 } },
  ],
}
export const benchConfig: Config = parseConfig(benchConfigSource)

export interface CoreBenchOptions {
  rollouts: number
  runs: number
  warmup: number
}

export async function benchCore(options: CoreBenchOptions): Promise<Throughput[]> {
  const config = benchConfig
  const rollouts = syntheticRollouts(options.rollouts)
  const groups: Group[] = []
  for (let i = 0; i < rollouts.length; i += config.groupSize)
    groups.push({ promptId: rollouts[i].promptId, rollouts: rollouts.slice(i, i + config.groupSize), partial: false, ts: i })
  const batches: Group[][] = []
  for (let i = 0; i < groups.length; i += config.batchGroups) batches.push(groups.slice(i, i + config.batchGroups))
  const { runs, warmup } = options
  const results: Throughput[] = []

  results.push(
    await throughput(
      'core math (measure + dual + advantages)',
      'rollouts',
      () => {
        let state = initialDualState(config.constraints)
        let n = 0
        for (const batch of batches) {
          const step = scoreGroups(batch, config, state)
          state = step.dualState
          n += step.rolloutCount
        }
        return n
      },
      { runs, warmup },
    ),
  )
  results.push(
    await throughput(
      'operator chain: fgrpo (groups → batches → λ → advantages)',
      'rollouts',
      () =>
        lastValueFrom(
          from(rollouts).pipe(
            fgrpo(config),
            count((b) => b.rolloutCount > 0),
          ),
        ).then(() => rollouts.length),
      { runs, warmup },
    ),
  )
  results.push(
    await throughput(
      'operator chain with in-memory dedup (Set of every id)',
      'rollouts',
      () => lastValueFrom(from(rollouts).pipe(dropDuplicates(), fgrpo(config), count())).then(() => rollouts.length),
      { runs, warmup },
    ),
  )

  const dir = mkdtempSync(join(tmpdir(), 'dualstream-bench-'))
  try {
    const inputPath = join(dir, 'rollouts.jsonl')
    const configPath = join(dir, 'config.json')
    writeFileSync(inputPath, `${rollouts.map((r) => JSON.stringify(r)).join('\n')}\n`)
    writeFileSync(configPath, JSON.stringify(config))
    const discard = () => new Writable({ write: (_chunk, _enc, done) => done() })
    results.push(
      await throughput(
        'replay end to end (JSONL file → validate → dedup → fgrpo → JSONL)',
        'rollouts',
        async () => (await replay({ config, input: createReadStream(inputPath), output: discard() })).lines,
        { runs, warmup: Math.min(warmup, 1) },
      ),
    )
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
  return results
}
