/**
 * The HTTP side of telemetry: the static dashboard (`/`, its module and stylesheet, uPlot
 * under `/assets/`), `/metrics` and `/telemetry/auth` (whether a viewer token is accepted,
 * so the page can tell a refused token from a server that is away: a browser's WebSocket
 * never sees the 401 of its upgrade).
 */
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { authorize, type RoleTokens } from '../auth.js'
import { refuseUnlessRead, staticFile, type HttpRoute } from '../host/index.js'
import type { TelemetryMetrics } from './metrics.js'

export type { Mountable } from '../host/index.js'

/**
 * The dashboard's folder: `streams/dashboard/` next to this module when run from source,
 * or in the package root when run from `dist/`.
 */
export function dashboardDir(
  candidates: readonly URL[] = [new URL('../dashboard/', import.meta.url), new URL('../../../streams/dashboard/', import.meta.url)],
): string {
  for (const candidate of candidates) {
    const dir = fileURLToPath(candidate)
    if (existsSync(`${dir}index.html`)) return dir
  }
  throw new Error(`the dashboard files (streams/dashboard/index.html) are missing; looked in ${candidates.map((c) => fileURLToPath(c)).join(', ')}`)
}

const require = createRequire(import.meta.url)

// the page loads only what the engine serves, and talks only to the engine
const SECURITY_HEADERS = {
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer',
  'Content-Security-Policy': "default-src 'self'; connect-src 'self' ws: wss:; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
}

/** The dashboard's files by route (read once, served from memory). */
export function dashboardRoutes(dir = dashboardDir()): Map<string, HttpRoute> {
  const uplot = (name: string) => require.resolve(`uplot/dist/${name}`)
  const files: [string, string, string][] = [
    ['/', `${dir}index.html`, 'text/html; charset=utf-8'],
    ['/dashboard.js', `${dir}dashboard.js`, 'text/javascript; charset=utf-8'],
    ['/rollout.js', `${dir}rollout.js`, 'text/javascript; charset=utf-8'],
    ['/dashboard.css', `${dir}dashboard.css`, 'text/css; charset=utf-8'],
    ['/assets/uPlot.esm.js', uplot('uPlot.esm.js'), 'text/javascript; charset=utf-8'],
    ['/assets/uPlot.min.css', uplot('uPlot.min.css'), 'text/css; charset=utf-8'],
  ]
  return new Map(files.map(([route, path, type]) => [route, staticFile(path, type, SECURITY_HEADERS)]))
}

/** `/metrics`: the registry's exposition text. */
export function metricsRoute(metrics: TelemetryMetrics): HttpRoute {
  return (request, response) => {
    if (refuseUnlessRead(request, response)) return
    metrics.text().then(
      (text) => {
        response.writeHead(200, { 'Content-Type': metrics.contentType, 'Cache-Control': 'no-store' })
        response.end(request.method === 'HEAD' ? undefined : text)
      },
      (error: unknown) => {
        response.writeHead(500, { 'Content-Type': 'text/plain' })
        response.end(`metrics collection failed: ${String(error)}\n`)
      },
    )
  }
}

/** `/telemetry/auth`: 204 when the presented viewer token (Bearer or `?token=`) would open `/telemetry`, else 401 with the reason. */
export function authRoute(tokens: RoleTokens): HttpRoute {
  return (request: IncomingMessage, response: ServerResponse, url: URL) => {
    const problem = authorize(request, url, 'viewer', tokens)
    const required = tokens.viewer !== undefined
    if (problem === undefined) {
      response.writeHead(204, { 'Cache-Control': 'no-store', 'X-Token-Required': String(required) })
      return void response.end()
    }
    response.writeHead(401, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store', 'WWW-Authenticate': 'Bearer realm="dualstream"' })
    response.end(`${JSON.stringify({ error: problem, tokenRequired: required })}\n`)
  }
}
