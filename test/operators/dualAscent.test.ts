import t from 'tap'
import { catchError, map, retry, throwError } from 'rxjs'
import { dualAscent } from '../../operators/dualAscent.js'
import { parseConfig } from '../../src/core/config.js'
import type { DualBatch, DualState, MeasuredBatch, WindowEntry } from '../../src/core/types.js'
import { fgrpoConfig } from './fixtures/config.js'
import { boom, scheduler } from './fixtures/helpers.js'

/** A measured batch whose consistency constraint has the given J (τ 0.9, so e = 0.9 − J). */
function measured(mean: number, window: WindowEntry[] = []): MeasuredBatch {
  return {
    groups: [],
    ts: 0,
    reason: 'full',
    constraints: { consistency: { mean, violation: 0.9 - mean, sampleViolationRate: 0, count: 4 } },
    columns: { offsets: Int32Array.of(0), columns: {} },
    windows: { consistency: window },
  }
}

/** The batch as dualAscent emits it for an sgd constraint. */
function dual(input: MeasuredBatch, step: number, before: number, after: number): DualBatch {
  return {
    ...input,
    step,
    lambda: { consistency: { before, after } },
    dualState: { step, constraints: { consistency: { controller: { rule: 'sgd', lambda: after }, window: input.windows.consistency } } },
  }
}

t.test('sgd (lr 0.05): λ ← clip(λ + η·e, 0, λmax), steps numbered from 1, λ before and after on each batch', (t) => {
  const testScheduler = scheduler(t)
  const config = fgrpoConfig()
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const a = measured(0.75, [{ sum: 3, count: 4 }]) // e = 0.15: λ rises
    const b = measured(1) // e = −0.1: λ falls
    const c = measured(1) // would go below 0: clipped
    const λ1 = 0 + 0.05 * (0.9 - 0.75)
    const λ2 = λ1 + 0.05 * (0.9 - 1)
    t.ok(Math.abs(λ1 - 0.0075) < 1e-15 && Math.abs(λ2 - 0.0025) < 1e-15, 'the hand-computed values')
    const source = cold('-a-b-c-|', { a, b, c })
    expectObservable(source.pipe(dualAscent(config))).toBe('-x-y-z-|', {
      x: dual(a, 1, 0, λ1),
      y: dual(b, 2, λ1, λ2),
      z: dual(c, 3, λ2, 0),
    })
    expectSubscriptions(source.subscriptions).toBe('^------!')
  })
  t.end()
})

t.test('λ is capped at dual.max and starts at dual.init', (t) => {
  const testScheduler = scheduler(t)
  const config = fgrpoConfig({
    constraints: [{ channel: 'consistency', sense: '>=', threshold: 0.9, dual: { rule: 'sgd', lr: 1, init: 0.5, max: 1 } }],
  })
  testScheduler.run(({ cold, expectObservable }) => {
    const a = measured(0.6) // e = 0.3: 0.8
    const b = measured(0.6) // 1.1, capped at 1
    expectObservable(cold('ab|', { a, b }).pipe(dualAscent(config))).toBe('xy|', {
      x: dual(a, 1, 0.5, 0.5 + 1 * (0.9 - 0.6)),
      y: dual(b, 2, 0.5 + 1 * (0.9 - 0.6), 1),
    })
  })
  t.end()
})

t.test('a batch without data for a constraint (NaN violation) leaves λ unchanged but is still a step', (t) => {
  const testScheduler = scheduler(t)
  const config = fgrpoConfig()
  testScheduler.run(({ cold, expectObservable }) => {
    const a = measured(0.75)
    const b = measured(NaN)
    const λ1 = 0 + 0.05 * (0.9 - 0.75)
    expectObservable(cold('ab|', { a, b }).pipe(dualAscent(config))).toBe('xy|', { x: dual(a, 1, 0, λ1), y: dual(b, 2, λ1, λ1) })
  })
  t.end()
})

t.test('without constraints it only numbers the batches', (t) => {
  const testScheduler = scheduler(t)
  const grpo = parseConfig({ groupSize: 2, batchGroups: 1, objectives: [{ channel: 'acc' }] })
  testScheduler.run(({ cold, expectObservable }) => {
    const bare: MeasuredBatch = { groups: [], ts: 0, reason: 'flush', constraints: {}, columns: { offsets: Int32Array.of(0), columns: {} }, windows: {} }
    const result = cold('aa|', { a: bare }).pipe(dualAscent(grpo))
    expectObservable(result).toBe('xy|', {
      x: { ...bare, step: 1, lambda: {}, dualState: { step: 1, constraints: {} } },
      y: { ...bare, step: 2, lambda: {}, dualState: { step: 2, constraints: {} } },
    })
  })
  t.end()
})

t.test('restoring from an initialState continues the step count and λ', (t) => {
  const testScheduler = scheduler(t)
  const config = fgrpoConfig()
  const initialState: DualState = { step: 41, constraints: { consistency: { controller: { rule: 'sgd', lambda: 0.3 }, window: [{ sum: 1, count: 2 }] } } }
  testScheduler.run(({ cold, expectObservable }) => {
    const a = measured(0.75, [{ sum: 3, count: 4 }])
    const b = measured(0.5, [{ sum: 2, count: 4 }])
    const λ1 = 0.3 + 0.05 * (0.9 - 0.75)
    const λ2 = λ1 + 0.05 * (0.9 - 0.5)
    expectObservable(cold('ab|', { a, b }).pipe(dualAscent(config, { initialState }))).toBe('xy|', {
      x: dual(a, 42, 0.3, λ1),
      y: dual(b, 43, λ1, λ2),
    })
  })
  t.same(initialState.step, 41, 'the initial state is not modified')
  t.end()
})

t.test('the log and pid controllers, stepped and restored', (t) => {
  const testScheduler = scheduler(t)
  const config = parseConfig({
    groupSize: 2,
    batchGroups: 1,
    objectives: [{ channel: 'acc' }],
    constraints: [
      { channel: 'consistency', sense: '>=', threshold: 0.9, dual: { rule: 'log', lr: 0.1 } },
      { channel: 'grounding', sense: '>=', threshold: 0.9, dual: { rule: 'pid', delay: 2 } },
    ],
  })
  const batch = (e: number): MeasuredBatch => ({
    groups: [],
    ts: 0,
    reason: 'full',
    constraints: {
      consistency: { mean: 0.9 - e, violation: e, sampleViolationRate: 0, count: 1 },
      grounding: { mean: 0.9 - e, violation: e, sampleViolationRate: 0, count: 1 },
    },
    columns: { offsets: Int32Array.of(0), columns: {} },
    windows: { consistency: [], grounding: [] },
  })
  // log: log λ ← log λ + η·λ·e from λ = 1; pid with OmniSafe's defaults (kp 0.1, ki 0.01, kd 0.01, α 0.95), I₀ = 0.001
  const logλ1 = 0 + 0.1 * 1 * 0.5
  const I = Math.max(0, 0.001 + 0.01 * 0.5)
  const P = 0.95 * 0 + (1 - 0.95) * 0.5
  // the derivative term smooths the cost, here −J for a '>=' constraint (as OmniSafe on the cost −J, limit −τ)
  const C = 0.95 * 0 + (1 - 0.95) * -(0.9 - 0.5)
  const pidλ1 = Math.min(Math.max(0.1 * P + I + 0.01 * Math.max(0, C - 0), 0), Infinity)
  const after1: DualState = {
    step: 1,
    constraints: {
      consistency: { controller: { rule: 'log', logLambda: logλ1, lambda: Math.exp(logλ1) }, window: [] },
      grounding: { controller: { rule: 'pid', integral: I, proportional: P, costEma: C, history: [0, C], lambda: pidλ1 }, window: [] },
    },
  }
  testScheduler.run(({ cold, expectObservable }) => {
    const a = batch(0.5)
    expectObservable(cold('a|', { a }).pipe(dualAscent(config))).toBe('x|', {
      x: { ...a, step: 1, lambda: { consistency: { before: 1, after: Math.exp(logλ1) }, grounding: { before: 0.001, after: pidλ1 } }, dualState: after1 },
    })
    // resumed from the state after step 1, a second batch with e = 0
    const I2 = Math.max(0, I + 0.01 * 0)
    const P2 = 0.95 * P + (1 - 0.95) * 0
    const C2 = 0.95 * C + (1 - 0.95) * -(0.9 - 0)
    const pidλ2 = 0.1 * P2 + I2 + 0.01 * Math.max(0, C2 - 0)
    const result = cold('b|', { b: batch(0) }).pipe(
      dualAscent(config, { initialState: after1 }),
      map((d) => ({ step: d.step, lambda: d.lambda, pid: d.dualState.constraints.grounding.controller })),
    )
    expectObservable(result).toBe('y|', {
      y: {
        step: 2,
        lambda: { consistency: { before: Math.exp(logλ1), after: Math.exp(logλ1) }, grounding: { before: pidλ1, after: pidλ2 } },
        pid: { rule: 'pid', integral: I2, proportional: P2, costEma: C2, history: [C, C2], lambda: pidλ2 },
      },
    })
  })
  t.end()
})

t.test('refuses an initialState that does not fit the config, listing every problem', (t) => {
  const config = parseConfig({
    groupSize: 2,
    batchGroups: 1,
    objectives: [{ channel: 'acc' }],
    constraints: [
      { channel: 'consistency', sense: '>=', threshold: 0.9, dual: { rule: 'sgd', lr: 0.05 } },
      { channel: 'grounding', sense: '>=', threshold: 0.9, dual: { rule: 'pid', delay: 3 } },
      { channel: 'cost', sense: '<=', threshold: 0.1, dual: { rule: 'sgd', lr: 0.05 } },
    ],
  })
  const initialState: DualState = {
    step: 3,
    constraints: {
      consistency: { controller: { rule: 'log', logLambda: 0, lambda: 1 }, window: [] },
      grounding: { controller: { rule: 'pid', integral: 0, proportional: 0, costEma: 0, history: [0, 0], lambda: 0 }, window: [] },
    },
  }
  t.throws(() => dualAscent(config, { initialState }), {
    message: [
      'dualAscent: the initial state does not fit the config:',
      '  constraint "consistency": saved state is for rule "log", config says "sgd"',
      '  constraint "grounding": saved pid history has 2 entries, config delay is 3',
      '  constraint "cost": no saved dual state',
    ].join('\n'),
  })
  t.end()
})

t.test('an exception while stepping (a batch measured under another config) errors the output and unsubscribes the source', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const good = measured(0.75)
    const unmeasured: MeasuredBatch = { ...good, constraints: {} }
    const source = cold('a-b-a|', { a: good, b: unmeasured })
    const result = source.pipe(
      dualAscent(fgrpoConfig()),
      map((d) => d.step),
      // the engine's wording of the TypeError is not the point: its kind is
      catchError((error: unknown) => throwError(() => (error instanceof TypeError ? 'TypeError' : error))),
    )
    expectObservable(result).toBe('a-#', { a: 1 }, 'TypeError')
    expectSubscriptions(source.subscriptions).toBe('^-!')
  })
  t.end()
})

t.test('a source error passes through', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const source = cold<MeasuredBatch>('--#', undefined, boom)
    expectObservable(source.pipe(dualAscent(fgrpoConfig()))).toBe('--#', undefined, boom)
    expectSubscriptions(source.subscriptions).toBe('^-!')
  })
  t.end()
})

t.test('empty and never sources', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const empty = cold<MeasuredBatch>('|')
    expectObservable(empty.pipe(dualAscent(fgrpoConfig()))).toBe('|')
    expectSubscriptions(empty.subscriptions).toBe('(^!)')
    const never = cold<MeasuredBatch>('-')
    expectObservable(never.pipe(dualAscent(fgrpoConfig()))).toBe('-')
    expectSubscriptions(never.subscriptions).toBe('^')
  })
  t.end()
})

t.test('an early unsubscribe reaches the source', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const source = cold('-a--a-|', { a: measured(0.75) })
    expectObservable(
      source.pipe(
        dualAscent(fgrpoConfig()),
        map((d) => d.step),
      ),
      '^---!',
    ).toBe('-s---', { s: 1 })
    expectSubscriptions(source.subscriptions).toBe('^---!')
  })
  t.end()
})

t.test('state is released: a re-subscription starts again from step 0 and λ = init', (t) => {
  const testScheduler = scheduler(t)
  testScheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
    const source = cold('a#', { a: measured(0.75) }, boom)
    const result = source.pipe(
      dualAscent(fgrpoConfig()),
      retry(1),
      map((d) => [d.step, d.lambda.consistency.before]),
    )
    expectObservable(result).toBe('xx#', { x: [1, 0] }, boom)
    expectSubscriptions(source.subscriptions).toBe(['^!', '-^!'])
  })
  t.end()
})
