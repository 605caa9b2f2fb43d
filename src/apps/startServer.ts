/**
 * `serve` for programs (the `dualstream/server` entry): the same composition as
 * `dualstream serve` — the durable engine (LMDB in `dataDir`) behind the WebSocket server, with
 * live telemetry and the dashboard — started by a call that resolves once it listens, with a
 * handle to its port and a `close()`, instead of a command that runs until a signal.
 */
import type { DurableEngine } from '../state/durableEngine.js'
import { serve as serveUntil, type ServeOptions } from './serve.js'

export interface ServerOptions extends Omit<ServeOptions, 'host' | 'port' | 'tokens' | 'onListening'> {
  /** Default '127.0.0.1'; a host other machines can reach needs `tokens`. */
  host?: string
  /** Default 0: any free port (the handle says which). */
  port?: number
  /** Bearer token per role (producer, trainer, viewer); default none (loopback only). */
  tokens?: ServeOptions['tokens']
  /** Where the server's status lines go (what it loaded, where it listens, its stop); default nowhere. */
  log?: NodeJS.WritableStream
}

/** A running server. */
export interface RunningServer {
  readonly host: string
  readonly port: number
  /** `http://host:port` (`https://` with `tls`): WebSocket `/ingest`, `/batches`, `/telemetry` (`ws://`, `wss://` with `tls`); GET `/healthz`, `/metrics`; the dashboard at `/`. */
  readonly url: string
  /** The engine behind it (its stats, its committed batches). */
  readonly engine: DurableEngine
  /**
   * Settles when the server has stopped: 'closed' after `close()`, 'failed' when the engine
   * failed while serving (a store write; the server then closes itself: restart to recover
   * from the log).
   */
  readonly stopped: Promise<'closed' | 'failed'>
  /** Closes the connections, then the engine; resolves once all is closed. Safe to call again. */
  close(): Promise<void>
}

// the status lines are dropped unless asked for; no `isTTY`, so no progress line either
const nowhere = { write: () => true } as unknown as NodeJS.WritableStream

type Listening = Parameters<NonNullable<ServeOptions['onListening']>>[0]

/**
 * Opens the engine on `dataDir` (recovering from its log) and serves it; resolves once listening.
 * Rejects with a `ServeError` when it cannot serve (a non-loopback host without tokens, a port
 * in use, a `tls` certificate or key that is not PEM or not a pair) and with the engine's error
 * when the data folder cannot be opened. With `tls` (PEM contents) it serves https:// and wss://.
 *
 * @example
 * const server = await serve({ config: loadConfig('fgrpo.json'), dataDir: './state', port: 8787 })
 * console.log(`producers: ${server.url.replace('http', 'ws')}/ingest`)
 * // over TLS: serve({ …, tls: { cert: readFileSync('cert.pem'), key: readFileSync('key.pem') } }): url https://…, producers wss://…
 * process.once('SIGINT', () => server.close())
 */
export async function startServer(options: ServerOptions): Promise<RunningServer> {
  const { log = nowhere, host = '127.0.0.1', port = 0, tokens = {}, ...rest } = options
  const stop = new AbortController()
  let listening!: (parts: Listening) => void
  const listened = new Promise<Listening>((resolve) => (listening = resolve))
  const serving = serveUntil({ ...rest, host, port, tokens, onListening: (parts) => listening(parts) }, { stdout: log, stderr: nowhere }, stop.signal)
  const stopped = serving.then((code) => (code === 0 ? ('closed' as const) : ('failed' as const)))
  // close() awaits it; a failure nobody waits for must not end the process as an unhandled rejection
  stopped.catch(() => {})
  // serve() calls onListening before it can return, or rejects (a bad host, a busy port, a bad data folder)
  const { engine, port: bound } = await Promise.race([listened, serving.then(() => listened)])
  return {
    host,
    port: bound,
    url: `${rest.tls === undefined ? 'http' : 'https'}://${host.includes(':') ? `[${host}]` : host}:${bound}`,
    engine,
    stopped,
    close: async () => {
      stop.abort()
      await stopped
    },
  }
}
