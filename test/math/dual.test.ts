import fc from 'fast-check'
import t from 'tap'
import { parseConfig, type ConstraintSpec } from '../../src/core/config.js'
import {
  dualStateProblems,
  initialControllerState,
  initialDualState,
  lambdaOf,
  lambdasOf,
  stepController,
  stepDual,
  upgradeDualState,
} from '../../src/math/dual.js'
import type { ControllerState, DualState } from '../../src/core/types.js'
import { close } from '../support/batches.js'

const constraint = (dual: object, sense: '>=' | '<=' = '>='): ConstraintSpec =>
  parseConfig({ groupSize: 2, batchGroups: 1, objectives: [{ channel: 'acc' }], constraints: [{ channel: 'c', sense, threshold: 0.5, dual }] }).constraints[0]

const run = (spec: ConstraintSpec, violations: number[]): number[] => {
  let state = initialControllerState(spec.dual)
  return violations.map((e) => lambdaOf((state = stepController(spec.dual, state, e))))
}

t.test('sgd: λ ← clip(λ + η·e, 0, λmax)', (t) => {
  const spec = constraint({ rule: 'sgd', lr: 0.05, max: 1 })
  t.same(run(spec, [0.25]), [0.0125])
  t.same(run(spec, [-1]), [0], 'never negative')
  t.same(run(spec, [100]), [1], 'never above max')
  t.end()
})

t.test('log: log λ ← log λ + η·λ·e, capped at log λmax (safe-rlhf)', (t) => {
  const spec = constraint({ rule: 'log', lr: 0.5, init: 1, max: 2 })
  const [first, second] = run(spec, [0.2, 10])
  t.ok(close(first, Math.exp(0.1), 1e-15))
  t.ok(close(second, 2, 1e-15))
  t.end()
})

t.test('pid: against a hand-computed sequence', (t) => {
  // kp 1, ki 0.5, kd 2, αp = αd = 0.5, delay 2, I₀ = 0.1:
  //  e=0.4:  I=0.3 P=0.2  C=0.2  D=0.2−0     λ=0.2+0.3+0.4 = 0.9
  //  e=0.2:  I=0.4 P=0.2  C=0.2  D=0.2−0     λ=0.2+0.4+0.4 = 1.0
  //  e=−0.6: I=0.1 P=−0.2 C=−0.2 D=max(0,−0.4) λ=clip(−0.1) = 0
  //  e=0.8:  I=0.5 P=0.3  C=0.3  D=0.3−0.2   λ=0.3+0.5+0.2 = 1.0
  const spec = constraint({ rule: 'pid', kp: 1, ki: 0.5, kd: 2, alphaP: 0.5, alphaD: 0.5, delay: 2, init: 0.1, max: 10 })
  const lambdas = run(spec, [0.4, 0.2, -0.6, 0.8])
  ;[0.9, 1.0, 0, 1.0].forEach((expected, i) => t.ok(close(lambdas[i], expected, 1e-12), `step ${i + 1}: ${lambdas[i]} ≈ ${expected}`))
  t.end()
})

t.test("pid equals OmniSafe's CPPOPID for a '<=' cost with τ = 0 (e = J)", (t) => {
  // a direct port of omnisafe/common/pid_lagrange.py (deque of C seeded with [0], maxlen delay)
  const omnisafe = (p: { kp: number; ki: number; kd: number; a: number; delay: number; init: number; max: number }, costs: number[]) => {
    let integral = p.init
    let deltaP = 0
    let costD = 0
    const ds = [0]
    return costs.map((cost) => {
      integral = Math.max(0, integral + cost * p.ki)
      deltaP = p.a * deltaP + (1 - p.a) * cost
      costD = p.a * costD + (1 - p.a) * cost
      const pidD = Math.max(0, costD - ds[0])
      const penalty = Math.min(Math.max(0, p.kp * deltaP + integral + p.kd * pidD), p.max)
      ds.push(costD)
      if (ds.length > p.delay) ds.shift()
      return penalty
    })
  }
  fc.assert(
    fc.property(fc.array(fc.double({ min: -2, max: 2, noNaN: true }), { maxLength: 40 }), fc.integer({ min: 1, max: 12 }), (costs, delay) => {
      const p = { kp: 0.1, ki: 0.01, kd: 0.01, a: 0.95, delay, init: 0.001, max: 100 }
      const spec = { ...constraint({ rule: 'pid', delay, max: 100 }, '<='), threshold: 0 }
      const ours = run(spec, costs)
      const theirs = omnisafe(p, costs)
      return ours.every((l, i) => close(l, theirs[i], 1e-12))
    }),
  )
  t.end()
})

const ruleArb = fc.oneof(
  fc.record({ rule: fc.constant('sgd'), lr: fc.double({ min: 1e-3, max: 10, noNaN: true }), max: fc.double({ min: 0.01, max: 100, noNaN: true }) }),
  fc.record({ rule: fc.constant('log'), lr: fc.double({ min: 1e-3, max: 10, noNaN: true }), init: fc.constantFrom(0.001, 1), max: fc.constantFrom(5, 100) }),
  fc.record({
    rule: fc.constant('pid'),
    kp: fc.double({ min: 0, max: 5, noNaN: true }),
    ki: fc.double({ min: 0, max: 5, noNaN: true }),
    kd: fc.double({ min: 0, max: 5, noNaN: true }),
    delay: fc.integer({ min: 1, max: 5 }),
    max: fc.double({ min: 0.01, max: 100, noNaN: true }),
  }),
)

t.test('λ is never negative nor above max, whatever the violations (NaN = no data leaves it unchanged)', (t) => {
  fc.assert(
    fc.property(ruleArb, fc.array(fc.oneof(fc.double({ min: -50, max: 50, noNaN: true }), fc.constant(NaN)), { maxLength: 60 }), (rule, violations) => {
      const spec = constraint(rule)
      let state = initialControllerState(spec.dual)
      for (const e of violations) {
        const next = stepController(spec.dual, state, e)
        if (e !== e && next !== state) return false
        state = next
        const lambda = lambdaOf(state)
        if (!(lambda >= 0 && lambda <= spec.dual.max)) return false
      }
      return true
    }),
  )
  t.end()
})

t.test('a state restored from JSON continues exactly as the live one', (t) => {
  fc.assert(
    fc.property(ruleArb, fc.array(fc.double({ min: -5, max: 5, noNaN: true }), { minLength: 2, maxLength: 30 }), fc.nat(), (rule, violations, cut) => {
      const spec = constraint(rule)
      const at = cut % violations.length
      let live = initialControllerState(spec.dual)
      for (const e of violations) live = stepController(spec.dual, live, e)
      let restored = initialControllerState(spec.dual)
      violations.slice(0, at).forEach((e) => (restored = stepController(spec.dual, restored, e)))
      restored = JSON.parse(JSON.stringify(restored)) as ControllerState
      violations.slice(at).forEach((e) => (restored = stepController(spec.dual, restored, e)))
      return lambdaOf(restored) === lambdaOf(live)
    }),
  )
  t.end()
})

t.test('dual state: initial, step, and the checks made before restoring one', (t) => {
  const config = parseConfig({
    groupSize: 2,
    batchGroups: 1,
    objectives: [{ channel: 'acc' }],
    constraints: [
      { channel: 'a', sense: '>=', threshold: 0.9, dual: { rule: 'sgd', lr: 1, init: 0.5 } },
      { channel: 'b', sense: '<=', threshold: 0.1, dual: { rule: 'pid', delay: 3 } },
    ],
  })
  const state = initialDualState(config.constraints)
  t.same(lambdasOf(state), { a: 0.5, b: 0.001 })
  const m = (violation: number) => ({ mean: 0, violation, sampleViolationRate: 0, count: 1 })
  const next = stepDual(state, config.constraints, { a: m(0.25), b: m(NaN) }, { a: [{ sum: 1, count: 2 }], b: [] })
  t.equal(next.state.step, 1)
  t.same(next.lambda.a, { before: 0.5, after: 0.75 })
  t.same(next.lambda.b, { before: 0.001, after: 0.001 })
  t.same(next.state.constraints.a.window, [{ sum: 1, count: 2 }])
  t.same(state.step, 0, 'the input state is not modified')

  t.same(dualStateProblems(state, config.constraints), [])
  const swapped = {
    step: 3,
    constraints: { a: state.constraints.b, b: { ...state.constraints.b, controller: { ...state.constraints.b.controller, history: [0] } } },
  }
  t.same(dualStateProblems(swapped as typeof state, config.constraints), [
    'constraint "a": saved state is for rule "pid", config says "sgd"',
    'constraint "b": saved pid history has 1 entries, config delay is 3',
  ])
  t.same(dualStateProblems({ step: 0, constraints: {} }, config.constraints).length, 2)
  t.same(dualStateProblems(state, []), ['constraint "a": in the saved state, not in the config', 'constraint "b": in the saved state, not in the config'])
  t.throws(
    () => stepController(config.constraints[0].dual, state.constraints.b.controller, 1),
    /dual state of rule "pid" cannot be stepped by a "sgd" controller/,
  )
  t.end()
})

t.test('a pid state saved when the derivative smoothed e is upgraded exactly: the run goes on as if it had always smoothed the cost', (t) => {
  fc.assert(
    fc.property(
      fc.constantFrom<'>=' | '<='>('>=', '<='),
      fc.double({ min: 0, max: 1, noNaN: true }),
      fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { minLength: 1, maxLength: 60 }),
      fc.integer({ min: 1, max: 8 }),
      fc.nat(),
      (sense, threshold, means, delay, cut) => {
        const config = parseConfig({
          groupSize: 2,
          batchGroups: 1,
          objectives: [{ channel: 'acc' }],
          constraints: [{ channel: 'c', sense, threshold, dual: { rule: 'pid', delay, kd: 1, alphaD: 0.8 } }],
        })
        const spec = config.constraints[0]
        const rule = spec.dual as Extract<typeof spec.dual, { rule: 'pid' }>
        const measure = (mean: number) => ({ mean, violation: sense === '<=' ? mean - threshold : threshold - mean, sampleViolationRate: 0, count: 1 })
        const at = cut % (means.length + 1)
        // today's rule all along
        let live = initialDualState(config.constraints)
        for (const m of means) live = stepDual(live, config.constraints, { c: measure(m) }, { c: [] }).state
        // the old rule (C ← α_d·C + (1−α_d)·e, kept in `derivativeEma`) for the first `at` steps
        let old = { integral: rule.init, proportional: 0, derivativeEma: 0, history: new Array<number>(delay).fill(0), lambda: rule.init }
        for (const m of means.slice(0, at)) {
          const e = measure(m).violation
          const integral = Math.max(0, old.integral + rule.ki * e)
          const proportional = rule.alphaP * old.proportional + (1 - rule.alphaP) * e
          const derivativeEma = rule.alphaD * old.derivativeEma + (1 - rule.alphaD) * e
          const lambda = Math.min(Math.max(rule.kp * proportional + integral + rule.kd * Math.max(0, derivativeEma - old.history[0]), 0), spec.dual.max)
          old = { integral, proportional, derivativeEma, history: [...old.history.slice(1), derivativeEma], lambda }
        }
        const saved = { step: at, constraints: { c: { controller: { rule: 'pid', ...old }, window: [] } } } as unknown as DualState
        let resumed = upgradeDualState(saved, config.constraints)
        for (const m of means.slice(at)) resumed = stepDual(resumed, config.constraints, { c: measure(m) }, { c: [] }).state
        const a = resumed.constraints.c.controller as Extract<ControllerState, { rule: 'pid' }>
        const b = live.constraints.c.controller as Extract<ControllerState, { rule: 'pid' }>
        // λ saved is the one the old rule gave (already used); from the next step on it is today's
        const sameLambda = at === means.length || close(a.lambda, b.lambda, 1e-12)
        return sameLambda && close(a.costEma, b.costEma, 1e-12) && a.history.every((h, k) => close(h, b.history[k], 1e-12))
      },
    ),
  )
  const config = parseConfig({
    groupSize: 2,
    batchGroups: 1,
    objectives: [{ channel: 'acc' }],
    constraints: [
      { channel: 'a', sense: '>=', threshold: 0.9, dual: { rule: 'sgd', lr: 1 } },
      { channel: 'b', sense: '<=', threshold: 0.1, dual: { rule: 'pid' } },
    ],
  })
  const today = initialDualState(config.constraints)
  t.equal(upgradeDualState(today, config.constraints), today, 'a state in the form of today is returned as it is')
  t.end()
})
