/**
 * A small HTTP + WebSocket server for runs without an engine server — the built-in training
 * (`npm start`) — on which `Telemetry.mount` puts the dashboard, `/telemetry` and `/metrics`.
 * Tokens are checked in the upgrade, as the engine server does; peers that stop answering
 * pings are cut off.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Duplex } from 'node:stream'
import { WebSocketServer, type WebSocket } from 'ws'
import { authorize, refuseUpgrade, type RoleTokens } from '../auth.js'
import { parseUrl, routeRequest, sendJson, type Endpoint, type HttpRoute } from '../engineServer.js'
import type { WireFormat } from '../wire.js'
import type { Mountable } from './routes.js'

export interface TelemetryServerOptions {
  tokens?: RoleTokens
  /** Ping period (default 30 s; 0 = none). */
  heartbeatMs?: number
  /** What `/healthz` answers besides `status: ok`. */
  health?: () => Record<string, unknown>
}

/** The port was taken: `listen` fell back to a free one. */
export interface ListenResult {
  host: string
  port: number
  /** The port asked for, when it was in use and another was taken instead. */
  fellBackFrom?: number
}

export class TelemetryServer implements Mountable {
  readonly http: Server
  private readonly wss = new WebSocketServer({ noServer: true, maxPayload: 64 * 1024 })
  private readonly endpoints = new Map<string, Endpoint>()
  private readonly routes = new Map<string, HttpRoute>()
  private readonly alive = new WeakMap<WebSocket, boolean>()
  private readonly heartbeat: NodeJS.Timeout | undefined
  private closing: Promise<void> | undefined

  constructor(private readonly options: TelemetryServerOptions = {}) {
    this.http = createServer((request, response) => this.onRequest(request, response))
    this.http.on('upgrade', (request: IncomingMessage, socket: Duplex, head: Buffer) => this.onUpgrade(request, socket, head))
    this.addHttpRoute('/healthz', (_request, response) => sendJson(response, 200, { status: 'ok', ...options.health?.() }))
    const period = options.heartbeatMs ?? 30_000
    if (period > 0) {
      this.heartbeat = setInterval(() => this.beat(), period)
      this.heartbeat.unref()
    }
  }

  addWebSocketEndpoint(path: string, endpoint: Endpoint): void {
    this.endpoints.set(path, endpoint)
  }

  addHttpRoute(path: string, route: HttpRoute): void {
    this.routes.set(path, route)
  }

  /** Listens on `port` (0 = any free port); with `fallback`, a port in use makes it take a free one instead. */
  async listen(port: number, host: string, fallback = false): Promise<ListenResult> {
    try {
      return { host, port: await this.bind(port, host) }
    } catch (error) {
      if (!fallback || port === 0 || (error as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw error
      return { host, port: await this.bind(0, host), fellBackFrom: port }
    }
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

  private onRequest(request: IncomingMessage, response: ServerResponse): void {
    routeRequest(request, response, this.routes, this.endpoints, (path) => `no such endpoint: ${path}`)
  }

  private onUpgrade(request: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', () => socket.destroy())
    const url = parseUrl(request.url)
    if (url === undefined) return refuseUpgrade(socket, 400, 'malformed request URL')
    const endpoint = this.endpoints.get(url.pathname)
    if (endpoint === undefined) return refuseUpgrade(socket, 404, `no WebSocket endpoint at ${url.pathname}`)
    const problem = authorize(request, url, endpoint.role, this.options.tokens ?? {})
    if (problem !== undefined) return refuseUpgrade(socket, 401, problem)
    const format: WireFormat = url.searchParams.get('format') === 'json' ? 'json' : 'msgpack'
    this.wss.handleUpgrade(request, socket, head, (ws) => {
      this.alive.set(ws, true)
      ws.on('pong', () => this.alive.set(ws, true))
      ws.on('error', () => {})
      endpoint.connect(ws, format, url)
    })
  }

  private beat(): void {
    for (const ws of this.wss.clients) {
      if (this.alive.get(ws) === false) {
        ws.terminate()
        continue
      }
      this.alive.set(ws, false)
      ws.ping()
    }
  }

  /** Cuts every connection and stops listening (close the telemetry first for a clean 1001 to viewers). */
  close(): Promise<void> {
    this.closing ??= new Promise<void>((resolve) => {
      if (this.heartbeat !== undefined) clearInterval(this.heartbeat)
      for (const ws of this.wss.clients) ws.terminate()
      this.http.close(() => resolve())
      this.http.closeAllConnections()
    })
    return this.closing
  }
}
