import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { runCli, spawnCli } from '../support/cli.js'

const dir = mkdtempSync(join(tmpdir(), 'dualstream-replay-'))
const configPath = join(dir, 'fgrpo.json')
writeFileSync(
  configPath,
  JSON.stringify({
    groupSize: 2,
    batchGroups: 2,
    maxStaleness: 1,
    groupTimeoutMs: 1000,
    objectives: [{ channel: 'accuracy' }],
    constraints: [{ channel: 'consistency', sense: '>=', threshold: 0.95, sampleThreshold: 0.5, dual: { rule: 'sgd', lr: 0.05, max: 10 } }],
  }),
)
const line = (id: string, promptId: string, accuracy: number, consistency: number | null, extra: object = {}) =>
  JSON.stringify({ id, promptId, rewards: { accuracy, consistency }, ...extra })

const input = [
  line('a1', 'a', 1, 1, { ts: 0, policyVersion: 2 }),
  line('a2', 'a', 0, 0, { ts: 1, policyVersion: 2 }),
  line('b1', 'b', 1, 1, { ts: 2, policyVersion: 2 }),
  line('b1', 'b', 1, 1, { ts: 2, policyVersion: 2 }), // duplicate id
  '',
  line('b2', 'b', 1, null), // no ts: arrives with the previous one
  line('s1', 'c', 1, 1, { ts: 3, policyVersion: 0 }), // stale: 2 versions behind
  line('d1', 'd', 1, 1, { ts: 4, policyVersion: 2 }), // its group never completes and times out alone
  line('e1', 'e', 0, 1, { ts: 2000, policyVersion: 2 }),
  line('e2', 'e', 1, 1, { ts: 2001, policyVersion: 2 }), // flushed as the last, partial batch
].join('\n')

t.test('replay writes one record per batch and accounts for every rollout', async (t) => {
  const result = await runCli(['replay', '--config', configPath], input)
  t.equal(result.code, 0, result.stderr)
  const records = result.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l))
  t.equal(records.length, 2)
  const [first, last] = records
  t.same(Object.keys(first), ['step', 'groups', 'rollouts', 'partialGroups', 'lambda', 'constraints', 'objectives', 'fracZeroStd', 'advantages'])
  t.match(first, { step: 1, groups: 2, rollouts: 4, partialGroups: 0 })
  t.same(first.constraints.consistency, { mean: 2 / 3, violation: 0.95 - 2 / 3, sampleViolationRate: 1 / 3, count: 3 })
  t.same(first.lambda.consistency, { before: 0, after: 0.05 * (0.95 - 2 / 3) })
  t.same(Object.keys(first.advantages), ['a1', 'a2', 'b1', 'b2'])
  t.match(last, { step: 2, groups: 1, rollouts: 2 })
  t.same(Object.keys(last.advantages), ['e1', 'e2'])
  t.match(result.stderr, /9 rollouts read → 2 batches holding 6; dropped: invalid 0, duplicate 1, stale 1, incomplete-group 1/)
  t.match(result.stderr, /last step 2, λ consistency=/)
})

t.test('a malformed line stops the replay with its line number, id and field; exit 1', async (t) => {
  const bad = [line('a1', 'a', 1, 1), '{"id":"r9","promptId":"p","rewards":{"accuracy":1e999}}', 'not json'].join('\n')
  const result = await runCli(['replay', '-c', configPath, '-i', '-'], bad)
  t.equal(result.code, 1)
  t.match(result.stderr, 'dualstream replay: stdin:2: rollout "r9": rewards.accuracy: not a finite number (Infinity)')
  t.match(result.stderr, '--on-invalid skip')

  const skipped = await runCli(['replay', '-c', configPath, '--on-invalid', 'skip'], bad)
  t.equal(skipped.code, 0)
  t.match(skipped.stderr, '3 rollouts read → 0 batches holding 0; dropped: invalid 2, duplicate 0, stale 0, incomplete-group 1')
  t.match(skipped.stderr, 'skipped stdin:3: not valid JSON (Unexpected token')
})

t.test('files in and out; bad config or arguments exit 2', async (t) => {
  const inPath = join(dir, 'in.jsonl')
  const outPath = join(dir, 'out.jsonl')
  writeFileSync(inPath, input)
  const result = await runCli(['replay', '-c', configPath, '-i', inPath, '-o', outPath])
  t.equal(result.code, 0)
  t.equal(readFileSync(outPath, 'utf8').trim().split('\n').length, 2)
  writeFileSync(join(dir, 'bad.json'), JSON.stringify({ groupSize: 0 }))
  const bad = await runCli(['replay', '-c', join(dir, 'bad.json')])
  t.equal(bad.code, 2)
  t.match(bad.stderr, /groupSize: must be >= 1/)
  t.match(bad.stderr, /batchGroups: must be a number/)
  const usage = await runCli(['replay'])
  t.equal(usage.code, 2)
  t.match(usage.stderr, "required option '-c, --config <file>' not specified")
  t.equal((await runCli(['replay', '-c', configPath, '--on-invalid', 'maybe'])).code, 2)
  const help = await runCli(['--help'])
  t.equal(help.code, 0)
  t.match(help.stdout, 'replay')
  const unwritable = await runCli(['replay', '-c', configPath, '-i', inPath, '-o', join(dir, 'no-such-folder', 'out.jsonl')])
  t.equal(unwritable.code, 1)
  t.match(unwritable.stderr, /dualstream replay: ENOENT: no such file or directory, open '.*no-such-folder\/out\.jsonl'/)
  const missing = await runCli(['replay', '-c', configPath, '-i', join(dir, 'nope.jsonl')])
  t.equal(missing.code, 1)
  t.match(missing.stderr, /dualstream replay: ENOENT: no such file or directory, open '.*nope\.jsonl'/)
})

t.test('replay() reports each batch to onBatch with the running summary', async (t) => {
  const { Readable, PassThrough } = await import('node:stream')
  const { replay } = await import('../../src/apps/replay.js')
  const { loadConfig } = await import('../../src/core/config.js')
  const steps: number[] = []
  const summary = await replay({
    config: loadConfig(configPath),
    input: Readable.from([input]),
    output: new PassThrough(),
    onBatch: (b, s) => steps.push(b.step, s.batches),
  })
  t.same(steps, [1, 1, 2, 2])
  t.equal(summary.inBatches, 6)
})

t.test('without constraints the summary has no λ', async (t) => {
  const grpo = join(dir, 'grpo.json')
  writeFileSync(grpo, JSON.stringify({ groupSize: 2, batchGroups: 1, objectives: [{ channel: 'accuracy' }] }))
  const result = await runCli(['replay', '-c', grpo], input)
  t.equal(result.code, 0)
  t.match(result.stderr, /replay: last step 3\n/)
})

t.test('a slow output pauses the input and resumes it when drained', async (t) => {
  const { Readable, Writable } = await import('node:stream')
  const { replay } = await import('../../src/apps/replay.js')
  const { loadConfig } = await import('../../src/core/config.js')
  const lines: string[] = []
  for (let p = 0; p < 200; p++) for (let i = 0; i < 2; i++) lines.push(line(`r${p}-${i}`, `q${p}`, i, 1, { ts: p }))
  let chunks = 0
  const slow = new Writable({ highWaterMark: 16, write: (_chunk, _encoding, done) => (chunks++, setTimeout(done, 1)) })
  const input = Readable.from(
    lines.map((l) => `${l}\n`),
    { objectMode: false, highWaterMark: 64 },
  )
  let pauses = 0
  const pause = input.pause.bind(input)
  input.pause = () => (pauses++, pause())
  const summary = await replay({ config: loadConfig(configPath), input, output: slow })
  t.equal(summary.batches, 100)
  t.equal(chunks, 100)
  t.ok(pauses > 0, `paused ${pauses} times`)
})

t.test('the real process: stdin to stdout, exit codes', async (t) => {
  const ok = await spawnCli(['replay', '-c', configPath], input)
  t.equal(ok.code, 0, ok.stderr)
  t.equal(ok.stdout.trim().split('\n').length, 2)
  const bad = await spawnCli(['replay', '-c', configPath], '{"id":1}')
  t.equal(bad.code, 1)
  t.match(bad.stderr, 'stdin:1: rollout: id: must be a non-empty string, got 1')
})
