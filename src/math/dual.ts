/**
 * Dual controllers for the Lagrange multipliers (DESIGN §3). Each is a pure step function
 * over a plain, JSON-serialisable state, so the state can be persisted with every batch
 * and a restart resumes exactly.
 */
import type { ConstraintSpec, DualRule } from '../core/config.js'
import type { ConstraintMeasure, ControllerState, DualState, LambdaChange } from '../core/types.js'

type Rule = DualRule & { max: number }

const clip = (x: number, max: number): number => Math.min(Math.max(x, 0), max)

/** The state a controller starts from (λ = init). */
export function initialControllerState(rule: Rule): ControllerState {
  switch (rule.rule) {
    case 'sgd':
      return { rule: 'sgd', lambda: clip(rule.init, rule.max) }
    case 'log': {
      const logLambda = Math.min(Math.log(rule.init), Math.log(rule.max))
      return { rule: 'log', logLambda, lambda: clip(Math.exp(logLambda), rule.max) }
    }
    case 'pid':
      return {
        rule: 'pid',
        integral: rule.init,
        proportional: 0,
        costEma: 0,
        history: new Array<number>(rule.delay).fill(0),
        lambda: clip(rule.init, rule.max),
      }
  }
}

/** The multiplier a controller state stands for; never negative nor above its max. */
export function lambdaOf(state: ControllerState): number {
  return state.lambda
}

/**
 * One dual step on the violation e (positive = violated); a NaN violation (no data this
 * batch) leaves the state unchanged. `cost` is the measured J with its sign adjusted so that
 * more is worse (J for a `<=` constraint, −J for `>=`; then e = cost − τ for `<=` and
 * cost − (−τ) for `>=`); only `pid` uses it.
 *
 * - `sgd`: λ ← clip(λ + η·e, 0, λmax)
 * - `log`: log λ ← min(log λ + η·λ·e, log λmax)   (safe-rlhf's PPO-Lag: SGD on log λ with
 *   the loss −e·λ, then log λ clamped to log λmax)
 * - `pid`: I ← max(0, I + Kᵢe); P ← αₚP + (1−αₚ)e; C ← α_d·C + (1−α_d)·cost;
 *   D = max(0, C − C_{t−delay}) (C before the first step is 0); λ = clip(KₚP + I + K_d·D, 0, λmax).
 *   This is OmniSafe's `PIDLagrangian.pid_update` (Stooke et al. 2020) for a `<=` cost, where
 *   the derivative smooths the cost J itself, not e; for `>=` it is the same controller on the
 *   cost −J with limit −τ. (Smoothing e instead differs by K_d·(1−α_d)·τ at the first step.)
 *
 * @example
 * stepController({ rule: 'sgd', lr: 0.05, init: 0, max: 1 }, { rule: 'sgd', lambda: 0 }, 0.25) // { rule: 'sgd', lambda: 0.0125 }
 */
export function stepController(rule: Rule, state: ControllerState, violation: number, cost = violation): ControllerState {
  if (violation !== violation) return state
  if (rule.rule === 'sgd' && state.rule === 'sgd') {
    return { rule: 'sgd', lambda: clip(state.lambda + rule.lr * violation, rule.max) }
  }
  if (rule.rule === 'log' && state.rule === 'log') {
    const logLambda = Math.min(state.logLambda + rule.lr * state.lambda * violation, Math.log(rule.max))
    // exp(log max) can land one ulp above max: λ itself is clipped
    return { rule: 'log', logLambda, lambda: clip(Math.exp(logLambda), rule.max) }
  }
  if (rule.rule === 'pid' && state.rule === 'pid') {
    const integral = Math.max(0, state.integral + rule.ki * violation)
    const proportional = rule.alphaP * state.proportional + (1 - rule.alphaP) * violation
    const costEma = rule.alphaD * state.costEma + (1 - rule.alphaD) * cost
    const derivative = Math.max(0, costEma - state.history[0])
    return {
      rule: 'pid',
      integral,
      proportional,
      costEma,
      history: [...state.history.slice(1), costEma],
      lambda: clip(rule.kp * proportional + integral + rule.kd * derivative, rule.max),
    }
  }
  throw new TypeError(`dual state of rule "${state.rule}" cannot be stepped by a "${rule.rule}" controller`)
}

/** The dual state before the first batch. */
export function initialDualState(constraints: readonly ConstraintSpec[]): DualState {
  const out: DualState = { step: 0, constraints: {} }
  for (const c of constraints) out.constraints[c.channel] = { controller: initialControllerState(c.dual), window: [] }
  return out
}

/** Current λ of every constraint. */
export function lambdasOf(state: DualState): Record<string, number> {
  const out: Record<string, number> = {}
  for (const [channel, entry] of Object.entries(state.constraints)) out[channel] = lambdaOf(entry.controller)
  return out
}

/** A pid state saved before its derivative smoothed the cost (it smoothed e, in `derivativeEma`). */
type SmoothedViolationPid = Omit<Extract<ControllerState, { rule: 'pid' }>, 'costEma'> & { derivativeEma: number }

/**
 * A saved dual state in today's form. A `pid` state written before the derivative term
 * smoothed the cost (field `derivativeEma`, the EMA of e) is converted exactly: both EMAs start
 * at 0 and e = cost − τₛ (τₛ = τ for `<=`, −τ for `>=`), so after s steps the cost's EMA is the
 * violation's plus (1 − α_dˢ)·τₛ, for the current value (s = the step) and for each value of
 * the history (s = its step; 0 before the first). Anything else is returned as it is.
 */
export function upgradeDualState(state: DualState, constraints: readonly ConstraintSpec[]): DualState {
  let upgraded: DualState | undefined
  for (const c of constraints) {
    const controller = state.constraints[c.channel]?.controller as ControllerState | SmoothedViolationPid | undefined
    if (controller?.rule !== 'pid' || c.dual.rule !== 'pid' || !('derivativeEma' in controller)) continue
    const { alphaD } = c.dual
    const tau = c.sense === '<=' ? c.threshold : -c.threshold
    const bias = (steps: number) => (steps > 0 ? (1 - alphaD ** steps) * tau : 0)
    const { derivativeEma, history, ...rest } = controller
    const t = state.step
    upgraded ??= { ...state, constraints: { ...state.constraints } }
    upgraded.constraints[c.channel] = {
      ...state.constraints[c.channel],
      controller: { ...rest, costEma: derivativeEma + bias(t), history: history.map((value, k) => value + bias(t - history.length + 1 + k)) },
    }
  }
  return upgraded ?? state
}

/**
 * Checks that a restored dual state matches the configured constraints: the same channels,
 * the same rules, a pid history as long as its delay. Returns the problems, empty when it fits.
 */
export function dualStateProblems(state: DualState, constraints: readonly ConstraintSpec[]): string[] {
  const problems: string[] = []
  for (const c of constraints) {
    const entry = state.constraints[c.channel]
    if (entry === undefined) {
      problems.push(`constraint "${c.channel}": no saved dual state`)
    } else if (entry.controller.rule !== c.dual.rule) {
      problems.push(`constraint "${c.channel}": saved state is for rule "${entry.controller.rule}", config says "${c.dual.rule}"`)
    } else if (entry.controller.rule === 'pid' && c.dual.rule === 'pid' && entry.controller.history.length !== c.dual.delay) {
      problems.push(`constraint "${c.channel}": saved pid history has ${entry.controller.history.length} entries, config delay is ${c.dual.delay}`)
    }
  }
  const configured = new Set(constraints.map((c) => c.channel))
  for (const channel of Object.keys(state.constraints)) {
    if (!configured.has(channel)) problems.push(`constraint "${channel}": in the saved state, not in the config`)
  }
  return problems
}

/** The result of one dual step over all constraints of a batch. */
export interface DualStepResult {
  state: DualState
  lambda: Record<string, LambdaChange>
}

/**
 * Advances every controller on its constraint's measured violation and the step counter.
 * `windows` are the constraint windows after measuring this batch.
 */
export function stepDual(
  state: DualState,
  constraints: readonly ConstraintSpec[],
  measures: Record<string, ConstraintMeasure>,
  windows: Record<string, DualState['constraints'][string]['window']>,
): DualStepResult {
  const next: DualState = { step: state.step + 1, constraints: {} }
  const lambda: Record<string, LambdaChange> = {}
  for (const c of constraints) {
    const before = state.constraints[c.channel].controller
    const { violation, mean } = measures[c.channel]
    const after = stepController(c.dual, before, violation, c.sense === '<=' ? mean : -mean)
    next.constraints[c.channel] = { controller: after, window: windows[c.channel] }
    lambda[c.channel] = { before: lambdaOf(before), after: lambdaOf(after) }
  }
  return { state: next, lambda }
}
