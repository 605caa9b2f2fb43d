/**
 * The package as a user gets it: `npm pack` (its `prepare` script builds dist/), the tarball
 * installed into a fresh project from npm's cache, a consumer .ts file type-checked against
 * the published types (module NodeNext, lib checks on) and run — a small FGRPO pipeline, the
 * JSON Lines replay, the server on port 0 — and each entry imported in a process of its own to
 * see which packages and native addons it loads: `dualstream`, `dualstream/math`,
 * `dualstream/operators` and `dualstream/models` none of LMDB, ws, onnxruntime-node or
 * msgpackr-extract; `dualstream/server` LMDB and ws.
 *
 * Slow (a build, an install): run by `npm run test:integration`, not by `npm test`.
 */
import t from 'tap'
import { execFile } from 'node:child_process'
import { cpSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync, existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

// a build, an install, five node processes: far more than the suite's per-file default on a busy machine
t.setTimeout(600_000)

const repo = fileURLToPath(new URL('../../', import.meta.url))
const work = mkdtempSync(join(tmpdir(), 'dualstream-pack-'))
t.teardown(() => rmSync(work, { recursive: true, force: true }))

// npm run sets npm_config_local_prefix (and more) to this repository: an npm started with them
// would install into the repository instead of the consumer project
const env = Object.fromEntries(Object.entries(process.env).filter(([key]) => !/^(npm_|TAP|_TAPJS|NODE_OPTIONS$)/i.test(key)))

interface Run {
  stdout: string
  stderr: string
}

function run(command: string, args: readonly string[], cwd: string): Promise<Run> {
  return new Promise((resolve, reject) => {
    execFile(command, args, { cwd, env, maxBuffer: 64 * 1024 * 1024 }, (error, stdout, stderr) => {
      if (error) reject(new Error(`${command} ${args.join(' ')} (in ${cwd}) failed: ${error.message}\n${stdout}\n${stderr}`))
      else resolve({ stdout, stderr })
    })
  })
}

/** What `npm pack --json` reports of the tarball. */
interface Packed {
  filename: string
  size: number
  unpackedSize: number
  files: { path: string }[]
}

interface ConsumerResult {
  version: string
  batches: number
  step: number
  lambda: Record<string, { before: number; after: number }>
  advantages: number[]
  direct: number[]
  sameOperator: boolean
  replay: { batches: number; dropped: number; advantages: number[] }
  vocab: number
  onnxError: string
  server: { url: string; port: number; health: { status: string; step: number }; dashboard: number; stopped: string }
}

const compilerOptions = {
  target: 'ES2022',
  module: 'NodeNext',
  moduleResolution: 'NodeNext',
  strict: true,
  types: ['node'],
  outDir: 'out',
  noEmitOnError: true,
}

/** The consumer project's files, written next to its node_modules. */
const consumerFiles: Record<string, string> = {
  // the library entries with every declaration checked, theirs and their dependencies' (rxjs, zod)
  'tsconfig.strict.json': JSON.stringify({ compilerOptions: { ...compilerOptions, skipLibCheck: false, noEmit: true }, files: ['pipeline.ts'] }),
  // all of it, as `tsc --init` sets it up: lmdb's and onnx-proto's own declarations do not check
  // under NodeNext, so the server and models entries need skipLibCheck (the expect-error lines
  // below show their types still arrive as types, not as any)
  'tsconfig.json': JSON.stringify({ compilerOptions: { ...compilerOptions, skipLibCheck: true }, files: ['consumer.ts'] }),

  'pipeline.ts': `
import { createRequire } from 'node:module'
import { Readable, Writable } from 'node:stream'
import { from, lastValueFrom, toArray } from 'rxjs'
import { fgrpo, loadOnnxScorer, parseConfig, replay, validateRollout, type Config, type Rollout, type ScoredBatch } from 'dualstream'
import { initialDualState, scoreGroups, type Group } from 'dualstream/math'
import { dropDuplicates, fgrpo as fgrpoOperator } from 'dualstream/operators'

export const config: Config = parseConfig({
  groupSize: 4,
  batchGroups: 2,
  objectives: [{ channel: 'accuracy' }],
  constraints: [{ channel: 'length', sense: '<=', threshold: 100, dual: { rule: 'sgd', lr: 0.01 } }],
})

export async function pipeline() {
  const accuracy = [[1, 0, 1, 0], [1, 1, 1, 0]]
  const raw: unknown[] = accuracy.flatMap((group, p) =>
    group.map((a, i) => ({ id: \`p\${p}-\${i}\`, promptId: \`p\${p}\`, rewards: { accuracy: a, length: 150 }, ts: p * 4 + i })),
  )
  raw.push(raw[0]) // a duplicate, for dropDuplicates
  const rollouts: Rollout[] = raw.map((item) => {
    const checked = validateRollout(item)
    if (!checked.ok) throw new Error(checked.errors.map((e) => e.field).join())
    return checked.rollout
  })
  const batches: ScoredBatch[] = await lastValueFrom(from(rollouts).pipe(dropDuplicates(), fgrpo(config), toArray()))
  const groups: Group[] = batches[0].groups
  const direct = scoreGroups(groups, config, initialDualState(config.constraints))

  let lines = ''
  const output = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines += chunk.toString()
      done()
    },
  })
  const replayed = await replay({ config, input: Readable.from(raw.map((r) => JSON.stringify(r) + '\\n')), output })

  let onnxError = ''
  try {
    await loadOnnxScorer(new Uint8Array(0))
  } catch (error) {
    onnxError = (error as Error).message
  }

  return {
    version: (createRequire(import.meta.url)('dualstream/package.json') as { version: string }).version,
    batches: batches.length,
    step: batches[0].step,
    lambda: batches[0].lambda,
    advantages: Array.from(batches[0].advantages),
    direct: Array.from(direct.advantages),
    sameOperator: fgrpo === fgrpoOperator,
    replay: {
      batches: replayed.batches,
      dropped: replayed.dropped.duplicate,
      advantages: Object.values((JSON.parse(lines.split('\\n')[0]) as { advantages: Record<string, number> }).advantages),
    },
    onnxError,
  }
}
`,

  'consumer.ts': `
import { resolveSpatialGridConfig } from 'dualstream/models'
import { serve, type RunningServer } from 'dualstream/server'
import { config, pipeline } from './pipeline.js'

const result = await pipeline()

const server: RunningServer = await serve({ config, dataDir: process.argv[2] })
const health = (await (await fetch(\`\${server.url}/healthz\`)).json()) as { status: string; step: number }
const page = await fetch(\`\${server.url}/\`)
await page.arrayBuffer()
await server.close()

// never called: wrong uses the compiler must refuse, so the types arrived as types, not as any
export function refused(handle: RunningServer) {
  // @ts-expect-error the handle has no such field
  void handle.nope
  // @ts-expect-error the grid is a number
  resolveSpatialGridConfig({ grid: 'four' })
}

console.log(
  JSON.stringify({
    ...result,
    vocab: resolveSpatialGridConfig({ grid: 4 }).vocab,
    server: { url: server.url, port: server.port, health, dashboard: page.status, stopped: await server.stopped },
  }),
)
`,

  // records every module the import resolves (ESM, through a resolve hook) or requires (CommonJS),
  // and every native addon it opens
  'probe.mjs': `
import { createRequire, register } from 'node:module'
import { MessageChannel, receiveMessageOnPort } from 'node:worker_threads'
const opened = []
const dlopen = process.dlopen
process.dlopen = function (...args) {
  opened.push(String(args[1]))
  return dlopen.apply(this, args)
}
const { port1, port2 } = new MessageChannel()
register('./hooks.mjs', import.meta.url, { data: { port: port2 }, transferList: [port2] })
await import(process.argv[2])
const modules = []
for (let message; (message = receiveMessageOnPort(port1)); ) modules.push(message.message)
modules.push(...Object.keys(createRequire(import.meta.url).cache))
port1.close()
console.log(JSON.stringify({ modules, opened }))
`,

  'hooks.mjs': `
let port
export function initialize(data) {
  port = data.port
}
export async function resolve(specifier, context, next) {
  const result = await next(specifier, context)
  port.postMessage(result.url)
  return result
}
`,
}

const copy = join(work, 'checkout')
const consumer = join(work, 'consumer')
let packed: Packed

// packs a copy of the working tree (its own dist/, the repository's node_modules), so that a
// build here never replaces the dist/ a running `npm start` uses
t.before(async () => {
  const skip = new Set(['node_modules', '.git', 'dist', '.tap', 'coverage', 'scratch', 'artifacts', 'data', 'tmp'])
  cpSync(repo, copy, { recursive: true, filter: (source) => !skip.has(source.slice(repo.length).split('/')[0]) })
  symlinkSync(join(repo, 'node_modules'), join(copy, 'node_modules'), 'dir')
  const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', work], copy)
  packed = (JSON.parse(stdout.slice(stdout.indexOf('['))) as Packed[])[0]

  mkdirSync(consumer)
  writeFileSync(join(consumer, 'package.json'), JSON.stringify({ name: 'consumer', version: '1.0.0', private: true, type: 'module' }))
  await run('npm', ['install', join(work, packed.filename), '--prefer-offline', '--no-audit', '--no-fund'], consumer)
  // the consumer's own dev tools: this repository's, not installed
  if (!existsSync(join(consumer, 'node_modules/@types/node'))) {
    mkdirSync(join(consumer, 'node_modules/@types'), { recursive: true })
    symlinkSync(join(repo, 'node_modules/@types/node'), join(consumer, 'node_modules/@types/node'), 'dir')
  }
  for (const [name, text] of Object.entries(consumerFiles)) writeFileSync(join(consumer, name), text)
})

t.test('the tarball holds the build, the bin, the dashboard and no sources or tests', async (t) => {
  const paths = packed.files.map((f) => f.path)
  const outside = paths.filter((p) => !/^(dist\/|bin\/|streams\/dashboard\/|README\.md$|package\.json$|LICENSE)/.test(p))
  t.same(outside, [], 'files outside dist/, bin/, streams/dashboard/, README, package.json')
  t.same(
    paths.filter((p) => p.endsWith('.ts') && !p.endsWith('.d.ts')),
    [],
    'no TypeScript sources (the source maps inline them)',
  )
  for (const entry of ['index', 'math', 'operators', 'models', 'server', 'client']) {
    t.ok(paths.includes(`dist/src/${entry}.js`), `dist/src/${entry}.js`)
    t.ok(paths.includes(`dist/src/${entry}.d.ts`), `dist/src/${entry}.d.ts`)
  }
  t.ok(paths.includes('dist/src/apps/main.js') && paths.includes('bin/dualstream.js'), 'the CLI')
  t.ok(paths.includes('streams/dashboard/index.html'), 'the dashboard')
  t.ok(packed.unpackedSize < 5_000_000, `${packed.files.length} files, ${packed.size} bytes packed, ${packed.unpackedSize} unpacked`)
})

t.test('onnxruntime-node is an optional peer: not installed with the package', async (t) => {
  t.notOk(existsSync(join(consumer, 'node_modules/onnxruntime-node')))
})

t.test('a consumer type-checks against the published types and runs a pipeline', async (t) => {
  const tsc = join(repo, 'node_modules/typescript/bin/tsc')
  await run(process.execPath, [tsc, '-p', 'tsconfig.strict.json'], consumer)
  // the check and the build in one: with noEmitOnError nothing is emitted when a type is wrong
  await run(process.execPath, [tsc, '-p', 'tsconfig.json'], consumer)
  const dataDir = join(work, 'data')
  const { stdout } = await run(process.execPath, ['out/consumer.js', dataDir], consumer)
  const result = JSON.parse(stdout) as ConsumerResult
  t.equal(result.version, '0.1.0', 'dualstream/package.json is exported')
  t.equal(result.batches, 1)
  t.equal(result.step, 1)
  t.same(result.lambda, { length: { before: 0, after: 0.5 } }, 'λ rose: mean length 150 over the threshold 100, lr 0.01')
  const expected = [0.866024, -0.866024, 0.866024, -0.866024, 0.499999, 0.499999, 0.499999, -1.499997]
  t.same(
    result.advantages.map((a) => a.toFixed(6)),
    expected.map((a) => a.toFixed(6)),
    'group-normalised advantages (the constant length carries no signal)',
  )
  t.same(result.direct, result.advantages, 'scoreGroups from dualstream/math agrees with the operators')
  t.ok(result.sameOperator, 'dualstream and dualstream/operators export the same fgrpo (one module, not two copies)')
  t.equal(result.replay.batches, 1, 'the JSON Lines replay')
  t.equal(result.replay.dropped, 1, 'the replay drops the duplicate line')
  t.same(result.replay.advantages, result.advantages)
  t.equal(result.vocab, 10, 'dualstream/models: the SpatialGrid task')
  t.match(result.onnxError, /^loadOnnxScorer needs the optional package onnxruntime-node: npm install onnxruntime-node$/)
  t.match(result.server.url, /^http:\/\/127\.0\.0\.1:\d+$/)
  t.not(result.server.port, 0, 'listening on the port the system chose')
  t.equal(result.server.health.status, 'ok')
  t.equal(result.server.health.step, 0)
  t.equal(result.server.dashboard, 200, 'the dashboard is served from the package')
  t.equal(result.server.stopped, 'closed')
})

t.test('the bin runs from the package', async (t) => {
  const { stdout } = await run(process.execPath, ['node_modules/.bin/dualstream', '--help'], consumer)
  t.match(stdout, /serve/)
  t.match(stdout, /replay/)
})

/** The packages an entry loads (ESM and CommonJS) and the native addons it opens. */
async function probe(specifier: string): Promise<{ packages: string[]; opened: string[] }> {
  const { stdout } = await run(process.execPath, ['probe.mjs', specifier], consumer)
  const { modules, opened } = JSON.parse(stdout) as { modules: string[]; opened: string[] }
  const packages = new Set<string>()
  // only the consumer's packages: the test runner hooks its own coverage tools into child processes
  for (const url of modules.filter((m) => m.includes(`${consumer}/node_modules/`))) {
    const inner = [...url.matchAll(/node_modules\/((?:@[^/]+\/)?[^/]+)\//g)].at(-1)
    if (inner !== undefined) packages.add(inner[1])
  }
  return { packages: [...packages].sort(), opened }
}

const heavy = (name: string) => ['lmdb', 'ws', 'onnxruntime-node', 'msgpackr', 'msgpackr-extract'].includes(name) || /^@(lmdb|msgpackr-extract)\//.test(name)

for (const specifier of ['dualstream/math', 'dualstream/operators', 'dualstream', 'dualstream/models']) {
  t.test(`importing ${specifier} loads no native module`, async (t) => {
    const { packages, opened } = await probe(specifier)
    t.same(opened, [], 'process.dlopen never called')
    t.same(packages.filter(heavy), [], `packages loaded: ${packages.join(', ')}`)
    if (specifier === 'dualstream/math') t.notOk(packages.includes('rxjs'), 'the math loads no RxJS')
  })
}

t.test('importing dualstream/client loads ws and msgpackr, not LMDB', async (t) => {
  const { packages } = await probe('dualstream/client')
  t.ok(packages.includes('ws') && packages.includes('msgpackr'), `packages loaded: ${packages.join(', ')}`)
  t.notOk(packages.includes('lmdb') || packages.includes('rxjs'), 'not the engine')
})

t.test('importing dualstream/server loads LMDB and ws (the probe sees native modules)', async (t) => {
  const { packages, opened } = await probe('dualstream/server')
  t.ok(opened.length > 0, `native addons: ${opened.join(', ')}`)
  t.ok(packages.includes('lmdb') && packages.includes('ws'), `packages loaded: ${packages.join(', ')}`)
})
