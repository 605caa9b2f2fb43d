/**
 * Helpers for the tests of the Python client package (examples/python/dualstream_client): the
 * system python with its Debian packages, scenario scripts whose JSON lines on stdout can be
 * waited on, and `dualstream serve` as a child process that can be SIGKILLed and restarted.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { PYTHON, pythonMissing } from '../support/python.js'

// numpy is optional for the package: used when present
export { PYTHON }
export const examples = fileURLToPath(new URL('../../examples/python/', import.meta.url))
export const scenarios = fileURLToPath(new URL('./scenarios.py', import.meta.url))
const cli = fileURLToPath(new URL('../../bin/dualstream.js', import.meta.url))

/** Why the Python tests cannot run here (false when they can). */
export const missing = pythonMissing(['msgpack', 'websockets'], ['python3-msgpack', 'python3-websockets'])

/** The environment of a python child: the package importable, no .pyc files left in the tree. */
export const pythonEnv = (extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv => ({
  ...process.env,
  PYTHONPATH: examples,
  PYTHONDONTWRITEBYTECODE: '1',
  ...extra,
})

export type Line = Record<string, any> // eslint-disable-line @typescript-eslint/no-explicit-any

// children still running when the test process ends (a failure, a timeout) are killed with it
const running = new Set<ChildProcess>()
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL')
})

/** A child process whose stdout is JSON lines: records them and resolves waits on them. */
export class Watched {
  readonly lines: Line[] = []
  stdout = ''
  stderr = ''
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  private waiters: (() => void)[] = []
  private closed = false

  constructor(
    readonly name: string,
    readonly child: ChildProcess,
  ) {
    running.add(child)
    let partial = ''
    child.stdout!.on('data', (chunk: Buffer) => {
      this.stdout += chunk.toString()
      partial += chunk.toString()
      const complete = partial.split('\n')
      partial = complete.pop()!
      for (const text of complete) {
        if (text.trim() === '') continue
        try {
          this.lines.push(JSON.parse(text) as Line)
        } catch {
          this.lines.push({ text })
        }
      }
      this.check()
    })
    child.stderr!.on('data', (chunk: Buffer) => (this.stderr += chunk.toString()))
    // 'close' comes after the last stdout chunk ('exit' may come before it)
    this.exited = new Promise((resolve) =>
      child.on('close', (code, signal) => {
        this.closed = true
        running.delete(child)
        resolve({ code, signal })
        this.check()
      }),
    )
  }

  private check(): void {
    const waiters = this.waiters
    this.waiters = []
    for (const waiter of waiters) waiter()
  }

  /** Resolves with the first line satisfying `test`; rejects if the process exits or `timeoutMs` passes first. */
  waitFor(test: (line: Line) => boolean, what: string, timeoutMs = 30_000): Promise<Line> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.name}: timed out waiting for ${what}\n${this.describe()}`)), timeoutMs)
      const attempt = () => {
        const found = this.lines.find(test)
        if (found !== undefined) {
          clearTimeout(timer)
          resolve(found)
        } else if (this.closed) {
          clearTimeout(timer)
          reject(new Error(`${this.name} exited before ${what}\n${this.describe()}`))
        } else this.waiters.push(attempt)
      }
      attempt()
    })
  }

  /** Resolves with the last JSON line once the process exited with 0; rejects otherwise (killing it past `timeoutMs`). */
  async result(timeoutMs = 30_000): Promise<Line> {
    const timer = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs)
    const { code, signal } = await this.exited
    clearTimeout(timer)
    if (code !== 0) throw new Error(`${this.name} exited with ${code ?? signal}\n${this.describe()}`)
    return this.lines.at(-1)!
  }

  send(line: string): void {
    this.child.stdin!.write(`${line}\n`)
  }

  describe(): string {
    return `stdout:\n${this.stdout.slice(-2000)}\nstderr:\n${this.stderr.slice(-3000)}`
  }
}

/** Starts a Python script (a scenario by default) with the package importable. */
export function python(args: readonly string[], options: { env?: NodeJS.ProcessEnv; name?: string; script?: string } = {}): Watched {
  const child = spawn(PYTHON, [options.script ?? scenarios, ...args], { env: pythonEnv(options.env), stdio: ['pipe', 'pipe', 'pipe'] })
  return new Watched(options.name ?? `python ${args[0]}`, child)
}

/** Runs a scenario to its end and returns its result line. */
export const scenario = (args: readonly string[], env?: NodeJS.ProcessEnv): Promise<Line> => python(args, { env }).result()

/** `dualstream serve` as a child (the compiled CLI: bin/dualstream.js), once it says where it listens. */
export interface Serve {
  watched: Watched
  port: number
  url(path: string): string
}

export async function serve(configPath: string, dataDir: string, port = 0, env: NodeJS.ProcessEnv = process.env): Promise<Serve> {
  const args = [cli, 'serve', '--config', configPath, '--data', dataDir, '--port', String(port), '--heartbeat-ms', '0']
  const watched = new Watched(`serve :${port}`, spawn(process.execPath, args, { env, stdio: ['ignore', 'pipe', 'pipe'] }))
  await watched.waitFor((line) => typeof line.text === 'string' && line.text.includes('listening on'), 'the listening line')
  const match = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(watched.stdout)
  if (match === null) throw new Error(`serve: no port in its listening line\n${watched.describe()}`)
  const listening = Number(match[1])
  return { watched, port: listening, url: (path) => `ws://127.0.0.1:${listening}${path}` }
}
