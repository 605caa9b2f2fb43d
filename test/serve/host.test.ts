/** The shared HTTP + WebSocket host (streams/host.ts) on its own: routes, upgrades, heartbeat in virtual time, port fallback, close. */
import { once } from 'node:events'
import { writeFileSync } from 'node:fs'
import { request as httpRequest } from 'node:http'
import { connect, type Socket } from 'node:net'
import { join } from 'node:path'
import t from 'tap'
import WebSocket from 'ws'
import { HttpHost, sendJson, staticFile, type HostOptions } from '../../streams/host/index.js'
import { VirtualClock } from '../support/virtualTime.js'
import { tempDir, upgradeStatus } from './support.js'

interface Answer {
  status: number
  headers: Record<string, unknown>
  body: string
}

/** A request with any method and headers; resolves with the answer. */
function ask(port: number, path: string, method = 'GET', headers: Record<string, string> = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, method, headers }, (res) => {
      let body = ''
      res.on('data', (c: Buffer) => (body += c.toString()))
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }))
    })
    req.on('error', reject)
    req.end()
  })
}

/** Writes `text` on a fresh TCP connection and resolves with what the server answers (the client ends its side once an answer arrives). */
function rawExchange(port: number, text: string, beforeWrite: () => void = () => {}): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1', () => {
      beforeWrite()
      socket.write(text)
    })
    let answer = ''
    socket.on('data', (c: Buffer) => {
      answer += c.toString()
      socket.end()
    })
    socket.on('close', () => resolve(answer))
  })
}

const upgradeRequest = (path: string) =>
  `GET ${path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`

/** A host with an echo endpoint (`/echo`, producer) and a route (`/hello`), listening on a free loopback port. */
async function echoHost(options: HostOptions = {}) {
  const host = new HttpHost(options)
  const accepted: { ws: WebSocket; format: string; url: URL }[] = []
  host.addHttpRoute('/hello', (_request, response, url) => sendJson(response, 200, { hello: url.searchParams.get('name') }))
  host.addWebSocketEndpoint('/echo', {
    role: 'producer',
    connect: (ws, format, url) => {
      accepted.push({ ws, format, url })
      ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }))
    },
  })
  const { port } = await host.listen(0, '127.0.0.1')
  return { host, port, accepted, url: (path: string) => `ws://127.0.0.1:${port}${path}` }
}

const open = async (url: string, options: WebSocket.ClientOptions = {}): Promise<WebSocket> => {
  const ws = new WebSocket(url, options)
  await once(ws, 'open')
  return ws
}

const closed = (ws: WebSocket): Promise<{ code: number; reason: string }> =>
  ws.readyState === WebSocket.CLOSED
    ? Promise.resolve({ code: -1, reason: 'already closed' })
    : once(ws, 'close').then(([code, reason]) => ({ code: code as number, reason: String(reason) }))

t.test('plain HTTP: a route, 400 for a URL that does not parse, 426 for a WebSocket path, 404, 500 for a route that throws', async (t) => {
  const { host, port } = await echoHost()
  t.teardown(() => host.close())
  const hello = await ask(port, '/hello?name=ada')
  t.equal(hello.status, 200)
  t.same(JSON.parse(hello.body), { hello: 'ada' })
  t.equal(hello.headers['cache-control'], 'no-store')
  t.match(await rawExchange(port, 'GET http://[ HTTP/1.1\r\nHost: x\r\n\r\n'), /^HTTP\/1\.1 400 Bad Request[^]*"malformed request URL"/)
  const plain = await ask(port, '/echo')
  t.equal(plain.status, 426)
  t.same(JSON.parse(plain.body), { error: '/echo is a WebSocket endpoint: connect with a WebSocket client' })
  const missing = await ask(port, '/nowhere')
  t.equal(missing.status, 404)
  t.same(JSON.parse(missing.body), { error: 'no such endpoint: /nowhere' }, 'no paths listed unless asked')

  host.addHttpRoute('/broken', () => {
    throw new Error('a bug')
  })
  const broken = await ask(port, '/broken')
  t.equal(broken.status, 500)
  t.same(JSON.parse(broken.body), { error: '/broken failed: Error: a bug' })
  host.addHttpRoute('/half', (_request, response) => {
    response.writeHead(200, { 'Content-Type': 'text/plain' })
    response.write('partial')
    throw new Error('after the head')
  })
  await t.rejects(ask(port, '/half'), /aborted|socket hang up|ECONNRESET/, 'a route that throws after its head: the connection is cut')
  t.equal((await ask(port, '/hello')).status, 200, 'the server stays up')
})

t.test('404 answers can list the paths served', async (t) => {
  const { host, port, url } = await echoHost({ listPathsInErrors: true })
  t.teardown(() => host.close())
  t.same(JSON.parse((await ask(port, '/nowhere')).body), { error: 'no such endpoint: /nowhere (try /hello, or WebSocket /echo)' })
  const upgrade = await upgradeStatus(url('/nowhere'))
  t.equal(upgrade.status, 404)
  t.same(JSON.parse(upgrade.body), { error: 'no WebSocket endpoint at /nowhere (try /echo)' })
})

t.test('static files: from memory with an ETag, HEAD, 304, 405', async (t) => {
  const path = join(tempDir('dualstream-host-'), 'page.html')
  writeFileSync(path, '<p>hi</p>')
  const host = new HttpHost({ heartbeatMs: 0 })
  host.addHttpRoute('/', staticFile(path, 'text/html; charset=utf-8', { 'X-Frame-Options': 'DENY' }))
  const { port } = await host.listen(0, '127.0.0.1')
  t.teardown(() => host.close())
  writeFileSync(path, 'changed later: not seen, the file was read once')
  const page = await ask(port, '/')
  t.equal(page.status, 200)
  t.equal(page.body, '<p>hi</p>')
  t.match(page.headers, { 'content-type': 'text/html; charset=utf-8', 'content-length': '9', 'cache-control': 'no-cache', 'x-frame-options': 'DENY' })
  const etag = page.headers.etag as string
  t.match(etag, /^"[\w-]+"$/)
  const head = await ask(port, '/', 'HEAD')
  t.equal(head.status, 200)
  t.equal(head.body, '')
  t.equal((await ask(port, '/', 'GET', { 'If-None-Match': etag })).status, 304)
  const post = await ask(port, '/', 'POST')
  t.equal(post.status, 405)
  t.equal(post.headers.allow, 'GET, HEAD')
})

t.test('upgrades: the role’s token is checked before any frame (401), 400 and 404 likewise; the format and URL reach the endpoint', async (t) => {
  const { host, port, url, accepted } = await echoHost({ tokens: { producer: 'P', viewer: 'V' } })
  t.teardown(() => host.close())
  const missing = await upgradeStatus(url('/echo'))
  t.equal(missing.status, 401)
  t.match(JSON.parse(missing.body), { error: /^missing token: the producer token is required/ })
  const crossed = await upgradeStatus(url('/echo'), { Authorization: 'Bearer V' })
  t.equal(crossed.status, 401)
  t.match(crossed.body, 'a viewer token cannot open this endpoint')
  t.match(await rawExchange(port, upgradeRequest('/echo')), /^HTTP\/1\.1 401 Unauthorized\r\n[^]*WWW-Authenticate: Bearer realm="dualstream"/)
  t.match(await rawExchange(port, upgradeRequest('http://[')), /^HTTP\/1\.1 400 Bad Request[^]*malformed request URL/)
  t.equal((await upgradeStatus(url('/nowhere?token=P'))).status, 404)
  t.equal(accepted.length, 0, 'no refused upgrade reached the endpoint')

  const json = await open(url('/echo?token=P&format=json'))
  const packed = await open(url('/echo'), { headers: { Authorization: 'Bearer P' } })
  t.same(
    accepted.map((a) => [a.format, a.url.pathname]),
    [
      ['json', '/echo'],
      ['msgpack', '/echo'],
    ],
  )
  t.equal(host.connections.size, 2)
  json.send('ping?')
  const [echo] = await once(json, 'message')
  t.equal(String(echo), 'ping?')
  json.close()
  packed.close()
  await Promise.all([closed(json), closed(packed)])
})

t.test('maxPayload per endpoint: a larger frame closes the socket with 1009 and is reported', async (t) => {
  const errors: string[] = []
  const { host, url } = await echoHost({ maxPayload: 1024, onSocketError: (error) => errors.push(error.code ?? 'none') })
  host.addWebSocketEndpoint('/big', { role: 'producer', maxPayload: 64 * 1024, connect: (ws) => ws.on('message', (data) => ws.send(data)) })
  t.teardown(() => host.close())
  const big = await open(url('/big'))
  big.send(Buffer.alloc(8 * 1024))
  const [answer] = await once(big, 'message')
  t.equal((answer as Buffer).length, 8 * 1024, '/big takes 8 KiB')
  const small = await open(url('/echo'))
  small.send(Buffer.alloc(8 * 1024))
  t.equal((await closed(small)).code, 1009, '/echo (the host default, 1 KiB) does not')
  t.same(errors, ['WS_ERR_UNSUPPORTED_MESSAGE_LENGTH'])
  big.close()
  await closed(big)

  // without an error hook the socket is closed all the same
  const quiet = await echoHost({ maxPayload: 16 })
  t.teardown(() => quiet.host.close())
  const ws = await open(quiet.url('/echo'))
  ws.send('more than sixteen bytes')
  t.equal((await closed(ws)).code, 1009)
})

t.test('heartbeat in virtual time: a peer that stops answering pings is terminated at the second beat, one that answers is not', async (t) => {
  const clock = new VirtualClock()
  const { host, url, accepted } = await echoHost({ heartbeatMs: 1000, scheduler: clock })
  t.teardown(() => host.close())
  const answering = await open(url('/echo'))
  const silent = await open(url('/echo'), { autoPong: false })
  const [answeringOnServer, silentOnServer] = accepted.map((a) => a.ws)
  const silentClosed = closed(silent)
  let pings = 0
  silent.on('ping', () => pings++)

  clock.advance(999)
  t.equal(pings, 0, 'no ping before the first period is over')
  const answered = once(answeringOnServer, 'pong')
  const pinged = once(silent, 'ping')
  clock.advance(1)
  await Promise.all([answered, pinged])
  t.equal(pings, 1)
  clock.advance(999)
  t.equal(silentOnServer.readyState, WebSocket.OPEN, 'one missed pong is not yet a dead peer')
  let answeredAgain = once(answeringOnServer, 'pong')
  clock.advance(1)
  t.equal(silentOnServer.readyState, WebSocket.CLOSING, 'the second beat without a pong terminates it')
  t.equal(answeringOnServer.readyState, WebSocket.OPEN, 'the answering peer stays')
  t.same(await silentClosed, { code: 1006, reason: '' }, 'terminated: no closing handshake')
  for (let beat = 3; beat <= 6; beat++) {
    await answeredAgain
    answeredAgain = once(answeringOnServer, 'pong')
    clock.advance(1000)
  }
  await answeredAgain
  t.equal(answeringOnServer.readyState, WebSocket.OPEN, 'still there after more beats (each pong comes back between them)')
  answering.close()
  await closed(answering)
})

t.test('heartbeat: a peer whose socket the server stopped reading is not blamed for a missing pong', async (t) => {
  const clock = new VirtualClock()
  const host = new HttpHost({ heartbeatMs: 100, scheduler: clock })
  let onServer: WebSocket | undefined
  host.addWebSocketEndpoint('/paused', {
    role: 'producer',
    connect: (ws) => {
      onServer = ws
      ws.pause() // flow control: the server reads nothing, pongs included
    },
  })
  const { port } = await host.listen(0, '127.0.0.1')
  t.teardown(() => host.close())
  const client = await open(`ws://127.0.0.1:${port}/paused`)
  clock.advance(1000)
  t.equal(onServer!.readyState, WebSocket.OPEN, 'ten beats without a pong read, still open')
  onServer!.resume()
  await once(onServer!, 'pong')
  client.close()
  await closed(client)
})

t.test('no heartbeat with heartbeatMs 0, nor for a host closed before it listens', async (t) => {
  const clock = new VirtualClock()
  const none = new HttpHost({ heartbeatMs: 0, scheduler: clock })
  await none.listen(0, '127.0.0.1')
  t.equal(clock.actions.length, 0, 'nothing scheduled')
  await none.close()
  const late = new HttpHost({ heartbeatMs: 100, scheduler: clock })
  await late.close()
  t.equal(late.closing, true)
  await late.listen(0, '127.0.0.1')
  t.equal(clock.actions.length, 0, 'a closed host starts no heartbeat')
  await new Promise((resolve) => late.http.close(resolve))
})

t.test('port fallback: a port in use is an error, or with fallback a free port and the one asked', async (t) => {
  const { host, port } = await echoHost()
  t.teardown(() => host.close())
  const other = new HttpHost({ heartbeatMs: 0 })
  t.teardown(() => other.close())
  await t.rejects(other.listen(port, '127.0.0.1'), { code: 'EADDRINUSE' })
  const fallback = await other.listen(port, '127.0.0.1', true)
  t.not(fallback.port, port)
  t.same(fallback, { host: '127.0.0.1', port: fallback.port, fellBackFrom: port })
  const third = new HttpHost({ heartbeatMs: 0 })
  t.teardown(() => third.close())
  await t.rejects(third.listen(0, '192.0.2.1', true), { code: 'EADDRNOTAVAIL' }, 'port 0 has nothing to fall back from')
  await t.rejects(third.listen(fallback.port, '192.0.2.1', true), { code: 'EADDRNOTAVAIL' }, 'not a port problem: no fallback')
})

t.test('close with connections open: 1001 to every peer, upgrades refused (503), idempotent, then nobody gets in', async (t) => {
  const { host, port, url } = await echoHost()
  const a = await open(url('/echo'))
  const b = await open(url('/echo'))
  const closes = [closed(a), closed(b)]
  let closing: Promise<void> | undefined
  const late = await rawExchange(port, upgradeRequest('/echo'), () => (closing = host.close()))
  t.match(late, /^HTTP\/1\.1 503 Service Unavailable[^]*the server is shutting down/, 'a connection made before the close cannot upgrade during it')
  t.equal(host.closing, true)
  t.equal(host.close(), closing, 'close is idempotent')
  t.same(await Promise.all(closes), [
    { code: 1001, reason: 'server shutting down' },
    { code: 1001, reason: 'server shutting down' },
  ])
  await closing
  t.equal(host.connections.size, 0, 'every connection has closed once close() resolves')
  await t.rejects(upgradeStatus(url('/echo')), { code: 'ECONNREFUSED' })
})

t.test('close in virtual time: peers that do not complete the closing handshake and requests under way are cut off after closeTimeoutMs', async (t) => {
  const clock = new VirtualClock()
  const { host, port, url, accepted } = await echoHost({ scheduler: clock, closeTimeoutMs: 500 })
  let hanging!: () => void
  const arrived = new Promise<void>((resolve) => (hanging = resolve))
  host.addHttpRoute('/hang', () => hanging()) // never answers
  const deaf = await open(url('/echo'))
  const socket = (deaf as unknown as { _socket: Socket })._socket
  socket.pause() // never reads the close frame, so never answers it
  const request = ask(port, '/hang')
  await arrived
  const onServer = (accepted[0].ws as unknown as { _socket: Socket })._socket
  let done = false
  const closing = host.close().then(() => (done = true))
  clock.advance(499)
  t.equal(onServer.destroyed, false, 'still waiting for the closing handshake')
  clock.advance(1)
  t.equal(onServer.destroyed, true, 'cut off once the timeout is over')
  await t.rejects(request, /socket hang up|ECONNRESET/, 'the request under way is cut off too')
  await closing
  t.equal(done, true)
  socket.resume()
  await closed(deaf)
})

t.test('closeTimeoutMs 0: peers are cut off at once after their close frame', async (t) => {
  const { host, url } = await echoHost({ closeTimeoutMs: 0 })
  const ws = await open(url('/echo'))
  const end = closed(ws)
  await host.close()
  t.ok([1001, 1006].includes((await end).code), 'the close frame, or the cut')
})
