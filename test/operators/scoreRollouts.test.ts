import { lastValueFrom, of, from, toArray, throwError } from 'rxjs'
import { TestScheduler } from 'rxjs/testing'
import t from 'tap'
import { scoreRollouts, type ScoringModel } from '../../operators/scoreRollouts.js'
import { loadOnnxScorer } from '../../src/models/onnxScorer.js'
import { GraphBuilder } from '../../src/models/policy/onnx-graph.js'
import type { Rollout } from '../../src/core/types.js'

type Payload = { x: number[] }
const rollout = (id: string, x: number[]): Rollout<Payload> => ({ id, promptId: 'p', rewards: { accuracy: 1 }, payload: { x } })
const sumModel: ScoringModel = (features, rows) => {
  const out = new Float32Array(rows)
  for (let r = 0; r < rows; r++) out[r] = features[2 * r] + features[2 * r + 1]
  return of(out)
}
const options = { channel: 'judge', featureDim: 2, features: (r: Rollout<Payload>) => r.payload!.x, model: sumModel }
const newScheduler = (t: { same: (a: unknown, b: unknown) => boolean }) => new TestScheduler((actual, expected) => t.same(actual, expected))

t.test('values: batches of batchSize scored in order, the last partial batch at completion', (t) => {
  newScheduler(t).run(({ cold, expectObservable, expectSubscriptions }) => {
    const a = rollout('a', [1, 2])
    const b = rollout('b', [3, 4])
    const c = rollout('c', [5, 0.5])
    const source = cold('-a-b-c-|', { a, b, c })
    const scored = (r: Rollout<Payload>, s: number) => ({ ...r, rewards: { accuracy: 1, judge: s } })
    expectObservable(source.pipe(scoreRollouts({ ...options, batchSize: 2 }))).toBe('---(ab)(c|)', { a: scored(a, 3), b: scored(b, 7), c: scored(c, 5.5) })
    expectSubscriptions(source.subscriptions).toBe('^------!')
  })
  t.end()
})

t.test('maxWaitMs sends a partial batch on time (virtual clock)', (t) => {
  newScheduler(t).run(({ cold, expectObservable }) => {
    const a = rollout('a', [1, 1])
    const source = cold('a 20ms |', { a })
    expectObservable(source.pipe(scoreRollouts({ ...options, batchSize: 10, maxWaitMs: 5 }))).toBe('5ms a 15ms |', {
      a: { ...a, rewards: { accuracy: 1, judge: 2 } },
    })
  })
  t.end()
})

t.test('errors: features of the wrong size, too few scores, a non-finite score, a failing model, a failing source', (t) => {
  newScheduler(t).run(({ cold, expectObservable, expectSubscriptions }) => {
    const source = cold('-a|', { a: rollout('a', [1]) })
    expectObservable(source.pipe(scoreRollouts({ ...options, batchSize: 1 }))).toBe(
      '-#',
      undefined,
      new RangeError('scoreRollouts(judge): rollout "a" has 1 features, the model takes 2'),
    )
    expectSubscriptions(source.subscriptions).toBe('^!')
    const two = cold('-a|', { a: rollout('a', [1, 2]) })
    expectObservable(two.pipe(scoreRollouts({ ...options, batchSize: 1, model: () => of([]) }))).toBe(
      '-#',
      undefined,
      new RangeError('scoreRollouts(judge): the model returned 0 scores for 1 rollouts'),
    )
    expectObservable(two.pipe(scoreRollouts({ ...options, batchSize: 1, model: () => of([NaN]) }))).toBe(
      '-#',
      undefined,
      new RangeError('scoreRollouts(judge): the model scored rollout "a" NaN'),
    )
    expectObservable(two.pipe(scoreRollouts({ ...options, batchSize: 1, model: () => throwError(() => 'model down') }))).toBe('-#', undefined, 'model down')
    expectObservable(cold<Rollout<Payload>>('-#', undefined, 'source down').pipe(scoreRollouts(options))).toBe('-#', undefined, 'source down')
  })
  t.end()
})

t.test('empty and never sources; early unsubscribe', (t) => {
  newScheduler(t).run(({ cold, expectObservable, expectSubscriptions }) => {
    expectObservable(cold<Rollout<Payload>>('|').pipe(scoreRollouts(options))).toBe('|')
    const never = cold<Rollout<Payload>>('-')
    expectObservable(never.pipe(scoreRollouts(options))).toBe('-')
    const source = cold('-a-a-a-|', { a: rollout('a', [1, 2]) })
    expectObservable(source.pipe(scoreRollouts({ ...options, batchSize: 1 })), '^--!').toBe('-a-', {
      a: { ...rollout('a', [1, 2]), rewards: { accuracy: 1, judge: 3 } },
    })
    expectSubscriptions(source.subscriptions).toBe('^--!')
  })
  t.end()
})

t.test('a real ONNX judge built in the test, run by onnxruntime', async (t) => {
  // score = sigmoid(x · w + b): a tiny "consistency judge"
  const g = new GraphBuilder('judge')
  const x = g.input('features', 'float32', ['rows', 2])
  const logits = g.node('Gemm', [x, g.initializer('w', Float32Array.from([2, -1]), [2, 1]), g.initializer('b', Float32Array.from([0.5]), [1])])
  const flat = g.node('Reshape', [g.node('Sigmoid', [logits]), g.int64s([-1])], {}, 'score')
  g.output(flat, 'float32', ['rows'])
  const judge = await loadOnnxScorer(g.serialize())
  t.equal(judge.inputName, 'features')
  t.equal(judge.outputName, 'score')
  const inputs = [rollout('a', [1, 0]), rollout('b', [0, 3]), rollout('c', [0.25, 0.5])]
  const scored = await lastValueFrom(from(inputs).pipe(scoreRollouts({ ...options, model: judge.run, batchSize: 2 }), toArray()))
  const sigmoid = (z: number) => 1 / (1 + Math.exp(-z))
  t.same(
    scored.map((r) => r.id),
    ['a', 'b', 'c'],
  )
  scored.forEach((r, i) => t.ok(Math.abs((r.rewards.judge as number) - sigmoid(2 * inputs[i].payload!.x[0] - inputs[i].payload!.x[1] + 0.5)) < 1e-6))
  await judge.release()
  await t.rejects(loadOnnxScorer(g.serialize(), { output: 'nope' }), /the scoring model has no output "nope" \(it has score\)/)
  // from a .onnx file, as a user would
  const { mkdtempSync, writeFileSync } = await import('node:fs')
  const { tmpdir } = await import('node:os')
  const { join } = await import('node:path')
  const path = join(mkdtempSync(join(tmpdir(), 'dualstream-judge-')), 'judge.onnx')
  writeFileSync(path, g.serialize())
  const fromFile = await loadOnnxScorer(path, { input: 'features', output: 'score' })
  t.same(
    Array.from(await fromFile.run(Float32Array.of(1, 0), 1)).map((x) => x.toFixed(5)),
    [sigmoid(2.5).toFixed(5)],
  )
  await fromFile.release()
})
