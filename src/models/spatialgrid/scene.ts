/**
 * Scenes and questions: typed objects at distinct cells, and a question comparing two of them
 * along one axis (their coordinates on that axis always differ, so the answer is defined).
 */
import type { SpatialGridSpec } from './config.js'
import type { Rng } from '../../core/rng.js'

export type Axis = 0 | 1
export const AXIS_NAMES = ['x', 'y'] as const

export interface Question {
  /** Type of the first queried object (subject of claim 0). */
  readonly a: number
  /** Type of the second queried object (subject of claim 1). */
  readonly b: number
  readonly axis: Axis
}

export interface Scene {
  /** coords[type] = [x, y], or [-1, -1] when no object of that type is in the scene. */
  readonly coords: ReadonlyArray<readonly [number, number]>
  readonly question: Question
}

/** Sample one scene exactly as the numpy prototype does (rejection until the axis separates A and B). */
export function sampleScene(rng: Rng, spec: SpatialGridSpec): Scene {
  for (;;) {
    const types = rng.sample(spec.types, spec.objects)
    const cells = rng.sample(spec.grid * spec.grid, spec.objects)
    const [i, j] = rng.sample(spec.objects, 2)
    const axis = rng.int(2) as Axis
    const xy = cells.map((c) => [c % spec.grid, Math.floor(c / spec.grid)] as const)
    if (xy[i][axis] === xy[j][axis]) continue
    const coords: Array<readonly [number, number]> = Array.from({ length: spec.types }, () => [-1, -1] as const)
    types.forEach((t, k) => (coords[t] = xy[k]))
    return { coords, question: { a: types[i], b: types[j], axis } }
  }
}

export function sampleScenes(rng: Rng, n: number, spec: SpatialGridSpec): Scene[] {
  return Array.from({ length: n }, () => sampleScene(rng, spec))
}

/** The true answer token offset: 1 when A's coordinate on the axis is greater than B's, else 0. */
export function truthAnswer(scene: Scene): 0 | 1 {
  const { a, b, axis } = scene.question
  return scene.coords[a][axis] > scene.coords[b][axis] ? 1 : 0
}
