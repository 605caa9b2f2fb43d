import { connect } from 'node:net'
import t from 'tap'
import { authorize, bindProblem, isLoopback, tokensFromEnv } from '../../streams/auth.js'
import { Client, startServer, upgradeStatus } from './support.js'

t.test('tokens come from the environment, one per role', (t) => {
  t.same(tokensFromEnv({ DUALSTREAM_PRODUCER_TOKEN: 'p', DUALSTREAM_TRAINER_TOKEN: '', DUALSTREAM_VIEWER_TOKEN: 'v' }), { producer: 'p', viewer: 'v' })
  t.same(tokensFromEnv({}), {})
  t.end()
})

t.test('loopback hosts, and no binding beyond them without tokens', (t) => {
  for (const host of ['127.0.0.1', '127.1.2.3', 'localhost', '::1', '[::1]', '::ffff:127.0.0.1']) t.ok(isLoopback(host), host)
  for (const host of ['0.0.0.0', '::', '10.0.0.1', 'example.org', '::ffff:10.0.0.1', '[::]']) t.notOk(isLoopback(host), host)
  t.equal(bindProblem('127.0.0.1', {}), undefined)
  t.equal(bindProblem('0.0.0.0', { producer: 'p', trainer: 't', viewer: 'v' }), undefined)
  t.equal(
    bindProblem('0.0.0.0', {}),
    'refusing to listen on 0.0.0.0 (not loopback) without tokens: set DUALSTREAM_PRODUCER_TOKEN, DUALSTREAM_TRAINER_TOKEN and DUALSTREAM_VIEWER_TOKEN',
  )
  t.equal(bindProblem('::', { producer: 'p', viewer: 'v' }), 'refusing to listen on :: (not loopback) without tokens: set DUALSTREAM_TRAINER_TOKEN')
  t.end()
})

t.test('authorize: Bearer header or ?token=, per role, constant-time', (t) => {
  const tokens = { producer: 'prod-secret', trainer: 'train-secret' }
  const req = (authorization?: string) => ({ headers: authorization === undefined ? {} : { authorization } }) as never
  const url = (query = '') => new URL(`http://x/ingest${query}`)
  t.equal(authorize(req('Bearer prod-secret'), url(), 'producer', tokens), undefined)
  t.equal(authorize(req('bearer   prod-secret '), url(), 'producer', tokens), undefined, 'scheme is case-insensitive')
  t.equal(authorize(req(), url('?token=prod-secret'), 'producer', tokens), undefined)
  t.equal(authorize(req(), url(), 'viewer', tokens), undefined, 'a role without a token is open')
  t.match(authorize(req(), url(), 'producer', tokens), /missing token: the producer token is required/)
  t.match(authorize(req('Basic abc'), url('?token=prod-secret'), 'producer', tokens), /malformed Authorization header/, 'a header that is there wins')
  t.equal(authorize(req('Bearer nope'), url(), 'producer', tokens), 'wrong token for role producer')
  t.equal(authorize(req(), url('?token=a-much-longer-token-than-the-real-one'), 'trainer', tokens), 'wrong token for role trainer')
  t.equal(authorize(req('Bearer train-secret'), url(), 'producer', tokens), 'a trainer token cannot open this endpoint: the producer token is required')
  t.equal(authorize(req(), url('?token=prod-secret'), 'trainer', tokens), 'a producer token cannot open this endpoint: the trainer token is required')
  t.end()
})

t.test('the upgrade is refused with 401 before any frame; the right token opens it', async (t) => {
  const served = await startServer({ tokens: { producer: 'P', trainer: 'T' } })
  t.teardown(() => served.close())
  const missing = await upgradeStatus(served.url('/ingest'))
  t.equal(missing.status, 401)
  t.match(JSON.parse(missing.body), { error: /missing token/ })
  t.equal((await upgradeStatus(served.url('/ingest'), { Authorization: 'Bearer wrong' })).status, 401)
  t.equal((await upgradeStatus(served.url('/ingest', 'token=wrong'))).status, 401)
  const crossed = await upgradeStatus(served.url('/batches'), { Authorization: 'Bearer P' })
  t.equal(crossed.status, 401, 'a producer token cannot open /batches')
  t.match(crossed.body, /a producer token cannot open this endpoint/)
  t.equal((await upgradeStatus(served.url('/ingest', 'token=T'))).status, 401, 'nor a trainer token /ingest')
  t.equal((await upgradeStatus(served.url('/ingest'), { Authorization: 'Bearer P' })).status, 101)
  t.equal((await upgradeStatus(served.url('/ingest', 'token=P'))).status, 101)
  t.equal((await upgradeStatus(served.url('/batches'), { Authorization: 'Bearer T' })).status, 101)
  t.equal((await upgradeStatus(served.url('/batches', 'token=T'))).status, 101)
  const nowhere = await upgradeStatus(served.url('/nowhere', 'token=P'))
  t.equal(nowhere.status, 404)
  t.match(nowhere.body, /no WebSocket endpoint at \/nowhere \(try \/ingest, \/batches\)/)
  // a client that vanishes in the middle of its upgrade does not disturb the server
  const socket = connect(served.port, '127.0.0.1')
  await new Promise((resolve) => socket.once('connect', resolve))
  socket.write(
    'GET /ingest HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n',
  )
  socket.resetAndDestroy()
  const client = await Client.open(served.url('/ingest', 'token=P'))
  t.equal((await client.nth('credit')).type, 'credit', 'still serving')
  await client.close()
})

t.test('a malformed request URL, and upgrades during shutdown', async (t) => {
  const served = await startServer()
  const raw = async (request: string, beforeWrite: () => void = () => {}) => {
    const socket = connect(served.port, '127.0.0.1')
    await new Promise((resolve) => socket.once('connect', resolve))
    beforeWrite()
    return new Promise<string>((resolve) => {
      let text = ''
      socket.on('data', (c: Buffer) => (text += c.toString()))
      socket.on('close', () => resolve(text))
      socket.write(request)
    })
  }
  const upgrade = (path: string) =>
    `GET ${path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`
  const bad = await raw(upgrade('http://['))
  t.match(bad, /^HTTP\/1\.1 400 Bad Request/)
  t.match(bad, /malformed request URL/)
  let closing: Promise<void> | undefined
  const late = await raw(upgrade('/ingest'), () => (closing = served.server.close()))
  t.match(late, /^HTTP\/1\.1 503 Service Unavailable/, 'a connection made before shutdown cannot upgrade during it')
  t.match(late, /the server is shutting down/)
  await closing
  await served.engine.close()
})
