/**
 * The layer check (ARCHITECTURE.md, "Layers"): every import runs down the stack
 * core → math → operators → models → state → io → apps → entry points, no file imports
 * itself through a cycle, and the lower layers use only the packages their layer may load
 * (the math none, the operators only RxJS), so `dualstream/math` and `dualstream/operators`
 * never pull in LMDB, ws or onnxruntime.
 */
import t from 'tap'
import { readFileSync, readdirSync, statSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import ts from 'typescript'

const root = fileURLToPath(new URL('../../', import.meta.url))

/** The layers, lowest first: a file may import its own layer and the ones before it. */
export const LAYERS: readonly { name: string; paths: readonly string[]; packages: readonly string[] }[] = [
  { name: 'core', paths: ['src/core/'], packages: ['zod', 'node:fs'] },
  { name: 'math', paths: ['src/math/'], packages: [] },
  { name: 'operators', paths: ['operators/'], packages: ['rxjs'] },
  { name: 'models', paths: ['src/models/'], packages: ['*'] },
  { name: 'state', paths: ['src/state/'], packages: ['*'] },
  { name: 'io', paths: ['streams/'], packages: ['*'] },
  { name: 'apps', paths: ['src/apps/'], packages: ['*'] },
  { name: 'entry', paths: ['src/index.ts', 'src/math.ts', 'src/operators.ts', 'src/server.ts', 'src/models.ts', 'src/client.ts'], packages: [] },
]

function layerOf(file: string): number {
  return LAYERS.findIndex((layer) => layer.paths.some((p) => (p.endsWith('/') ? file.startsWith(p) : file === p)))
}

function sourceFiles(dir: string): string[] {
  const out: string[] = []
  for (const name of readdirSync(join(root, dir))) {
    const path = join(dir, name)
    if (statSync(join(root, path)).isDirectory()) out.push(...sourceFiles(path))
    else if (path.endsWith('.ts')) out.push(path)
  }
  return out
}

interface Edge {
  from: string
  to: string
}

/** Every import of every library file: relative ones resolved to repo paths, packages by name. */
function imports(files: readonly string[]): { edges: Edge[]; packages: Edge[] } {
  const edges: Edge[] = []
  const packages: Edge[] = []
  for (const file of files) {
    const info = ts.preProcessFile(readFileSync(join(root, file), 'utf8'), true, true)
    for (const { fileName } of info.importedFiles) {
      if (fileName.startsWith('.')) {
        const target = relative(root, resolve(dirname(join(root, file)), fileName)).replace(/\.js$/, '.ts')
        edges.push({ from: file, to: target })
      } else packages.push({ from: file, to: fileName.startsWith('@') ? fileName.split('/').slice(0, 2).join('/') : fileName.split('/')[0] })
    }
  }
  return { edges, packages }
}

const files = ['src', 'operators', 'streams'].flatMap(sourceFiles)
const { edges, packages } = imports(files)

t.test('every library file belongs to a layer', async (t) => {
  t.same(
    files.filter((f) => layerOf(f) < 0),
    [],
    'files outside every layer',
  )
})

t.test('every import runs down the layers', async (t) => {
  const upward = edges
    .filter((e) => layerOf(e.to) > layerOf(e.from))
    .map((e) => `${e.from} (${LAYERS[layerOf(e.from)].name}) imports ${e.to} (${LAYERS[layerOf(e.to)]?.name ?? 'no layer'})`)
  t.same(upward, [], 'imports that run up')
  t.ok(edges.length > 100, `${edges.length} imports checked`)
})

t.test('the lower layers load only the packages they may', async (t) => {
  const bad = packages
    .filter((e) => {
      const allowed = LAYERS[layerOf(e.from)].packages
      return !allowed.includes('*') && !allowed.includes(e.to)
    })
    .map((e) => `${e.from} (${LAYERS[layerOf(e.from)].name}) imports the package ${e.to}`)
  t.same(bad, [], 'packages loaded below their layer')
})

/** Strongly connected components of more than one file (Tarjan): the import cycles. */
export function cycles(nodes: readonly string[], graph: readonly Edge[]): string[][] {
  const next = new Map<string, string[]>(nodes.map((n) => [n, []]))
  for (const e of graph) next.get(e.from)?.push(e.to)
  const index = new Map<string, number>()
  const low = new Map<string, number>()
  const stack: string[] = []
  const onStack = new Set<string>()
  const found: string[][] = []
  let counter = 0
  const visit = (v: string): void => {
    index.set(v, counter)
    low.set(v, counter++)
    stack.push(v)
    onStack.add(v)
    for (const w of next.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w)
        low.set(v, Math.min(low.get(v)!, low.get(w)!))
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!))
    }
    if (low.get(v) === index.get(v)) {
      const component: string[] = []
      let w: string
      do {
        w = stack.pop()!
        onStack.delete(w)
        component.push(w)
      } while (w !== v)
      if (component.length > 1) found.push(component.sort())
    }
  }
  for (const n of nodes) if (!index.has(n)) visit(n)
  return found
}

t.test('no import cycles', async (t) => {
  t.same(cycles(files, edges), [])
  t.same(
    cycles(
      ['a', 'b', 'c'],
      [
        { from: 'a', to: 'b' },
        { from: 'b', to: 'c' },
        { from: 'c', to: 'a' },
      ],
    ),
    [['a', 'b', 'c']],
    'the check finds a cycle',
  )
})
