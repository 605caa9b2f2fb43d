/**
 * The one HTTP + WebSocket host under both servers (ARCHITECTURE.md §1, the io layer): the
 * engine's (`/ingest`, `/batches`, telemetry) and the built-in training's telemetry server.
 * It owns the `node:http` server (`node:https` with `tls`) and the `ws` sockets (noServer:
 * upgrades are ours to accept, over TLS or not):
 *
 * - plain HTTP routes by path: 400 for a URL that does not parse, 426 for a WebSocket path
 *   asked without an upgrade, 404 for anything else, 500 for a route that throws;
 * - WebSocket endpoints by path, each open to one role whose token is checked in the
 *   `upgrade` handler before any frame (401, see ../auth.ts), each with its own `maxPayload`;
 * - a ping/pong heartbeat on an RxJS scheduler (heartbeat.ts);
 * - `listen`, optionally falling back to a free port when the one asked is taken;
 * - graceful close: upgrades refused (503), sockets closed with 1001, peers that do not
 *   complete the closing handshake within `closeTimeoutMs` cut off.
 *
 * The host does nothing per frame: an accepted socket goes to its endpoint, and frames flow
 * from ws to the endpoint directly (the durable bench's path).
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { createServer as createSecureServer } from 'node:https'
import type { AddressInfo } from 'node:net'
import type { Duplex } from 'node:stream'
import { asyncScheduler, type SchedulerLike, type Subscription } from 'rxjs'
import { WebSocketServer, type WebSocket } from 'ws'
import { authorize, refuseUpgrade, type RoleTokens } from '../auth.js'
import type { WireFormat } from '../wire.js'
import { Heartbeat } from './heartbeat.js'
import { parseUrl, sendJson, type Endpoint, type HttpRoute, type Mountable } from './routes.js'

/** A PEM certificate (its chain may follow it) and its private key: what a TLS server needs. */
export interface TlsCredentials {
  cert: string | Buffer
  key: string | Buffer
}

export interface HostOptions {
  tokens?: RoleTokens
  /** Serve HTTPS (and `wss://`) with this certificate and key instead of plain HTTP. */
  tls?: TlsCredentials
  /** Ping period; a peer that has not answered the previous ping is terminated (0 = no heartbeat). */
  heartbeatMs?: number
  /** Clock of the heartbeat and of the close timeout (default `asyncScheduler`; tests pass a virtual one). */
  scheduler?: SchedulerLike
  /** How long `close()` waits for peers to complete the closing handshake before cutting them off (0 = at once). */
  closeTimeoutMs?: number
  /** Largest frame an endpoint accepts unless it says otherwise. */
  maxPayload?: number
  /** Text frames are not checked for valid UTF-8 (the endpoints decode them and answer errors themselves). */
  skipUTF8Validation?: boolean
  /** 404 answers list the paths served. */
  listPathsInErrors?: boolean
  /** A protocol error on a socket (an oversized or malformed frame); ws then closes the socket with its code. */
  onSocketError?: (error: Error & { code?: string }, ws: WebSocket) => void
}

export const HOST_DEFAULTS = { heartbeatMs: 30_000, closeTimeoutMs: 2000, maxPayload: 64 * 1024 }

/** Where `listen` ended up. */
export interface ListenResult {
  host: string
  port: number
  /** The port asked for, when it was in use and another was taken instead. */
  fellBackFrom?: number
}

interface Mounted {
  endpoint: Endpoint
  // one ws server per endpoint: ws takes maxPayload per server, not per socket
  server: WebSocketServer
}

/**
 * An HTTP server with WebSocket endpoints, a heartbeat and a graceful close.
 *
 * @example
 * const host = new HttpHost({ tokens: { viewer: 'secret' } })
 * host.addHttpRoute('/healthz', (_request, response) => sendJson(response, 200, { status: 'ok' }))
 * host.addWebSocketEndpoint('/feed', { role: 'viewer', connect: (ws) => ws.send('hello') })
 * const { port } = await host.listen(8787, '127.0.0.1', true)
 * // over TLS: new HttpHost({ tls: { cert: readFileSync('cert.pem'), key: readFileSync('key.pem') } })
 * // … later
 * await host.close()
 */
export class HttpHost implements Mountable {
  readonly http: Server
  private readonly settings: typeof HOST_DEFAULTS
  private readonly scheduler: SchedulerLike
  private readonly routes = new Map<string, HttpRoute>()
  private readonly endpoints = new Map<string, Mounted>()
  private readonly sockets = new Set<WebSocket>()
  private readonly heartbeat: Heartbeat
  private closed: Promise<void> | undefined

  constructor(private readonly options: HostOptions = {}) {
    const defined = Object.fromEntries(Object.entries(options).filter(([key, value]) => key in HOST_DEFAULTS && value !== undefined))
    this.settings = { ...HOST_DEFAULTS, ...defined }
    this.scheduler = options.scheduler ?? asyncScheduler
    this.heartbeat = new Heartbeat(this.sockets, this.settings.heartbeatMs, this.scheduler)
    const onRequest = (request: IncomingMessage, response: ServerResponse) => this.onRequest(request, response)
    // an https server is an http server over TLS: requests and upgrades arrive the same way
    this.http = options.tls === undefined ? createServer(onRequest) : createSecureServer({ cert: options.tls.cert, key: options.tls.key }, onRequest)
    this.http.on('upgrade', (request: IncomingMessage, socket: Duplex, head: Buffer) => this.onUpgrade(request, socket, head))
  }

  /** Serves a WebSocket endpoint at `path`, open to `endpoint.role` (its token is checked at the upgrade). */
  addWebSocketEndpoint(path: string, endpoint: Endpoint): void {
    const maxPayload = endpoint.maxPayload ?? this.settings.maxPayload
    const server = new WebSocketServer({ noServer: true, clientTracking: false, maxPayload, skipUTF8Validation: this.options.skipUTF8Validation ?? false })
    this.endpoints.set(path, { endpoint, server })
  }

  /** Serves plain HTTP requests at `path`. */
  addHttpRoute(path: string, route: HttpRoute): void {
    this.routes.set(path, route)
  }

  /** The open WebSocket connections. */
  get connections(): ReadonlySet<WebSocket> {
    return this.sockets
  }

  /** Whether `close()` has been called (upgrades are refused from then on). */
  get closing(): boolean {
    return this.closed !== undefined
  }

  /**
   * Listens on `port` (0 = any free port) and starts the heartbeat. With `fallback`, a port
   * in use makes it take a free one instead, and the result says which was asked.
   */
  async listen(port: number, host: string, fallback = false): Promise<ListenResult> {
    let result: ListenResult
    try {
      result = { host, port: await this.bind(port, host) }
    } catch (error) {
      if (!fallback || port === 0 || (error as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw error
      result = { host, port: await this.bind(0, host), fellBackFrom: port }
    }
    this.heartbeat.start()
    return result
  }

  private bind(port: number, host: string): Promise<number> {
    return new Promise((resolve, reject) => {
      this.http.once('error', reject)
      this.http.listen(port, host, () => {
        this.http.off('error', reject)
        resolve((this.http.address() as AddressInfo).port)
      })
    })
  }

  private hint(withRoutes: boolean): string {
    if (this.options.listPathsInErrors !== true) return ''
    const sockets = [...this.endpoints.keys()].join(', ')
    return withRoutes ? ` (try ${[...this.routes.keys()].join(', ')}, or WebSocket ${sockets})` : ` (try ${sockets})`
  }

  private onRequest(request: IncomingMessage, response: ServerResponse): void {
    const url = parseUrl(request.url)
    if (url === undefined) return sendJson(response, 400, { error: 'malformed request URL' })
    const route = this.routes.get(url.pathname)
    if (route !== undefined) {
      try {
        return route(request, response, url)
      } catch (error) {
        // a route's bug answers 500 for this request; the server stays up
        if (!response.headersSent) return sendJson(response, 500, { error: `${url.pathname} failed: ${String(error)}` })
        return void response.destroy()
      }
    }
    if (this.endpoints.has(url.pathname)) return sendJson(response, 426, { error: `${url.pathname} is a WebSocket endpoint: connect with a WebSocket client` })
    sendJson(response, 404, { error: `no such endpoint: ${url.pathname}${this.hint(true)}` })
  }

  private onUpgrade(request: IncomingMessage, socket: Duplex, head: Buffer): void {
    // a client that resets before the handshake must not take the process down
    socket.on('error', () => socket.destroy())
    const url = parseUrl(request.url)
    if (url === undefined) return refuseUpgrade(socket, 400, 'malformed request URL')
    const mounted = this.endpoints.get(url.pathname)
    if (mounted === undefined) return refuseUpgrade(socket, 404, `no WebSocket endpoint at ${url.pathname}${this.hint(false)}`)
    if (this.closing) return refuseUpgrade(socket, 503, 'the server is shutting down')
    const problem = authorize(request, url, mounted.endpoint.role, this.options.tokens ?? {})
    if (problem !== undefined) return refuseUpgrade(socket, 401, problem)
    const format: WireFormat = url.searchParams.get('format') === 'json' ? 'json' : 'msgpack'
    mounted.server.handleUpgrade(request, socket, head, (ws) => {
      this.sockets.add(ws)
      ws.on('close', () => this.sockets.delete(ws))
      this.heartbeat.watch(ws)
      // ws reports protocol errors (oversized or malformed frames) here, then closes with their code
      ws.on('error', (error: Error & { code?: string }) => this.options.onSocketError?.(error, ws))
      mounted.endpoint.connect(ws, format, url)
    })
  }

  /**
   * Stops the heartbeat and listening, refuses new upgrades (503), closes every connection
   * with `code` (1001 "server shutting down" by default; the engine server says 1011 after a
   * failure) and cuts off, after `closeTimeoutMs`, the peers that did not complete the
   * closing handshake. Resolves once the server is closed; calling it again returns the same promise.
   */
  close(code = 1001, reason = 'server shutting down'): Promise<void> {
    this.closed ??= this.shutdown(code, reason)
    return this.closed
  }

  private async shutdown(code: number, reason: string): Promise<void> {
    this.heartbeat.stop()
    const stopped = new Promise<void>((resolve) => this.http.close(() => resolve()))
    for (const ws of this.sockets) ws.close(code, reason)
    let cutoff: Subscription | undefined
    if (this.settings.closeTimeoutMs > 0) cutoff = this.scheduler.schedule(() => this.cutOff(), this.settings.closeTimeoutMs)
    else this.cutOff()
    await stopped
    cutoff?.unsubscribe()
    // the endpoints' close handlers have run when close() resolves (not `once`: an 'error' on the way must not reject)
    await Promise.all([...this.sockets].map((ws) => new Promise((resolve) => ws.once('close', resolve))))
  }

  private cutOff(): void {
    for (const ws of this.sockets) ws.terminate()
    // plain HTTP requests still under way, too
    this.http.closeAllConnections()
  }
}
