/**
 * The package's entry points (package.json `exports`; their files form the "entry" layer of layers.test.ts):
 * each one names a file of src/, exports what users import, and loads at run time only the
 * packages it may — the library entries none of LMDB, ws, onnxruntime-node or msgpackr (a fast
 * check from the sources; test/package/pack.test.ts checks the packed build).
 */
import t from 'tap'
import { existsSync, readFileSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import ts from 'typescript'

const root = fileURLToPath(new URL('../../', import.meta.url))
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as {
  main: string
  types: string
  exports: Record<string, string | { types: string; import: string; default: string }>
}

/** The source of a built file: dist/src/x.js → src/x.ts. */
const sourceOf = (built: string) => built.replace(/^\.\/dist\//, '').replace(/\.(d\.ts|js)$/, '.ts')

const entries = Object.entries(pkg.exports).filter((e): e is [string, { types: string; import: string; default: string }] => typeof e[1] !== 'string')

t.test('every subpath is an entry file of src/, with its types beside it', async (t) => {
  t.same(
    entries.map(([subpath]) => subpath),
    ['.', './math', './operators', './models', './server', './client'],
  )
  for (const [subpath, conditions] of entries) {
    const source = sourceOf(conditions.import)
    t.ok(existsSync(join(root, source)), `${subpath}: ${source}`)
    t.equal(sourceOf(conditions.types), source, `${subpath}: types beside the JavaScript`)
    t.equal(conditions.default, conditions.import)
  }
  t.equal(pkg.main, (pkg.exports['.'] as { import: string }).import)
  t.equal(pkg.types, (pkg.exports['.'] as { types: string }).types)
  t.equal(pkg.exports['./package.json'], './package.json')
})

/**
 * The packages a file loads when imported, following its relative imports: type-only imports
 * and exports are erased by the compiler, and `import()` loads on use, so neither counts.
 */
function runtimePackages(entry: string): Set<string> {
  const packages = new Set<string>()
  const seen = new Set<string>()
  const visit = (file: string) => {
    if (seen.has(file)) return
    seen.add(file)
    const source = ts.createSourceFile(file, readFileSync(join(root, file), 'utf8'), ts.ScriptTarget.ES2022)
    for (const statement of source.statements) {
      let specifier: ts.Expression | undefined
      if (ts.isImportDeclaration(statement)) {
        const clause = statement.importClause
        const typeOnly =
          clause !== undefined &&
          (clause.isTypeOnly ||
            (clause.name === undefined &&
              clause.namedBindings !== undefined &&
              ts.isNamedImports(clause.namedBindings) &&
              clause.namedBindings.elements.length > 0 &&
              clause.namedBindings.elements.every((e) => e.isTypeOnly)))
        if (!typeOnly) specifier = statement.moduleSpecifier
      } else if (ts.isExportDeclaration(statement) && statement.moduleSpecifier !== undefined) {
        const typeOnly =
          statement.isTypeOnly ||
          (statement.exportClause !== undefined &&
            ts.isNamedExports(statement.exportClause) &&
            statement.exportClause.elements.length > 0 &&
            statement.exportClause.elements.every((e) => e.isTypeOnly))
        if (!typeOnly) specifier = statement.moduleSpecifier
      }
      if (specifier === undefined || !ts.isStringLiteral(specifier)) continue
      const name = specifier.text
      if (name.startsWith('.')) visit(relative(root, resolve(dirname(join(root, file)), name)).replace(/\.js$/, '.ts'))
      else packages.add(name.startsWith('@') ? name.split('/').slice(0, 2).join('/') : name.split('/')[0])
    }
  }
  visit(entry)
  return packages
}

const heavy = ['lmdb', 'ws', 'onnxruntime-node', 'msgpackr', 'msgpackr-extract']

t.test('the library entries load none of LMDB, ws, onnxruntime-node, msgpackr', async (t) => {
  const math = [...runtimePackages('src/math.ts')]
  t.same(
    math.filter((p) => p !== 'zod' && !p.startsWith('node:')),
    [],
    `the math: no RxJS, nothing heavy (it loads ${math.join(', ')}; zod through the config module)`,
  )
  for (const entry of ['src/operators.ts', 'src/index.ts', 'src/models.ts']) {
    const packages = [...runtimePackages(entry)].sort()
    t.same(
      packages.filter((p) => heavy.includes(p)),
      [],
      `${entry} loads ${packages.join(', ')}`,
    )
  }
  const server = runtimePackages('src/server.ts')
  t.ok(server.has('lmdb') && server.has('ws'), 'the server entry loads LMDB and ws (the walk sees them)')
  t.notOk(runtimePackages('src/models/onnxScorer.ts').has('onnxruntime-node'), 'onnxruntime-node only through import()')
  const client = runtimePackages('src/client.ts')
  t.ok(
    client.has('ws') && client.has('msgpackr') && !client.has('lmdb') && !client.has('rxjs'),
    `the client entry loads ws and msgpackr only: ${[...client].join(', ')}`,
  )
})

t.test('the entries export what users import', async (t) => {
  const dualstream = await import('../../src/index.js')
  const math = await import('../../src/math.js')
  const operators = await import('../../src/operators.js')
  const models = await import('../../src/models.js')
  const server = await import('../../src/server.js')
  const client = await import('../../src/client.js')
  for (const name of [
    'parseConfig',
    'loadConfig',
    'validateRollout',
    'fgrpo',
    'scoreGroups',
    'scoreRollouts',
    'loadOnnxScorer',
    'replay',
    'batchRecord',
  ] as const) {
    t.type(dualstream[name], 'function', `dualstream: ${name}`)
  }
  for (const name of Object.keys(operators))
    t.equal(dualstream[name as keyof typeof dualstream], operators[name as keyof typeof operators], `dualstream re-exports ${name}`)
  for (const name of Object.keys(math)) t.equal(dualstream[name as keyof typeof dualstream], math[name as keyof typeof math], `dualstream re-exports ${name}`)
  t.type(math.stepDual, 'function')
  t.type(models.OnnxPolicy.create, 'function')
  t.type(models.resolveSpatialGridConfig, 'function')
  t.notOk('CheckpointStore' in models, 'the LMDB checkpoint store stays out of dualstream/models')
  t.type(server.serve, 'function')
  t.type(server.DurableEngine.open, 'function')
  t.type(server.replayLog, 'function')
  t.type(client.TrainerClient.open, 'function')
  t.type(client.TrainerClientError, 'function')
})
