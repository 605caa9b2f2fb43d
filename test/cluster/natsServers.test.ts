/**
 * The NATS test harness itself (test/support/natsServers.ts): the servers it starts take
 * JetStream writes, come back from a kill with their store, answer nothing while paused,
 * form a cluster that survives one member's restart, leave nothing behind when stopped,
 * and a server that cannot start fails the start with its own words.
 */
import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { jetstream, jetstreamManager, StorageType } from '@nats-io/jetstream'
import { connect } from '@nats-io/transport-node'
import { natsMissing, startNats, waitFor } from '../support/natsServers.js'

t.test('nats-server is installed on this host', async (t) => {
  t.equal(natsMissing, false, 'the cluster tests run here (else they are skipped with the reason)')
})

t.test('one server: JetStream keeps its store across a kill -9 and restart; pause freezes it', { skip: natsMissing }, async (t) => {
  const parent = await mkdtemp(join(tmpdir(), 'dualstream-harness-'))
  t.teardown(() => rm(parent, { recursive: true, force: true }))
  const nats = await startNats({ dir: parent })
  t.teardown(() => nats.stop())
  t.match(nats.url, /^nats:\/\/127\.0\.0\.1:\d+$/)
  t.same(nats.urls, [nats.url])
  t.match(nats.output(0), /Server is ready/)

  const nc = await connect({ servers: nats.urls, maxReconnectAttempts: -1, reconnectTimeWait: 100 })
  t.teardown(() => nc.close())
  // a short timeout: a request sent while the client reconnects is retried rather than awaited for 5 s
  const jsm = await jetstreamManager(nc, { timeout: 500 })
  await jsm.streams.add({ name: 'KEPT', subjects: ['kept'], storage: StorageType.File })
  await jetstream(nc).publish('kept', 'one')

  await nats.kill(0)
  t.match(nats.output(0), /Server is ready/, 'the output of the killed process is still there')
  await nats.restart(0)
  const info = await waitFor('the stream after the restart', () => jsm.streams.info('KEPT'))
  t.equal(info.state.messages, 1, 'the restarted server kept the JetStream store')

  nats.pause(0)
  await t.rejects(nc.request('$JS.API.INFO', '', { timeout: 300 }), /TIMEOUT/i, 'a paused server answers nothing')
  nats.resume(0)
  const answer = await waitFor('an answer after resume', () => nc.request('$JS.API.INFO', '', { timeout: 500 }))
  t.ok(answer.data.length > 0, 'it answers again once resumed')

  await t.rejects(nats.restart(0), /nats-server s0 is still running: kill it before restarting it/)
  t.throws(() => nats.pause(1), /no nats-server 1: there are 1 \(0 to 0\)/)

  // a paused server still dies of a catchable signal (it gets SIGCONT after the signal)
  nats.pause(0)
  await nats.kill(0, 'SIGTERM')
  t.throws(() => nats.pause(0), /nats-server s0 is not running \(exited with (SIGTERM|code \d+)\): cannot pause it/)
  t.throws(() => nats.resume(0), /cannot resume it/)
  await nats.kill(0)

  t.ok(nats.dir.startsWith(join(parent, 'dualstream-nats-')), 'the directory is under the given one')
  await nats.stop()
  await nats.stop()
  t.same(await readdir(parent), [], 'stop removed the temporary directory')
})

t.test('three servers: one cluster with R=3 streams, a member killed and restarted', { skip: natsMissing }, async (t) => {
  const nats = await startNats({ servers: 3 })
  t.teardown(() => nats.stop())
  t.equal(nats.urls.length, 3)
  t.equal(nats.url, nats.urls.join(','))
  t.equal(new Set(nats.urls).size, 3, 'a port per server')

  const nc = await connect({ servers: nats.urls, maxReconnectAttempts: -1, reconnectTimeWait: 100 })
  t.teardown(() => nc.close())
  const jsm = await jetstreamManager(nc)
  await jsm.streams.add({ name: 'R3', subjects: ['r3'], num_replicas: 3 })
  const info = await jsm.streams.info('R3')
  t.equal(info.cluster?.name, 'dualstream-test')
  t.equal((info.cluster?.replicas ?? []).length, 2, 'a leader and two replicas')

  // a replica, not the stream's leader (whose loss costs NATS 2.9 a ~5 s election)
  const replica = Number(info.cluster!.replicas![0].name.slice(1))
  await nats.kill(replica)
  // the client may have been on the killed server: retry while it reconnects, deduplicated by id
  const js = jetstream(nc)
  await waitFor('a publish with two of three servers', () => js.publish('r3', 'with two of three', { msgID: 'once', timeout: 1000 }), 20_000)
  await nats.restart(replica)
  // (restart resolves once the server knows a meta leader: itself or another)
  t.match(nats.output(replica), /Server is ready/)
  const caughtUp = await waitFor('the restarted replica to catch up', async () => {
    const r = await jsm.streams.info('R3')
    return r.cluster?.replicas?.every((p) => p.current) === true && r
  })
  t.equal(caughtUp.state.messages, 1)

  await nats.stop()
  await t.rejects(connect({ servers: nats.urls, reconnect: false }), /connection refused/, 'no server is left listening')
})

const childScript = fileURLToPath(new URL('./natsServersChild.ts', import.meta.url))

/** Runs natsServersChild.ts in `mode`; resolves with its process and a reader of its JSON lines. */
function harnessChild(t: Test, mode: string, env: NodeJS.ProcessEnv = process.env) {
  const child = spawn(process.execPath, [...process.execArgv, childScript, ...mode.split(' ')], { stdio: ['ignore', 'pipe', 'inherit'], env })
  t.teardown(() => child.kill('SIGKILL'))
  let out = ''
  child.stdout!.on('data', (chunk: Buffer) => (out += chunk.toString()))
  const line = <T>(n: number) =>
    waitFor(`line ${n} of natsServersChild ${mode}`, () => out.split('\n').length > n && (JSON.parse(out.split('\n')[n - 1]) as T), 20_000)
  const exited = new Promise<number | null>((resolve) => child.on('exit', resolve))
  return { child, line, exited }
}

/** Resolves once nothing listens at `url` any more and `dir` is gone. */
function goneAway(url: string, dir: string): Promise<true> {
  return waitFor(`the server at ${url} to die and ${dir} to go`, async () => {
    if (existsSync(dir)) return false
    return connect({ servers: url, reconnect: false }).then(
      (stray) => stray.close().then(() => false),
      (error: Error) => /connection refused/.test(error.message),
    )
  })
}

t.test('a test process that dies takes its servers and their directory with it', { skip: natsMissing }, async (t) => {
  const hung = harnessChild(t, 'hang')
  const running = await hung.line<{ url: string; dir: string }>(1)
  t.ok(existsSync(running.dir), 'its directory exists while it runs')
  const nc = await connect({ servers: running.url })
  await nc.close()
  hung.child.kill('SIGKILL')
  t.ok(await goneAway(running.url, running.dir), 'killed -9 (no handler runs): the watchdog killed the server and removed the directory')

  const exiting = harnessChild(t, 'exit')
  const exited = await exiting.line<{ url: string; dir: string }>(1)
  t.equal(await exiting.exited, 0)
  t.ok(await goneAway(exited.url, exited.dir), 'exited without stop(): the exit handler killed the server')
})

t.test('$NATS_SERVER, else PATH, else /usr/sbin: a missing one skips the tests, one that cannot run fails startNats', { skip: natsMissing }, async (t) => {
  const reason = 'nats-server is not installed (Debian: apt-get install nats-server; or set NATS_SERVER to its path)'
  const missing = harnessChild(t, 'probe start', { ...process.env, NATS_SERVER: '/nonexistent/nats-server' })
  t.same(await missing.line(1), { missing: reason })
  t.same(await missing.line(2), { error: reason }, 'startNats refuses with the same reason')

  const env: NodeJS.ProcessEnv = { ...process.env }
  delete env.PATH
  delete env.NATS_SERVER
  const noPath = harnessChild(t, 'probe', env)
  t.same(await noPath.line(1), { missing: false }, 'without PATH: found in /usr/sbin')

  const dir = await mkdtemp(join(tmpdir(), 'dualstream-badnats-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const broken = join(dir, 'nats-server')
  await writeFile(broken, '#!/nonexistent/interpreter\n', { mode: 0o755 })
  const cannotRun = harnessChild(t, 'probe start', { ...process.env, NATS_SERVER: broken })
  t.same(await cannotRun.line(1), { missing: false }, 'it is there and executable')
  t.match(await cannotRun.line(2), { error: /nats-server s0 could not start: spawn .*nats-server ENOENT/ })
  t.same(await Promise.all([missing.exited, noPath.exited, cannotRun.exited]), [0, 0, 0], 'all exit on their own (leaving their coverage)')
})

t.test('servers not ready in time: the error says what was missing and shows their output', { skip: natsMissing }, async (t) => {
  await t.rejects(
    startNats({ readyTimeoutMs: 1 }),
    /^nats-server ×1 in .*: not ready after 1 ms \(.*\)\n--- s0 \(running; client \d+, routes \d+, monitor \d+\), last output:/,
  )
})

t.test('a server that cannot start fails startNats with its output', { skip: natsMissing }, async (t) => {
  await t.rejects(startNats({ config: 'no_such_option_for_nats: {{{' }), /nats-server s0 exited with code 1[\s\S]*last output:[\s\S]*(parse|error)/i)
})

t.test('waitFor: the first defined answer, or what was awaited and the last error', async (t) => {
  let tries = 0
  t.equal(await waitFor('a third try', () => (++tries >= 3 ? tries : undefined), 1000, 1), 3)
  await t.rejects(
    waitFor(
      'the impossible',
      () => {
        throw new Error('still no')
      },
      30,
      5,
    ),
    { message: 'the impossible: not within 30 ms (last error: still no)' },
  )
  await t.rejects(
    waitFor('nothing', () => false, 10, 5),
    { message: 'nothing: not within 10 ms' },
  )
})
