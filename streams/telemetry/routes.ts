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
import { refuseUnlessRead, sendJson, staticFile, type HttpRoute } from '../host/index.js'
import type { TelemetryMetrics } from './metrics.js'
import { MIN_POINTS, type HistoryOverview, type HistoryQuery } from './runHistory.js'

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

/** Most points per series a `/history` request may ask for. */
export const MAX_HISTORY_POINTS = 100_000

/** A `/history` request's parameters, or what is wrong with them. */
export function parseHistoryQuery(
  params: URLSearchParams,
  defaultPoints: number,
): { ok: true; query: HistoryQuery; format: 'json' | 'csv' } | { ok: false; error: string } {
  const integer = (name: string, min: number, max: number): number | undefined | string => {
    const text = params.get(name)
    if (text === null) return undefined
    const value = Number(text)
    return /^\d+$/.test(text) && value >= min && value <= max
      ? value
      : `${name}: must be an integer from ${min} to ${max}, got ${JSON.stringify(text.slice(0, 40))}`
  }
  const from = integer('from', 0, Number.MAX_SAFE_INTEGER)
  const to = integer('to', 0, Number.MAX_SAFE_INTEGER)
  const points = integer('points', MIN_POINTS, MAX_HISTORY_POINTS) ?? defaultPoints
  for (const value of [from, to, points]) if (typeof value === 'string') return { ok: false, error: value }
  if (from !== undefined && to !== undefined && (from as number) > (to as number)) return { ok: false, error: `from (${from}) is after to (${to})` }
  const format = params.get('format') ?? 'json'
  if (format !== 'json' && format !== 'csv') return { ok: false, error: `format: must be "json" or "csv", got ${JSON.stringify(format.slice(0, 40))}` }
  const query: HistoryQuery = { points: points as number }
  if (from !== undefined) query.from = from as number
  if (to !== undefined) query.to = to as number
  const series = params.get('series')
  if (series !== null) query.series = series.split(',').filter((name) => name !== '')
  return { ok: true, query, format }
}

/** A history as CSV in long form, one row per point: `series,step,ts,value` (ts in ms since the epoch, empty when unknown). */
export function historyCsv(overview: HistoryOverview): string {
  const rows = ['series,step,ts,value']
  for (const [name, points] of Object.entries(overview.series))
    for (let i = 0; i < points.steps.length; i++) rows.push(`${name},${points.steps[i]},${points.ts[i] ?? ''},${points.values[i]}`)
  return `${rows.join('\n')}\n`
}

/**
 * `/history?series=a,b&from=S&to=S&points=N&format=json|csv` (viewer token, as `/telemetry`):
 * the run's series from step 1 (or the range asked), each thinned to `points` by min/max
 * buckets. JSON is a `HistoryOverview`; CSV is `historyCsv` (pandas: `read_csv(url).pivot(index='step', columns='series', values='value')`).
 */
export function historyRoute(read: (query: HistoryQuery) => Promise<HistoryOverview>, tokens: RoleTokens, defaultPoints: number): HttpRoute {
  return (request, response, url) => {
    if (refuseUnlessRead(request, response)) return
    const problem = authorize(request, url, 'viewer', tokens)
    if (problem !== undefined) {
      response.writeHead(401, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store', 'WWW-Authenticate': 'Bearer realm="dualstream"' })
      return void response.end(`${JSON.stringify({ error: problem })}\n`)
    }
    const parsed = parseHistoryQuery(url.searchParams, defaultPoints)
    if (!parsed.ok) return sendJson(response, 400, { error: parsed.error })
    read(parsed.query).then(
      (overview) => {
        if (parsed.format === 'json') return sendJson(response, 200, overview)
        response.writeHead(200, {
          'Content-Type': 'text/csv; charset=utf-8',
          'Content-Disposition': 'attachment; filename="dualstream-history.csv"',
          'Cache-Control': 'no-store',
        })
        response.end(request.method === 'HEAD' ? undefined : historyCsv(overview))
      },
      (error: unknown) => sendJson(response, 500, { error: `history could not be read: ${String(error)}` }),
    )
  }
}
