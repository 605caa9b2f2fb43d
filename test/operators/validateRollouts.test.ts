import t from 'tap'
import { defer, retry } from 'rxjs'
import { InvalidRolloutError, validateRollouts } from '../../operators/validateRollouts.js'
import { boom, recordDrops, scheduler, type RecordedDrop } from './fixtures/helpers.js'

t.test('valid items come out as clean rollouts: known fields only, missing rewards as null', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const raw1 = {
      id: 'r1',
      promptId: 'p1',
      rewards: { acc: 1, consistency: null, grounding: undefined },
      policyVersion: 3,
      groupSize: 4,
      ts: 10,
      payload: { tokens: [1, 2] },
      extra: 'ignored',
    }
    const raw2 = { id: 'r2', promptId: 'p1', rewards: {}, policyVersion: null, groupSize: null, ts: null }
    const source = cold('-a-b-|', { a: raw1, b: raw2 })
    expectObservable(source.pipe(validateRollouts())).toBe('-a-b-|', {
      a: {
        id: 'r1',
        promptId: 'p1',
        rewards: { acc: 1, consistency: null, grounding: null },
        policyVersion: 3,
        groupSize: 4,
        ts: 10,
        payload: { tokens: [1, 2] },
      },
      b: { id: 'r2', promptId: 'p1', rewards: {} },
    })
    expectSubscriptions(source.subscriptions).toBe('^----!')
  })
  t.end()
})

t.test("'error' (the default) errors the stream at the first invalid item, naming its index, id and field", (t) => {
  const testScheduler = scheduler(t)
  const ok = { id: 'r1', promptId: 'p1', rewards: { acc: 1 } }
  const bad = { id: 'r3', promptId: 'p1', rewards: { acc: NaN } }
  const expected = new InvalidRolloutError([{ id: 'r3', field: 'rewards.acc', reason: 'not a finite number (NaN)' }], 2)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const source = cold('aab-a|', { a: ok, b: bad })
    expectObservable(source.pipe(validateRollouts())).toBe('aa#', { a: ok }, expected)
    expectSubscriptions(source.subscriptions).toBe('^-!')
  })
  t.equal(expected.message, 'invalid rollout at index 2: rollout "r3": rewards.acc: not a finite number (NaN)')
  t.equal(expected.name, 'InvalidRolloutError')

  // the error that actually reached the subscriber, checked field by field
  let caught: unknown
  scheduler(t).run(({ cold }) => {
    cold('ab', { a: ok, b: { promptId: 7, rewards: { acc: Infinity } } })
      .pipe(validateRollouts())
      .subscribe({ error: (error) => (caught = error) })
  })
  t.type(caught, InvalidRolloutError)
  const error = caught as InvalidRolloutError
  t.equal(error.index, 1)
  t.same(error.errors, [
    { field: 'id', reason: 'must be a non-empty string, got nothing' },
    { field: 'promptId', reason: 'must be a non-empty string, got 7' },
    { field: 'rewards.acc', reason: 'not a finite number (Infinity)' },
  ])
  t.equal(
    error.message,
    'invalid rollout at index 1: rollout: id: must be a non-empty string, got nothing; rollout: promptId: must be a non-empty string, got 7; rollout: rewards.acc: not a finite number (Infinity)',
  )
  t.end()
})

t.test("'drop' drops and reports every invalid item with reason 'invalid', count 1, and its index, id and field", (t) => {
  const testScheduler = scheduler(t)
  const drops: RecordedDrop[] = []
  testScheduler.run(({ cold, expectObservable }) => {
    const a = { id: 'r1', promptId: 'p1', rewards: { acc: 1 } }
    const b = { id: 'r2', promptId: 'p1', rewards: { acc: '1' } }
    const c = 'not an object'
    const d = { id: 'r4', promptId: 'p1', rewards: { acc: 0 }, policyVersion: -1, groupSize: 0, ts: Infinity }
    const e = { id: 'r5', promptId: 'p2', rewards: { acc: 0 } }
    const source = cold('-abcde|', { a, b, c, d, e })
    expectObservable(source.pipe(validateRollouts({ onInvalid: 'drop', onDrop: recordDrops(testScheduler, drops) }))).toBe('-a---e|', {
      a: { id: 'r1', promptId: 'p1', rewards: { acc: 1 } },
      e: { id: 'r5', promptId: 'p2', rewards: { acc: 0 } },
    })
  })
  t.same(drops, [
    {
      frame: 2,
      reason: 'invalid',
      count: 1,
      ids: [],
      promptId: undefined,
      detail: 'item 1: rollout "r2": rewards.acc: must be a finite number or null, got the string "1"',
    },
    {
      frame: 3,
      reason: 'invalid',
      count: 1,
      ids: [],
      promptId: undefined,
      detail: 'item 2: rollout: (rollout): must be an object, got the string "not an object"',
    },
    {
      frame: 4,
      reason: 'invalid',
      count: 1,
      ids: [],
      promptId: undefined,
      detail:
        'item 3: rollout "r4": policyVersion: must be an integer >= 0, got -1; rollout "r4": groupSize: must be an integer >= 1, got 0; rollout "r4": ts: must be a finite number (ms), got Infinity',
    },
  ])
  t.end()
})

t.test("'drop' works without onDrop", (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable }) => {
    const a = { id: 'r1', promptId: 'p1', rewards: { acc: 1 } }
    expectObservable(cold('xa|', { x: null, a }).pipe(validateRollouts({ onInvalid: 'drop' }))).toBe('-a|', { a })
  })
  t.end()
})

t.test('limits are applied', (t) => {
  const testScheduler = scheduler(t)
  const drops: RecordedDrop[] = []
  testScheduler.run(({ cold, expectObservable }) => {
    const long = { id: 'abcd', promptId: 'p', rewards: { x: 1, y: 2 } }
    const result = cold('a|', { a: long }).pipe(
      validateRollouts({ onInvalid: 'drop', limits: { maxIdLength: 3, maxChannels: 1 }, onDrop: recordDrops(testScheduler, drops) }),
    )
    expectObservable(result).toBe('-|')
  })
  t.same(
    drops.map((d) => d.detail),
    ['item 0: rollout: id: is 4 characters long, at most 3 are accepted; rollout: rewards: has 2 channels, at most 1 are accepted'],
  )
  t.end()
})

t.test('an exception in onDrop errors the output at that frame and unsubscribes the source', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const a = { id: 'r1', promptId: 'p1', rewards: { acc: 1 } }
    const source = cold('a-x-a|', { a, x: 42 })
    const onDrop = () => {
      throw boom
    }
    expectObservable(source.pipe(validateRollouts({ onInvalid: 'drop', onDrop }))).toBe('a-#', { a }, boom)
    expectSubscriptions(source.subscriptions).toBe('^-!')
  })
  t.end()
})

t.test('a source error passes through', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const a = { id: 'r1', promptId: 'p1', rewards: { acc: 1 } }
    const source = cold('a-#', { a }, boom)
    expectObservable(source.pipe(validateRollouts())).toBe('a-#', { a }, boom)
    expectSubscriptions(source.subscriptions).toBe('^-!')
  })
  t.end()
})

t.test('empty and never sources', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const empty = cold('|')
    expectObservable(empty.pipe(validateRollouts())).toBe('|')
    expectSubscriptions(empty.subscriptions).toBe('(^!)')
    const never = cold('-')
    expectObservable(never.pipe(validateRollouts())).toBe('-')
    expectSubscriptions(never.subscriptions).toBe('^')
  })
  t.end()
})

t.test('an early unsubscribe reaches the source', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const a = { id: 'r1', promptId: 'p1', rewards: { acc: 1 } }
    const source = cold('-a--a-|', { a })
    expectObservable(source.pipe(validateRollouts()), '^---!').toBe('-a---', { a })
    expectSubscriptions(source.subscriptions).toBe('^---!')
  })
  t.end()
})

t.test('state is released: the index restarts at 0 on a re-subscription', (t) => {
  const testScheduler = scheduler(t)
  const drops: RecordedDrop[] = []
  testScheduler.run(({ cold, expectObservable }) => {
    const a = { id: 'r1', promptId: 'p1', rewards: { acc: 1 } }
    const first = cold('aa#', { a }, boom)
    const second = cold('x|', { x: 'bad' })
    let n = 0
    const source = defer(() => (n++ === 0 ? first : second))
    expectObservable(source.pipe(validateRollouts({ onInvalid: 'drop', onDrop: recordDrops(testScheduler, drops) }), retry(1))).toBe('aa-|', { a })
  })
  t.same(
    drops.map((d) => d.detail),
    ['item 0: rollout: (rollout): must be an object, got the string "bad"'],
  )
  t.end()
})
