/**
 * A user's own step inside the FGRPO pipeline: a length-penalty cost channel, computed in a
 * plain `map` from each completion's payload and constrained with `<=` by dual ascent.
 *
 * The synthetic producer below stands in for a generation worker whose completions get
 * longer over time, with longer ones slightly more often correct — the pressure that makes
 * GRPO policies ramble. The `length` constraint (mean tokens ≤ 300) answers with a rising λ.
 *
 * Run: npx tsx examples/custom-pipeline.ts
 */
import { from, map, toArray, lastValueFrom } from 'rxjs'
// the package's main entry, as a project of your own imports it: from 'dualstream'
import { dropDuplicates, fgrpo, parseConfig, validateRollouts, type ConfigInput, type DropEvent, type ScoredBatch } from '../src/index.js'
import { mulberry32 } from './support/random.js'

interface Completion {
  tokens: number
}

export const exampleConfig: ConfigInput = {
  groupSize: 8,
  batchGroups: 16,
  objectives: [{ channel: 'accuracy' }],
  constraints: [
    // a cost: mean completion length must stay at or below 300 tokens; a sample over 400 counts as a violation
    { channel: 'length', sense: '<=', threshold: 300, sampleThreshold: 400, dual: { rule: 'sgd', lr: 0.002, max: 2 } },
  ],
}

/** What a generation worker would send: raw, untrusted objects. */
export function* producer(prompts: number, seed = 1): Generator<unknown> {
  const random = mulberry32(seed)
  for (let p = 0; p < prompts; p++) {
    const drift = 200 + (300 * p) / prompts // lengths creep up over the run
    for (let i = 0; i < 8; i++) {
      const tokens = Math.round(drift * (0.5 + random()))
      const correct = random() < 0.3 + 0.4 * Math.min(1, tokens / 600)
      yield { id: `p${p}-${i}`, promptId: `p${p}`, rewards: { accuracy: correct ? 1 : 0 }, payload: { tokens }, ts: p * 10 + i }
    }
  }
}

/** Runs the pipeline over the producer's items (then `extra` ones) and returns the scored batches and what was dropped. */
export async function runExample(prompts = 640, seed = 1, extra: unknown[] = []): Promise<{ batches: ScoredBatch<Completion>[]; dropped: DropEvent[] }> {
  const config = parseConfig(exampleConfig)
  const dropped: DropEvent[] = []
  const onDrop = (event: DropEvent) => dropped.push(event)
  const batches = await lastValueFrom(
    from([...producer(prompts, seed), ...extra]).pipe(
      validateRollouts<Completion>({ onInvalid: 'drop', onDrop }),
      dropDuplicates({ onDrop }),
      // the user's own step: a cost channel from the payload
      map((rollout) => ({ ...rollout, rewards: { ...rollout.rewards, length: rollout.payload!.tokens } })),
      fgrpo<Completion>(config, { onDrop }),
      toArray(),
    ),
  )
  return { batches, dropped }
}

/* c8 ignore start */
if (import.meta.url === `file://${process.argv[1]}`) {
  const { batches } = await runExample()
  console.log('step  mean length  λ(length)  accuracy  advantage(longest) vs (shortest) in batch')
  for (const b of batches.filter((_, i) => i % 5 === 4)) {
    const rollouts = b.groups.flatMap((g) => g.rollouts)
    const longest = rollouts.reduce((best, r, i) => (r.payload!.tokens > rollouts[best].payload!.tokens ? i : best), 0)
    const shortest = rollouts.reduce((best, r, i) => (r.payload!.tokens < rollouts[best].payload!.tokens ? i : best), 0)
    console.log(
      `${String(b.step).padStart(4)}  ${b.constraints.length.mean.toFixed(1).padStart(11)}  ${b.lambda.length.after.toFixed(4).padStart(9)}  ${b.objectiveMeans.accuracy.toFixed(3).padStart(8)}  ${b.advantages[longest].toFixed(3)} vs ${b.advantages[shortest].toFixed(3)}`,
    )
  }
}
/* c8 ignore stop */
