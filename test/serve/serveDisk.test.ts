/**
 * `dualstream serve` and its disk (src/apps/serve.ts, src/apps/cli.ts, src/apps/processGuards.ts):
 * the log lines when the data folder's disk is full at start, fills later and has room again;
 * the failure line with the real cause (errno, data folder, free space); `--disk-reserve`
 * parsed as "auto", a size or 0; lmdb-js's own unhandled commit rejection let through.
 */
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { PassThrough, Readable } from 'node:stream'
import t from 'tap'
import { run } from '../../src/apps/cli.js'
import { letLmdbCommitFailuresThrough } from '../../src/apps/processGuards.js'
import { serve, type ServeOptions } from '../../src/apps/serve.js'
import { parseConfig } from '../../src/core/config.js'
import { defaultDiskReserve, systemStatFs, type DiskSpace } from '../../src/state/diskGuard.js'
import type { DurableEngine } from '../../src/state/durableEngine.js'
import { runCli } from '../support/cli.js'
import { baseConfig, Client, prompts, tempDir } from './support.js'

const MiB = 1024 ** 2

/** `serve()` in-process on a free port, its output collected. */
async function startServe(options: Partial<ServeOptions> = {}) {
  const stop = new AbortController()
  let out = ''
  const stdout = new PassThrough()
  let waiters: { test: () => boolean; resolve: () => void }[] = []
  stdout.on('data', (c: Buffer) => {
    out += c.toString()
    waiters = waiters.filter((w) => !(w.test() && (w.resolve(), true)))
  })
  /** Resolves once the output passes `test` (checked as it is written). */
  const until = (test: () => boolean) => (test() ? Promise.resolve() : new Promise<void>((resolve) => waiters.push({ test, resolve })))
  let ready!: (parts: { engine: DurableEngine; port: number }) => void
  const listening = new Promise<{ engine: DurableEngine; port: number }>((resolve) => (ready = resolve))
  const dataDir = tempDir()
  const exit = serve(
    {
      config: parseConfig(baseConfig),
      dataDir,
      host: '127.0.0.1',
      port: 0,
      tokens: {},
      heartbeatMs: 0,
      telemetry: { processMetrics: false },
      onListening: ready,
      ...options,
    },
    { stdout },
    stop.signal,
  )
  const parts = await Promise.race([listening, exit.then(() => Promise.reject(new Error(`serve exited: ${out}`)))])
  return { ...parts, dataDir, exit, output: () => out, until, stop: () => (stop.abort(), exit) }
}

t.test('serve: the disk full at start, room again, full again: one line each', async (t) => {
  const disk = { free: 5 * MiB, total: 1024 * MiB }
  const statfs = async (): Promise<DiskSpace> => ({ ...disk })
  // readings come from the test (check()), not from a timer
  const served = await startServe({ diskReserve: 10 * MiB, diskResume: 30 * MiB, diskCheckMs: 3_600_000, statfs })
  const { engine, dataDir } = served
  t.match(engine.disk?.state, { reserve: 10 * MiB, resume: 30 * MiB, full: true })
  const lines = () => served.output().split('\n')
  const more = (count: number) => served.until(() => lines().length > count)
  await served.until(() => served.output().includes('get no credit\n'))
  const listening = lines().findIndex((line) => line.startsWith('dualstream serve: listening on '))
  t.equal(
    lines()[listening + 1],
    `dualstream serve: disk nearly full at ${dataDir}: 5.0 MiB free of 1.0 GiB, 10.0 MiB must stay free (--disk-reserve); rollouts are taken again once 30.0 MiB are free; producers are answered "disk-full" and get no credit`,
    'full at start: said right after the listening line',
  )
  let count = lines().length
  disk.free = 100 * MiB
  await engine.disk!.check()
  await more(count)
  t.equal(lines().at(-2), `dualstream serve: disk space back at ${dataDir}: 100.0 MiB free; taking rollouts again`)
  count = lines().length
  disk.free = 2 * MiB
  await engine.disk!.check()
  await more(count)
  t.equal(
    lines().at(-2),
    `dualstream serve: disk nearly full at ${dataDir}: 2.0 MiB free of 1.0 GiB, 10.0 MiB must stay free (--disk-reserve); rollouts are taken again once 30.0 MiB are free; producers are answered "disk-full" and get no credit`,
  )
  t.equal(await served.stop(), 0)
  t.match(served.output(), /shutting down\ndualstream serve: stopped\n$/)
})

t.test('serve: a disk with room at start says nothing of it; 0 watches nothing', async (t) => {
  const statfs = async (): Promise<DiskSpace> => ({ free: 500 * MiB, total: 1024 * MiB })
  const roomy = await startServe({ diskReserve: 10 * MiB, statfs })
  t.notMatch(roomy.output(), /disk/)
  t.equal(await roomy.stop(), 0)
  const unwatched = await startServe({ diskReserve: 0 })
  t.equal(unwatched.engine.disk, undefined)
  t.equal(await unwatched.stop(), 0)
})

t.test('serve: an engine failure prints the real cause (errno, data folder, free space, reserve), stops and exits 1', async (t) => {
  const statfs = async (): Promise<DiskSpace> => ({ free: 500 * MiB, total: 1024 * MiB })
  const served = await startServe({ diskReserve: 10 * MiB, statfs })
  let reportCause!: (cause: unknown) => void
  const commitError = new Promise((_resolve, reject) => (reportCause = reject))
  const failure = Object.assign(new Error('Commit failed (see commitError for details)'), { commitError })
  const store = served.engine.store as unknown as { transact: () => Promise<void> }
  store.transact = () => Promise.reject(failure)
  void served.engine.failed.then(() => reportCause(Object.assign(new Error('No space left on device'), { code: 28 })))
  const producer = await Client.open(`ws://127.0.0.1:${served.port}/ingest`)
  producer.send({ type: 'rollouts', rollouts: prompts('x', 1) })
  t.equal(await served.exit, 1)
  t.match(
    served.output(),
    new RegExp(
      `dualstream serve: engine failure, shutting down \\(restart to recover from the log\\): Commit failed \\(see commitError for details\\): No space left on device \\(ENOSPC, errno 28\\); data folder ${served.dataDir}: [\\d.]+ \\w+ free of [\\d.]+ \\w+, reserve 10\\.0 MiB\\ndualstream serve: stopped\\n$`,
    ),
  )
  t.same(
    producer.of('error').map((f) => f.code),
    ['engine'],
  )
  await producer.until(() => producer.closed !== undefined, 10_000, 'the close')
  t.equal(producer.closed!.code, 1011)
})

t.test('serve: a failure the engine did not record (no cause to describe) is printed as it is', async (t) => {
  const served = await startServe({ diskReserve: 0 })
  served.engine.ingest = () => Promise.reject(new Error('simulated engine bug'))
  const producer = await Client.open(`ws://127.0.0.1:${served.port}/ingest`)
  producer.send({ type: 'rollouts', rollouts: prompts('x', 1) })
  t.equal(await served.exit, 1)
  t.match(served.output(), /shutting down \(restart to recover from the log\): Error: simulated engine bug\ndualstream serve: stopped\n$/)
})

t.test('serve: after a failure, stopping is bounded: a close that never ends is given up on, and the process still says "stopped" and exits 1', async (t) => {
  const served = await startServe({ diskReserve: 0, failedStopMs: 50 })
  served.engine.ingest = () => Promise.reject(new Error('simulated engine bug'))
  served.engine.close = () => new Promise(() => {}) // as after lmdb-js abandons a write
  const producer = await Client.open(`ws://127.0.0.1:${served.port}/ingest`)
  producer.send({ type: 'rollouts', rollouts: prompts('x', 1) })
  t.equal(await served.exit, 1)
  t.match(served.output(), /dualstream serve: gave up waiting for connections and LMDB after 0\.05 s\ndualstream serve: stopped\n$/)
})

/** `dualstream serve` from the command line, in-process; resolves once it listens. */
async function startCli(argv: string[]) {
  const stdout = new PassThrough()
  let out = ''
  stdout.on('data', (c: Buffer) => (out += c.toString()))
  const exit = run(['serve', ...argv], { stdin: Readable.from([]), stdout, stderr: new PassThrough() })
  const port = await new Promise<number>((resolve, reject) => {
    stdout.on('data', () => {
      const match = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(out)
      if (match !== null) resolve(Number(match[1]))
    })
    exit.then(() => reject(new Error(`serve exited: ${out}`)), reject)
  })
  return { port, exit }
}

t.test('--disk-reserve: "auto", a size with a suffix, 0 (off); anything else is a usage error', async (t) => {
  const config = join(tempDir(), 'config.json')
  writeFileSync(config, JSON.stringify(baseConfig))
  const reserveOf = async (value: string) => {
    const data = tempDir()
    const cli = await startCli(['-c', config, '-d', data, '--port', '0', '--heartbeat-ms', '0', '--disk-reserve', value])
    const health = (await (await fetch(`http://127.0.0.1:${cli.port}/healthz`)).json()) as { disk?: { reserve: number } }
    process.emit('SIGTERM')
    t.equal(await cli.exit, 0)
    return { reserve: health.disk?.reserve, total: (await systemStatFs(data)).total }
  }
  const auto = await reserveOf('auto')
  t.equal(auto.reserve, defaultDiskReserve(auto.total), 'auto: 2% of the disk, 256 MiB to 4 GiB')
  t.equal((await reserveOf('512M')).reserve, 512 * MiB)
  t.equal((await reserveOf('0')).reserve, undefined, '0: the disk is not watched')

  const bad = await runCli(['serve', '-c', config, '-d', tempDir(), '--disk-reserve', 'lots'])
  t.equal(bad.code, 2)
  t.match(bad.stderr, `option '--disk-reserve <size>' argument 'lots' is invalid. not a size: "lots" (bytes, or a number with K, M, G or T)`)
})

t.test('--max-ingest-bytes: a size with a suffix; 0 or anything else is a usage error', async (t) => {
  const config = join(tempDir(), 'config.json')
  writeFileSync(config, JSON.stringify(baseConfig))
  const cli = await startCli(['-c', config, '-d', tempDir(), '--port', '0', '--heartbeat-ms', '0', '--disk-reserve', '0', '--max-ingest-bytes', '8M'])
  const health = (await (await fetch(`http://127.0.0.1:${cli.port}/healthz`)).json()) as { ingestBytes: { max: number } }
  process.emit('SIGTERM')
  t.equal(await cli.exit, 0)
  t.equal(health.ingestBytes.max, 8 * MiB)
  for (const [value, message] of [
    ['0', 'expected a size of more than 0 bytes, got 0'],
    ['much', 'not a size: "much"'],
  ]) {
    const bad = await runCli(['serve', '-c', config, '-d', tempDir(), '--max-ingest-bytes', value])
    t.equal(bad.code, 2)
    t.match(bad.stderr, `option '--max-ingest-bytes <size>' argument '${value}' is invalid. ${message}`)
  }
})

t.test('letLmdbCommitFailuresThrough: lets lmdb-js’s commit rejection through (its cause handled), throws anything else', async (t) => {
  let reportCause!: (cause: unknown) => void
  const commitError = new Promise((_resolve, reject) => (reportCause = reject))
  const unhandled: unknown[] = []
  const listener = (reason: unknown) => unhandled.push(reason)
  process.on('unhandledRejection', listener)
  t.teardown(() => void process.off('unhandledRejection', listener))
  const commitFailure = Object.assign(new Error('Commit failed (see commitError for details)'), { commitError })
  t.doesNotThrow(() => letLmdbCommitFailuresThrough(commitFailure))
  reportCause(new Error('No space left on device'))
  await new Promise((resolve) => setImmediate(resolve))
  t.same(unhandled, [], 'its commitError is handled')
  t.doesNotThrow(() => letLmdbCommitFailuresThrough(new Error('Commit failed (see commitError for details)')), 'without a commitError')

  const other = new Error('a bug')
  t.throws(() => letLmdbCommitFailuresThrough(other), other)
  let thrown: unknown
  try {
    letLmdbCommitFailuresThrough('a string')
  } catch (error) {
    thrown = error
  }
  t.equal(thrown, 'a string', 'a non-error reason is thrown as it is')
})
