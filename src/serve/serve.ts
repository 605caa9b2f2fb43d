/**
 * `dualstream serve`: the durable engine (LMDB in `--data`) behind the WebSocket server —
 * the engine composition of DESIGN §1 (the one place in src/ that wires streams/ I/O).
 */
import { once } from 'node:events'
import type { Config } from '../config.js'
import { DurableEngine } from '../engine/durableEngine.js'
import { bindProblem, type RoleTokens } from '../../streams/auth.js'
import { EngineServer, type EngineServerOptions } from '../../streams/engineServer.js'

export interface ServeOptions extends Omit<EngineServerOptions, 'engine' | 'onFailure'> {
  config: Config
  dataDir: string
  host: string
  /** 0 = any free port (the line printed says which). */
  port: number
  tokens: RoleTokens
  /** Wall clock for the engine; injectable for tests. */
  now?: () => number
  /** Called once listening, with the parts (for embedding and tests). */
  onListening?: (parts: { engine: DurableEngine; server: EngineServer; port: number }) => void
}

/** The invocation cannot be served (a non-loopback host without tokens, a port in use…). */
export class ServeError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'ServeError'
  }
}

export interface ServeIO {
  stdout: NodeJS.WritableStream
}

/** The line announcing the address, in a form tests and scripts can parse. */
export const listeningLine = (host: string, port: number): string =>
  `dualstream serve: listening on http://${host.includes(':') ? `[${host}]` : host}:${port} (WebSocket /ingest, /batches; GET /healthz)\n`

/**
 * Opens the engine, serves until `signal` aborts, then closes connections and the engine.
 * Resolves with 0 after a clean stop, 1 when the engine failed while serving.
 */
export async function serve(options: ServeOptions, io: ServeIO, signal: AbortSignal): Promise<number> {
  const problem = bindProblem(options.host, options.tokens)
  if (problem !== undefined) throw new ServeError(problem)
  const engine = await DurableEngine.open({ config: options.config, dataDir: options.dataDir, now: options.now })
  let failure: unknown
  const failed = new AbortController()
  const server = new EngineServer({
    ...options,
    engine,
    onFailure: (error) => {
      failure = error
      failed.abort()
    },
  })
  let address: { host: string; port: number }
  try {
    address = await server.listen(options.port, options.host)
  } catch (error) {
    await server.close()
    await engine.close()
    throw new ServeError(`cannot listen on ${options.host}:${options.port}: ${(error as Error).message}`)
  }
  const stats = engine.stats()
  const lambda = Object.entries(stats.lambda)
    .map(([channel, value]) => ` ${channel}=${value.toPrecision(4)}`)
    .join('')
  io.stdout.write(`dualstream serve: data ${options.dataDir}: step ${stats.step}${lambda === '' ? '' : `, λ${lambda}`}, ${stats.ingest.ingested} rollouts logged, ${stats.pendingRollouts} pending, ${stats.outbox} batches unacknowledged\n`)
  io.stdout.write(listeningLine(address.host, address.port))
  options.onListening?.({ engine, server, port: address.port })
  if (!signal.aborted) await Promise.race([once(signal, 'abort'), once(failed.signal, 'abort')])
  io.stdout.write(failure === undefined ? 'dualstream serve: shutting down\n' : `dualstream serve: engine failure, shutting down (restart to recover from the log): ${String(failure)}\n`)
  await server.close()
  await engine.close()
  io.stdout.write('dualstream serve: stopped\n')
  return failure === undefined ? 0 : 1
}
