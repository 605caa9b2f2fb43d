/**
 * Scenes and questions: typed objects at distinct cells, and a question comparing two of them.
 * Easy level: along one axis (their coordinates on that axis always differ, so the answer is
 * defined). Hard level: by the sum x + y of their coordinates (the sums always differ).
 */
import type { SpatialGridSpec } from './config.js'
import type { Rng } from '../../core/rng.js'

export type Axis = 0 | 1
export const AXIS_NAMES = ['x', 'y'] as const

export interface Question {
  /** Type of the first queried object (subject of the first claims). */
  readonly a: number
  /** Type of the second queried object (subject of the last claims). */
  readonly b: number
  /** The compared axis (easy level); 0 and unused when `sum` is set. */
  readonly axis: Axis
  /** Hard level: compare A.x + A.y with B.x + B.y instead of one axis. */
  readonly sum?: true
}

export interface Scene {
  /** coords[type] = [x, y], or [-1, -1] when no object of that type is in the scene. */
  readonly coords: ReadonlyArray<readonly [number, number]>
  readonly question: Question
}

/** What claim k of a trace is about: the subject's type and the axis the template asks for. */
export interface ClaimSlot {
  readonly subject: number
  readonly axis: Axis
}

/** The claim template of a scene's question: easy, A and B on the asked axis; hard, A.x, A.y, B.x, B.y. */
export function claimSlots(scene: Scene): ClaimSlot[] {
  const { a, b, axis } = scene.question
  if (scene.question.sum)
    return [
      { subject: a, axis: 0 },
      { subject: a, axis: 1 },
      { subject: b, axis: 0 },
      { subject: b, axis: 1 },
    ]
  return [
    { subject: a, axis },
    { subject: b, axis },
  ]
}

/** Sample one scene exactly as the numpy prototype does (rejection until the question has a defined answer). */
export function sampleScene(rng: Rng, spec: SpatialGridSpec): Scene {
  for (;;) {
    const types = rng.sample(spec.types, spec.objects)
    const cells = rng.sample(spec.grid * spec.grid, spec.objects)
    const [i, j] = rng.sample(spec.objects, 2)
    const xy = cells.map((c) => [c % spec.grid, Math.floor(c / spec.grid)] as const)
    let question: Question
    if (spec.level === 'hard') {
      if (xy[i][0] + xy[i][1] === xy[j][0] + xy[j][1]) continue
      question = { a: types[i], b: types[j], axis: 0, sum: true }
    } else {
      const axis = rng.int(2) as Axis
      if (xy[i][axis] === xy[j][axis]) continue
      question = { a: types[i], b: types[j], axis }
    }
    const coords: Array<readonly [number, number]> = Array.from({ length: spec.types }, () => [-1, -1] as const)
    types.forEach((t, k) => (coords[t] = xy[k]))
    return { coords, question }
  }
}

export function sampleScenes(rng: Rng, n: number, spec: SpatialGridSpec): Scene[] {
  return Array.from({ length: n }, () => sampleScene(rng, spec))
}

/** The compared quantity of a queried object: its coordinate on the axis, or x + y for a sum question. */
export function comparedValue(scene: Scene, type: number): number {
  const [x, y] = scene.coords[type]
  return scene.question.sum ? x + y : scene.coords[type][scene.question.axis]
}

/** The true answer token offset: 1 when A's compared value is greater than B's, else 0. */
export function truthAnswer(scene: Scene): 0 | 1 {
  const { a, b } = scene.question
  return comparedValue(scene, a) > comparedValue(scene, b) ? 1 : 0
}
