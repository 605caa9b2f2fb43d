/**
 * Human-readable text and a plain JSON description of a scene and its trace (the dashboard
 * draws the grid from the JSON).
 */
import type { SpatialGridSpec } from './config.js'
import { AXIS_NAMES, claimSlots, truthAnswer, type Scene } from './scene.js'
import { decodeAnswer, decodeClaim } from './tokens.js'
import { claimTruths, judge, type Judgement } from './judges.js'

const COLOURS = ['red', 'blue', 'green', 'yellow', 'purple', 'orange', 'cyan', 'magenta']
const ANSWERS = ['less', 'greater'] as const

export function typeName(type: number): string {
  return COLOURS[type] ?? `type${type}`
}

export interface SceneObject {
  readonly type: number
  readonly name: string
  readonly x: number
  readonly y: number
}

export interface RolloutDescription {
  readonly grid: number
  readonly objects: SceneObject[]
  /** `axis` is the compared axis of an easy-level question; a hard-level one compares x + y (axis 'x', unused). */
  readonly question: { readonly a: string; readonly b: string; readonly axis: 'x' | 'y'; readonly text: string }
  readonly claims: Array<{ readonly subject: string; readonly axis: 'x' | 'y'; readonly value: number; readonly true: boolean }>
  readonly answer: 'less' | 'greater'
  readonly correctAnswer: 'less' | 'greater'
  readonly judgement: Judgement
  /** The one-line rendering of {@link renderRollout}. */
  readonly text: string
}

export function sceneObjects(scene: Scene): SceneObject[] {
  const out: SceneObject[] = []
  scene.coords.forEach(([x, y], type) => {
    if (x >= 0) out.push({ type, name: typeName(type), x, y })
  })
  return out
}

export function questionText(scene: Scene): string {
  const { a, b, axis } = scene.question
  if (scene.question.sum) return `is ${typeName(a)}.x + ${typeName(a)}.y less or greater than ${typeName(b)}.x + ${typeName(b)}.y?`
  const ax = AXIS_NAMES[axis]
  return `is ${typeName(a)}.${ax} less or greater than ${typeName(b)}.${ax}?`
}

/** e.g. "claims: red.x=2 ✓, blue.x=1 ✗ → answer: greater ✓". */
export function renderRollout(scene: Scene, trace: ArrayLike<number>, spec: SpatialGridSpec): string {
  const truths = claimTruths(scene, trace, spec)
  const claims = claimSlots(scene).map(({ subject }, k) => {
    const { axis, value } = decodeClaim(trace[k], spec)
    return `${typeName(subject)}.${AXIS_NAMES[axis]}=${value} ${truths[k] ? '✓' : '✗'}`
  })
  const answer = decodeAnswer(trace[spec.claims], spec)
  return `claims: ${claims.join(', ')} → answer: ${ANSWERS[answer]} ${answer === truthAnswer(scene) ? '✓' : '✗'}`
}

/** ASCII grid, row y = 0 first; each object is the first letter of its type name, '.' is empty. */
export function renderGrid(scene: Scene, spec: SpatialGridSpec): string {
  const rows = Array.from({ length: spec.grid }, () => Array<string>(spec.grid).fill('.'))
  for (const o of sceneObjects(scene)) rows[o.y][o.x] = o.name[0]
  return rows.map((r) => r.join(' ')).join('\n')
}

export function describeRollout(scene: Scene, trace: ArrayLike<number>, spec: SpatialGridSpec): RolloutDescription {
  const judgement = judge(scene, trace, spec)
  const { a, b, axis } = scene.question
  const truths = claimTruths(scene, trace, spec)
  return {
    grid: spec.grid,
    objects: sceneObjects(scene),
    question: { a: typeName(a), b: typeName(b), axis: AXIS_NAMES[axis], text: questionText(scene) },
    claims: claimSlots(scene).map(({ subject }, k) => {
      const c = decodeClaim(trace[k], spec)
      return { subject: typeName(subject), axis: AXIS_NAMES[c.axis], value: c.value, true: truths[k] }
    }),
    answer: ANSWERS[decodeAnswer(trace[spec.claims], spec)],
    correctAnswer: ANSWERS[truthAnswer(scene)],
    judgement,
    text: renderRollout(scene, trace, spec),
  }
}
