/** `dualstream serve` as a child process for the tests that kill it: started, watched, killed with the test process. */
import { spawn, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'

/** The compiled CLI (`npm run build`): the fault suite restarts serve often, and a compiled start is fast. */
export const compiledMain = fileURLToPath(new URL('../../dist/src/apps/main.js', import.meta.url))

// children still running when the test process ends (a failure, a timeout) are killed with it
const running = new Set<ChildProcess>()
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL')
})

export interface ServeChild {
  process: ChildProcess
  port: number
  /** Milliseconds from spawn to the "listening" line. */
  startMs: number
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  output(): string
  url(path: string): string
  kill(signal?: NodeJS.Signals): void
}

/**
 * Starts `dualstream serve` with `args` on a free port and resolves once it says where it
 * listens. `script`: how to run the CLI (default the compiled one; the crash test runs the
 * TypeScript under the test loader).
 */
export function startServe(args: readonly string[], options: { script?: readonly string[]; env?: NodeJS.ProcessEnv } = {}): Promise<ServeChild> {
  const started = performance.now()
  const script = options.script ?? [compiledMain]
  const child = spawn(process.execPath, [...script, 'serve', '--port', '0', ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: options.env ?? process.env })
  running.add(child)
  let output = ''
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => {
      running.delete(child)
      resolve({ code, signal })
    }),
  )
  child.stderr!.on('data', (c: Buffer) => (output += c.toString()))
  return new Promise((resolve, reject) => {
    child.stdout!.on('data', (c: Buffer) => {
      output += c.toString()
      const match = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(output)
      if (match === null) return
      const port = Number(match[1])
      resolve({
        process: child,
        port,
        startMs: performance.now() - started,
        exited,
        output: () => output,
        url: (path) => `ws://127.0.0.1:${port}${path}`,
        kill: (signal = 'SIGKILL') => child.kill(signal),
      })
    })
    exited.then(({ code, signal }) => reject(new Error(`serve exited (${code ?? signal}) before listening:\n${output}`)))
  })
}
