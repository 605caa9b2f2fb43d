/**
 * Real `nats-server` processes for the cluster tests and the cluster bench (`npm run bench --
 * --cluster`): one server, or three clustered on
 * loopback, each with JetStream on its own store folder under a temporary directory. The
 * tests kill, pause and restart them to see what the cluster code does when NATS fails.
 *
 * Every server listens on 127.0.0.1 only, on free ports (clients, routes, monitoring),
 * with a config file of its own (`nats-server -c FILE`), so that `restart(i)` brings the
 * same server back: same name, ports and JetStream store. Ready means every server's
 * `/healthz` answers ok and a client can create (and delete) a stream with one replica
 * per server, which needs an elected JetStream meta leader.
 *
 * No server outlives the process that started it, however it ends: `stop()` kills them; an
 * 'exit' handler kills what is left when the process exits; and a watchdog shell reading a
 * pipe from this process kills the servers and removes the directory when the pipe closes,
 * which also covers a SIGKILL (a tap timeout) that runs no handler at all.
 *
 * ```ts
 * t.test('…', { skip: natsMissing }, async (t) => {
 *   const nats = await startNats({ servers: 3 })
 *   t.teardown(() => nats.stop())
 *   const nc = await connect({ servers: nats.urls })
 * })
 * ```
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { accessSync, constants, readFileSync, writeFileSync } from 'node:fs'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { createServer, type AddressInfo, type Server } from 'node:net'
import { tmpdir } from 'node:os'
import { delimiter, join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { jetstreamManager, StorageType } from '@nats-io/jetstream'
import { connect, type NodeConnectionOptions } from '@nats-io/transport-node'

/** Where nats-server is: `$NATS_SERVER` when set (and only there), else the first on PATH, else Debian's /usr/sbin. */
function findNatsServer(): string | undefined {
  const candidates =
    process.env.NATS_SERVER !== undefined
      ? [process.env.NATS_SERVER]
      : [...(process.env.PATH ?? '').split(delimiter).map((dir) => join(dir, 'nats-server')), '/usr/sbin/nats-server']
  for (const candidate of candidates) {
    try {
      accessSync(candidate, constants.X_OK)
      return candidate
    } catch {
      // not there: the next candidate
    }
  }
  return undefined
}

const natsServerPath = findNatsServer()

/** A reason to skip the NATS tests (`{ skip: natsMissing }`), or false when nats-server is installed. */
export const natsMissing: string | false =
  natsServerPath === undefined ? 'nats-server is not installed (Debian: apt-get install nats-server; or set NATS_SERVER to its path)' : false

export interface NatsServers {
  /** The temporary directory: config files and JetStream stores. */
  readonly dir: string
  /** `nats://127.0.0.1:PORT`, one per server, in index order. */
  readonly urls: string[]
  /** The urls joined with ',' (what `--nats` takes). */
  readonly url: string
  /** Sends `signal` (default SIGKILL) to server `index`; resolves when the process has exited. */
  kill(index: number, signal?: NodeJS.Signals): Promise<void>
  /** Freezes server `index` (SIGSTOP) and returns once it is stopped: its sockets stay open but it answers nothing. */
  pause(index: number): void
  /** Lets a paused server run again (SIGCONT). */
  resume(index: number): void
  /** Starts an exited server again with the same ports, config and JetStream store; resolves once it is healthy (and, in a cluster, sees a JetStream meta leader). */
  restart(index: number): Promise<void>
  /** The last lines server `index` printed (stdout and stderr), for failure messages. */
  output(index: number): string
  /** Kills every server and removes the temporary directory. */
  stop(): Promise<void>
}

export interface StartNatsOptions {
  /** How many servers: 1 (default), or 3 in one cluster. */
  servers?: 1 | 3
  /** Where to create the temporary directory (default the OS's). */
  dir?: string
  /** Extra config appended to every server's file, e.g. `authorization { token: "s3cret" }`. */
  config?: string
  /** Extra connect options for the readiness check's client (the credentials or TLS that `config` asks for). */
  client?: NodeConnectionOptions
  /** How long to wait for the servers to be ready (default 30 s). */
  readyTimeoutMs?: number
}

const OUTPUT_LIMIT = 16_384
const CLUSTER_NAME = 'dualstream-test'

// servers still running when the test process ends (a failed assertion, a timeout) die with it
const running = new Set<ChildProcess>()
process.on('exit', () => {
  for (const child of running) {
    child.kill('SIGCONT')
    child.kill('SIGKILL')
  }
})

/**
 * A shell that waits for end-of-file on a pipe only this process writes, then kills the pids
 * listed in `pidFile` and removes `root`: the kernel closes the pipe when this process ends,
 * even by SIGKILL.
 */
function startWatchdog(pidFile: string, root: string): ChildProcess {
  const script = 'cat >/dev/null; kill -9 $(cat "$1") 2>/dev/null; rm -rf "$2"'
  return spawn('/bin/sh', ['-c', script, 'nats-watchdog', pidFile, root], { stdio: ['pipe', 'ignore', 'ignore'] })
}

interface ServerSlot {
  name: string
  clientPort: number
  clusterPort: number
  httpPort: number
  configFile: string
  child?: ChildProcess
  exited?: Promise<void>
  exit?: string
  paused: boolean
  output: string
}

/** The process state letter in /proc/PID/stat ('T' when stopped), after the parenthesised command name. */
function procState(pid: number): string {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  return stat[stat.lastIndexOf(')') + 2]
}

/**
 * Waits (for at most 2 s) until `pid` is stopped: a SIGSTOP takes a moment to land on every
 * thread of a Go process, and until then the server may still answer a request sent just
 * after the signal.
 */
function untilStopped(pid: number): void {
  const deadline = performance.now() + 2000
  let state: string
  /* c8 ignore next 2 -- the kernel may take a moment to stop it: how many reads depends on the host */
  do state = procState(pid)
  while (state !== 'T' && performance.now() < deadline)
}

/** Free loopback ports, all held open at once so that none is handed out twice, then released for the servers. */
async function freePorts(count: number): Promise<number[]> {
  const servers: Server[] = []
  try {
    for (let i = 0; i < count; i++) {
      const server = createServer()
      servers.push(server)
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject)
        server.listen(0, '127.0.0.1', resolve)
      })
    }
    return servers.map((s) => (s.address() as AddressInfo).port)
  } finally {
    await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))))
  }
}

function configText(slot: ServerSlot, storeDir: string, peers: readonly ServerSlot[], extra: string): string {
  const lines = [
    `server_name: "${slot.name}"`,
    `listen: "127.0.0.1:${slot.clientPort}"`,
    `http: "127.0.0.1:${slot.httpPort}"`,
    `jetstream {`,
    `  store_dir: ${JSON.stringify(storeDir)}`,
    `  max_memory_store: 64MB`,
    `  max_file_store: 1GB`,
    `}`,
  ]
  if (peers.length > 1) {
    lines.push(
      `cluster {`,
      `  name: "${CLUSTER_NAME}"`,
      `  listen: "127.0.0.1:${slot.clusterPort}"`,
      `  routes: [${peers
        .filter((p) => p !== slot)
        .map((p) => `"nats-route://127.0.0.1:${p.clusterPort}"`)
        .join(', ')}]`,
      `}`,
    )
  }
  return `${lines.join('\n')}\n${extra}\n`
}

/** A monitoring endpoint's answer (a failure, even a body that is not JSON, is a readiness check's "not yet"). */
async function getJson(url: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const response = await fetch(url, { signal: AbortSignal.timeout(2000) })
  return { status: response.status, body: (await response.json()) as Record<string, unknown> }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * Starts `servers` nats-server processes (1 or 3, clustered) and resolves once they are ready.
 * Rejects after `readyTimeoutMs` (or when a server exits) with the servers' last output.
 */
export async function startNats(options: StartNatsOptions = {}): Promise<NatsServers> {
  if (natsServerPath === undefined) throw new Error(natsMissing as string)
  const executable = natsServerPath
  const count = options.servers ?? 1
  const readyTimeoutMs = options.readyTimeoutMs ?? 30_000
  const root = await mkdtemp(join(options.dir ?? tmpdir(), 'dualstream-nats-'))
  const pidFile = join(root, 'pids')
  const pids = new Set<number>()
  writeFileSync(pidFile, '')
  const watchdog = startWatchdog(pidFile, root)
  const watchdogExited = new Promise((resolve) => watchdog.once('exit', resolve))
  const ports = await freePorts(count * 3)
  const slots: ServerSlot[] = Array.from({ length: count }, (_, i) => ({
    name: `s${i}`,
    clientPort: ports[3 * i],
    clusterPort: ports[3 * i + 1],
    httpPort: ports[3 * i + 2],
    configFile: join(root, `s${i}.conf`),
    paused: false,
    output: '',
  }))
  for (const slot of slots) {
    const storeDir = join(root, slot.name, 'jetstream')
    await mkdir(storeDir, { recursive: true })
    await writeFile(slot.configFile, configText(slot, storeDir, slots, options.config ?? ''))
  }
  const urls = slots.map((s) => `nats://127.0.0.1:${s.clientPort}`)

  function launch(slot: ServerSlot): void {
    const child = spawn(executable, ['-c', slot.configFile], { stdio: ['ignore', 'pipe', 'pipe'] })
    running.add(child)
    // the watchdog's list (executable was checked, so the spawn has a pid)
    pids.add(child.pid!)
    writeFileSync(pidFile, [...pids].join(' '))
    slot.child = child
    slot.exit = undefined
    slot.paused = false
    const keep = (chunk: Buffer) => {
      slot.output = (slot.output + chunk.toString()).slice(-OUTPUT_LIMIT)
    }
    child.stdout!.on('data', keep)
    child.stderr!.on('data', keep)
    slot.exited = new Promise<void>((resolve) => {
      child.once('exit', (code, signal) => {
        running.delete(child)
        slot.exit = `exited with ${signal ?? `code ${code}`}`
        slot.child = undefined
        pids.delete(child.pid!)
        writeFileSync(pidFile, [...pids].join(' '))
        resolve()
      })
      child.once('error', (error) => {
        running.delete(child)
        slot.exit = `could not start: ${error.message}`
        slot.child = undefined
        resolve()
      })
    })
  }

  function describe(slot: ServerSlot): string {
    const tail = slot.output.split('\n').slice(-25).join('\n')
    return `--- ${slot.name} (${slot.exit ?? 'running'}; client ${slot.clientPort}, routes ${slot.clusterPort}, monitor ${slot.httpPort}), last output:\n${tail}`
  }

  /** Polls `check` until it returns undefined (ready) or the deadline passes; `check` returns what is still missing. */
  async function waitUntil(what: string, watched: readonly ServerSlot[], check: () => Promise<string | undefined>): Promise<void> {
    const deadline = performance.now() + readyTimeoutMs
    let missing: string | undefined = 'not checked yet'
    while (performance.now() < deadline) {
      const dead = watched.find((s) => s.exit !== undefined)
      if (dead !== undefined) throw new Error(`${what}: nats-server ${dead.name} ${dead.exit}\n${describe(dead)}`)
      try {
        missing = await check()
      } catch (error) {
        missing = (error as Error).message
      }
      if (missing === undefined) return
      await sleep(100)
    }
    throw new Error(`${what}: not ready after ${readyTimeoutMs} ms (${missing})\n${watched.map(describe).join('\n')}`)
  }

  /**
   * Undefined when `slot` says it is healthy, else what it said. In a cluster that includes
   * knowing the JetStream meta leader: until then /healthz answers 503 "JetStream has not
   * established contact with a meta leader".
   */
  async function healthProblem(slot: ServerSlot): Promise<string | undefined> {
    const health = await getJson(`http://127.0.0.1:${slot.httpPort}/healthz`)
    return health.status === 200 && health.body.status === 'ok' ? undefined : `${slot.name} /healthz: ${health.status} ${JSON.stringify(health.body)}`
  }

  /** Undefined when a client can create an R=count stream (then it deletes it again). */
  async function streamProblem(): Promise<string | undefined> {
    const nc = await connect({ ...options.client, servers: urls, reconnect: false, timeout: 2000 })
    try {
      const jsm = await jetstreamManager(nc, { timeout: 3000 })
      const name = `READY_${randomBytes(4).toString('hex')}`
      await jsm.streams.add({ name, subjects: [`ready.${name}`], num_replicas: count, storage: StorageType.Memory })
      await jsm.streams.delete(name)
      return undefined
    } finally {
      await nc.close()
    }
  }

  /** Kills every server, lets the watchdog go and removes the directory. */
  async function stopAll(): Promise<void> {
    for (const slot of slots) {
      if (slot.child === undefined) continue
      slot.child.kill('SIGCONT')
      slot.child.kill('SIGKILL')
    }
    await Promise.all(slots.map((s) => s.exited))
    watchdog.stdin!.end()
    await watchdogExited
    await rm(root, { recursive: true, force: true })
  }

  for (const slot of slots) launch(slot)
  try {
    await waitUntil(`nats-server ×${count} in ${root}`, slots, async () => {
      for (const slot of slots) {
        const problem = await healthProblem(slot)
        if (problem !== undefined) return problem
      }
      return streamProblem()
    })
  } catch (error) {
    await stopAll()
    throw error
  }

  function slotAt(index: number): ServerSlot {
    const slot = slots[index]
    if (slot === undefined) throw new RangeError(`no nats-server ${index}: there are ${count} (0 to ${count - 1})`)
    return slot
  }

  let stopped = false
  return {
    dir: root,
    urls,
    url: urls.join(','),
    async kill(index, signal = 'SIGKILL') {
      const slot = slotAt(index)
      const child = slot.child
      if (child === undefined) return
      child.kill(signal)
      // a stopped process only acts on a signal like SIGTERM once it runs again
      if (slot.paused) child.kill('SIGCONT')
      await slot.exited
    },
    pause(index) {
      const slot = slotAt(index)
      if (slot.child === undefined) throw new Error(`nats-server ${slot.name} is not running (${slot.exit}): cannot pause it`)
      slot.child.kill('SIGSTOP')
      untilStopped(slot.child.pid!)
      slot.paused = true
    },
    resume(index) {
      const slot = slotAt(index)
      if (slot.child === undefined) throw new Error(`nats-server ${slot.name} is not running (${slot.exit}): cannot resume it`)
      slot.child.kill('SIGCONT')
      slot.paused = false
    },
    async restart(index) {
      const slot = slotAt(index)
      if (slot.child !== undefined) throw new Error(`nats-server ${slot.name} is still running: kill it before restarting it`)
      launch(slot)
      await waitUntil(`restarting nats-server ${slot.name}`, [slot], () => healthProblem(slot))
    },
    output(index) {
      return slotAt(index).output
    },
    async stop() {
      if (stopped) return
      stopped = true
      await stopAll()
    },
  }
}

/**
 * Polls `check` every `everyMs` until it returns something other than undefined or false, and
 * resolves with that; rejects after `timeoutMs` naming `what` and the last error `check` threw.
 * Waits on timers between tries, so the event loop (and a NATS client's reconnect) runs.
 */
export async function waitFor<T>(
  what: string,
  check: () => T | undefined | false | Promise<T | undefined | false>,
  timeoutMs = 10_000,
  everyMs = 50,
): Promise<T> {
  const deadline = performance.now() + timeoutMs
  let lastError: unknown
  for (;;) {
    try {
      const value = await check()
      if (value !== undefined && value !== false) return value
    } catch (error) {
      lastError = error
    }
    if (performance.now() >= deadline) {
      throw new Error(`${what}: not within ${timeoutMs} ms${lastError === undefined ? '' : ` (last error: ${(lastError as Error).message})`}`)
    }
    await sleep(everyMs)
  }
}
