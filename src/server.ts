/**
 * `dualstream/server`: the durable side — the engine that logs every rollout to LMDB and
 * commits each batch exactly once, served over WebSocket with live telemetry and the
 * dashboard, and the replay of an engine's data folder under any config. Importing it loads
 * LMDB, ws and msgpackr (native addons where the platform has them).
 *
 * @example
 * import { loadConfig } from 'dualstream'
 * import { serve } from 'dualstream/server'
 * const server = await serve({ config: loadConfig('fgrpo.json'), dataDir: './state', port: 8787 })
 * // producers: ws://127.0.0.1:8787/ingest, the trainer: /batches, the dashboard: server.url
 * process.once('SIGINT', () => server.close())
 */

// the server: the engine on a data folder behind HTTP + WebSocket, started by a call
export { startServer as serve, type RunningServer, type ServerOptions } from './apps/startServer.js'
export { ServeError } from './apps/serve.js'
export { TOKEN_ENV, tokensFromEnv, type Role, type RoleTokens } from '../streams/auth.js'

// the durable engine itself, for a host of your own
export {
  DurableEngine,
  type CommittedBatch,
  type DurableEngineOptions,
  type EngineStats,
  type IngestOutcome,
  type RawFrame,
  type RejectedItem,
} from './state/durableEngine.js'

// an engine's data folder (its ingest log) through a fresh pipeline, read-only
export { LogNotFoundError, replayLog } from './state/logReplay.js'
