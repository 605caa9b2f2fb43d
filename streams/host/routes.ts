/**
 * What the host serves — plain HTTP routes and WebSocket endpoints by path — and the small
 * answers every route gives the same way (JSON bodies, 405 for a write to a read-only route).
 */
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { WebSocket } from 'ws'
import type { Role } from '../auth.js'
import type { WireFormat } from '../wire.js'

/** A WebSocket endpoint: who may open it and what to do with a connection. */
export interface Endpoint {
  role: Role
  connect(ws: WebSocket, format: WireFormat, url: URL): void
  /** Largest frame accepted, in bytes (default: the host's); ws closes with 1009 beyond it without reading the frame. */
  maxPayload?: number
}

/** A plain HTTP route. */
export type HttpRoute = (request: IncomingMessage, response: ServerResponse, url: URL) => void

/** Anything that serves routes and WebSocket endpoints: a host, the engine server, the training's telemetry server. */
export interface Mountable {
  addWebSocketEndpoint(path: string, endpoint: Endpoint): void
  addHttpRoute(path: string, route: HttpRoute): void
}

// a server request always has a URL (the type allows none)
/** The request's URL, or undefined when it cannot be parsed (`GET http://[`): answer 400, never throw in a server callback. */
export const parseUrl = (raw: string | undefined): URL | undefined => {
  try {
    return new URL(raw as string, 'http://localhost')
  } catch {
    return undefined
  }
}

/**
 * Answers with a JSON body.
 *
 * @example sendJson(response, 200, { status: 'ok' }) // 200, `{"status":"ok"}\n`
 */
export function sendJson(response: ServerResponse, status: number, body: unknown): void {
  response.writeHead(status, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store' })
  response.end(`${JSON.stringify(body)}\n`)
}

/**
 * Answers 405 to anything but GET and HEAD; returns whether it did.
 *
 * @example if (refuseUnlessRead(request, response)) return
 */
export function refuseUnlessRead(request: IncomingMessage, response: ServerResponse): boolean {
  if (request.method === 'GET' || request.method === 'HEAD') return false
  response.writeHead(405, { Allow: 'GET, HEAD', 'Content-Type': 'text/plain' })
  response.end('method not allowed\n')
  return true
}
