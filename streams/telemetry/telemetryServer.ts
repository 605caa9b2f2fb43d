/**
 * The server of runs without an engine server — the built-in training (`npm start`) — on
 * which `Telemetry.mount` puts the dashboard, `/telemetry` and `/metrics`: the shared HTTP
 * host (../host/: tokens checked at the upgrade, heartbeat, port fallback, close) with a
 * `/healthz` of its own.
 */
import type { SchedulerLike } from 'rxjs'
import type { RoleTokens } from '../auth.js'
import { HttpHost, sendJson } from '../host/index.js'

export type { ListenResult } from '../host/index.js'

export interface TelemetryServerOptions {
  tokens?: RoleTokens
  /** Ping period (default 30 s; 0 = none). */
  heartbeatMs?: number
  /** What `/healthz` answers besides `status: ok`. */
  health?: () => Record<string, unknown>
  /** How long `close()` lets viewers complete the closing handshake (default 0: they are cut off at once; close the telemetry first for a clean 1001). */
  closeTimeoutMs?: number
  /** Clock of the heartbeat and of the close timeout (default `asyncScheduler`). */
  scheduler?: SchedulerLike
}

/** Viewers have nothing to say: a small frame limit. */
const VIEWER_MAX_PAYLOAD = 64 * 1024

/**
 * @example
 * const server = new TelemetryServer({ health: () => ({ step: trainer.rlSteps }) })
 * telemetry.mount(server)
 * const { port, fellBackFrom } = await server.listen(8787, '127.0.0.1', true)
 */
export class TelemetryServer extends HttpHost {
  constructor(options: TelemetryServerOptions = {}) {
    super({
      tokens: options.tokens,
      heartbeatMs: options.heartbeatMs,
      scheduler: options.scheduler,
      closeTimeoutMs: options.closeTimeoutMs ?? 0,
      maxPayload: VIEWER_MAX_PAYLOAD,
    })
    this.addHttpRoute('/healthz', (_request, response) => sendJson(response, 200, { status: 'ok', ...options.health?.() }))
  }
}
