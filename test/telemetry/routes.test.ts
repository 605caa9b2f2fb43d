import { createServer, request as httpRequest, type Server } from 'node:http'
import { connect, type AddressInfo, type Socket } from 'node:net'
import { once } from 'node:events'
import t from 'tap'
import WebSocket from 'ws'
import { openStuckClient } from '../../src/apps/bench/telemetry.js'
import { authRoute, dashboardDir, dashboardRoutes, metricsRoute } from '../../streams/telemetry/routes.js'
import type { TelemetryMetrics } from '../../streams/telemetry/metrics.js'
import { TelemetryServer } from '../../streams/telemetry/telemetryServer.js'
import type { HttpRoute } from '../../streams/host/index.js'
import { upgradeStatus } from '../serve/support.js'
import { VirtualClock } from '../support/virtualTime.js'

/** Answers requests with `route` on a free port. */
async function serveRoute(route: HttpRoute): Promise<{ url: string; close: () => Promise<void> }> {
  const server: Server = createServer((req, res) => route(req, res, new URL(req.url!, 'http://localhost')))
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  return { url: `http://127.0.0.1:${port}`, close: () => new Promise((resolve) => server.close(() => resolve())) }
}

/** A request with any method (fetch refuses a body with HEAD, and we want raw answers). */
function raw(url: string, method: string, headers: Record<string, string> = {}): Promise<{ status: number; headers: Record<string, unknown>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method, headers }, (res) => {
      let body = ''
      res.on('data', (c: Buffer) => (body += c.toString()))
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }))
    })
    req.on('error', reject)
    req.end()
  })
}

t.test('the dashboard files: found from source or dist, served from memory with ETags', async (t) => {
  t.match(dashboardDir(), /streams\/dashboard\/$/)
  t.throws(
    () => dashboardDir([new URL('file:///nowhere/a/'), new URL('file:///nowhere/b/')]),
    /the dashboard files \(streams\/dashboard\/index\.html\) are missing; looked in \/nowhere\/a\/, \/nowhere\/b\//,
  )
  const routes = dashboardRoutes()
  t.same([...routes.keys()], ['/', '/dashboard.js', '/rollout.js', '/dashboard.css', '/assets/uPlot.esm.js', '/assets/uPlot.min.css'])
  const page = await serveRoute(routes.get('/')!)
  t.teardown(page.close)
  const get = await raw(page.url, 'GET')
  t.equal(get.status, 200)
  t.equal(get.headers['content-type'], 'text/html; charset=utf-8')
  t.match(get.headers['content-security-policy'], "default-src 'self'")
  t.match(get.body, '<script type="module" src="/dashboard.js"></script>')
  const head = await raw(page.url, 'HEAD')
  t.equal(head.status, 200)
  t.equal(head.body, '')
  t.equal(head.headers['content-length'], String(Buffer.byteLength(get.body)))
  const cached = await raw(page.url, 'GET', { 'If-None-Match': String(get.headers.etag) })
  t.equal(cached.status, 304)
  t.equal((await raw(page.url, 'POST')).status, 405)
  const uplot = await serveRoute(routes.get('/assets/uPlot.esm.js')!)
  t.teardown(uplot.close)
  const lib = await raw(uplot.url, 'GET')
  t.equal(lib.headers['content-type'], 'text/javascript; charset=utf-8')
  t.match(lib.body, /export \{ uPlot as default \}|export default uPlot/)
})

t.test('/metrics: the registry’s text; HEAD, other methods, a failed collection', async (t) => {
  const good = { contentType: 'text/plain; version=0.0.4; charset=utf-8', text: async () => 'dualstream_step 3\n' } as unknown as TelemetryMetrics
  const served = await serveRoute(metricsRoute(good))
  t.teardown(served.close)
  const get = await raw(served.url, 'GET')
  t.equal(get.status, 200)
  t.equal(get.body, 'dualstream_step 3\n')
  t.equal(get.headers['content-type'], 'text/plain; version=0.0.4; charset=utf-8')
  t.equal((await raw(served.url, 'HEAD')).body, '')
  t.equal((await raw(served.url, 'DELETE')).status, 405)
  const bad = await serveRoute(metricsRoute({ contentType: 'x', text: async () => Promise.reject(new Error('boom')) } as unknown as TelemetryMetrics))
  t.teardown(bad.close)
  const failed = await raw(bad.url, 'GET')
  t.equal(failed.status, 500)
  t.equal(failed.body, 'metrics collection failed: Error: boom\n')
})

t.test('/telemetry/auth: whether a viewer token would open /telemetry', async (t) => {
  const open = await serveRoute(authRoute({}))
  t.teardown(open.close)
  const free = await raw(open.url, 'GET')
  t.equal(free.status, 204)
  t.equal(free.headers['x-token-required'], 'false')
  const guarded = await serveRoute(authRoute({ viewer: 'V', producer: 'P' }))
  t.teardown(guarded.close)
  const missing = await raw(guarded.url, 'GET')
  t.equal(missing.status, 401)
  t.same(JSON.parse(missing.body), { error: 'missing token: the viewer token is required (Authorization: Bearer … or ?token=…)', tokenRequired: true })
  t.match(JSON.parse((await raw(guarded.url, 'GET', { Authorization: 'Bearer P' })).body).error, 'a producer token cannot open this endpoint')
  t.equal((await raw(`${guarded.url}/?token=V`, 'GET')).status, 204)
  const ok = await raw(guarded.url, 'GET', { Authorization: 'Bearer V' })
  t.equal(ok.status, 204)
  t.equal(ok.headers['x-token-required'], 'true')
})

t.test('the telemetry server: routes, upgrades with tokens, port fallback, heartbeat, shutdown', async (t) => {
  const clock = new VirtualClock()
  const server = new TelemetryServer({ tokens: { viewer: 'V' }, heartbeatMs: 40, scheduler: clock, health: () => ({ step: 7 }) })
  const connected: string[] = []
  const sockets: WebSocket[] = []
  server.addWebSocketEndpoint('/telemetry', {
    role: 'viewer',
    connect: (ws, format) => {
      connected.push(format)
      sockets.push(ws)
    },
  })
  server.addHttpRoute('/x', (_req, res) => res.end('x'))
  const { port } = await server.listen(0, '127.0.0.1')
  t.teardown(() => server.close())
  const base = `http://127.0.0.1:${port}`
  t.same(JSON.parse((await raw(`${base}/healthz`, 'GET')).body), { status: 'ok', step: 7 })
  t.equal((await raw(`${base}/x`, 'GET')).body, 'x')
  const nowhere = await raw(`${base}/nowhere`, 'GET')
  t.equal(nowhere.status, 404)
  t.same(JSON.parse(nowhere.body), { error: 'no such endpoint: /nowhere' })
  t.equal((await raw(`${base}/telemetry`, 'GET')).status, 426)
  // a request line no URL parser takes is answered 400, plain or upgrade, and the server stays up
  const rawRequest = (text: string) =>
    new Promise<string>((resolve) => {
      const socket = connect(port, '127.0.0.1', () => socket.write(text))
      let answer = ''
      socket.on('data', (c: Buffer) => {
        answer += c.toString()
        socket.end()
      })
      socket.on('close', () => resolve(answer))
    })
  t.match(await rawRequest('GET http://[ HTTP/1.1\r\nHost: x\r\n\r\n'), /^HTTP\/1\.1 400 Bad Request[^]*malformed request URL/)
  t.match(
    await rawRequest(
      'GET http://[ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n',
    ),
    /^HTTP\/1\.1 400 Bad Request[^]*malformed request URL/,
  )
  t.equal((await upgradeStatus(`ws://127.0.0.1:${port}/nowhere`)).status, 404)
  const refused = await upgradeStatus(`ws://127.0.0.1:${port}/telemetry`)
  t.equal(refused.status, 401)
  t.match(refused.body, 'missing token')
  await t.rejects(openStuckClient(port, '/telemetry'), /upgrade refused: HTTP\/1\.1 401 Unauthorized/)
  t.equal((await upgradeStatus(`ws://127.0.0.1:${port}/telemetry?token=V&format=json`)).status, 101)
  t.equal((await upgradeStatus(`ws://127.0.0.1:${port}/telemetry`, { Authorization: 'Bearer V' })).status, 101)
  t.same(connected, ['json', 'msgpack'])

  // a peer that answers pings stays; one that never answers is cut off at the next beat (virtual time)
  const live = new WebSocket(`ws://127.0.0.1:${port}/telemetry?token=V`)
  await once(live, 'open')
  const stuck: Socket = await openStuckClient(port, '/telemetry?token=V')
  const cut = once(stuck, 'close')
  stuck.resume() // reads (so it sees the end) but never answers a ping: it has no WebSocket
  const [liveOnServer, stuckOnServer] = sockets.slice(-2)
  clock.advance(40)
  await once(liveOnServer, 'pong')
  clock.advance(40)
  t.equal(stuckOnServer.readyState, WebSocket.CLOSING, 'the silent peer is terminated')
  t.equal(liveOnServer.readyState, WebSocket.OPEN, 'the answering peer is still connected')
  await cut

  // a port in use: an error, or with fallback a free port instead
  const other = new TelemetryServer({ heartbeatMs: 0 })
  t.teardown(() => other.close())
  await t.rejects(other.listen(port, '127.0.0.1'), { code: 'EADDRINUSE' })
  const fallback = await other.listen(port, '127.0.0.1', true)
  t.not(fallback.port, port)
  t.equal(fallback.fellBackFrom, port)
  const third = new TelemetryServer()
  t.teardown(() => third.close())
  await t.rejects(third.listen(0, '192.0.2.1', true), { code: 'EADDRNOTAVAIL' }, 'not a port problem: no fallback')
  await t.rejects(third.listen(fallback.port, '192.0.2.1', true), { code: 'EADDRNOTAVAIL' })

  // shutting down: everyone is cut off, nobody new gets in
  const closing = server.close()
  t.equal(server.close(), closing, 'close is idempotent')
  await closing
  await t.rejects(upgradeStatus(`ws://127.0.0.1:${port}/telemetry?token=V`), { code: 'ECONNREFUSED' })
  await new Promise((resolve) => (live.readyState === WebSocket.CLOSED ? resolve(undefined) : live.once('close', resolve)))
})
