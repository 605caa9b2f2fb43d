/**
 * connectNats against real nats-server processes: user and password, a token, an NKey from a
 * `.creds` file and TLS with a private CA each let a client in; a wrong password, a missing
 * CA, a refused port and an unreadable creds file each fail with a message that names the
 * servers (without their credentials) and says why. The list parser's refusals are checked
 * without a server.
 */
import t from 'tap'
import { existsSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { nkeyAuthenticator } from '@nats-io/transport-node'
import { connectNats, parseNatsServers } from '../../src/state/cluster/natsConnect.js'
import { natsMissing, startNats, waitFor } from '../support/natsServers.js'

t.test('parseNatsServers: credentials out of the list, ports defaulted, TLS from the scheme', async (t) => {
  t.same(parseNatsServers(' nats://u:p%40ss@10.0.0.1:4300 , nats://10.0.0.2 ,'), {
    servers: ['10.0.0.1:4300', '10.0.0.2:4222'],
    display: 'nats://10.0.0.1:4300,nats://10.0.0.2:4222',
    tls: false,
    user: 'u',
    pass: 'p@ss',
  })
  t.same(parseNatsServers('tls://s3cret@a.example:4222,tls://s3cret@b.example:4222'), {
    servers: ['a.example:4222', 'b.example:4222'],
    display: 'tls://a.example:4222,tls://b.example:4222',
    tls: true,
    token: 's3cret',
  })
  t.same(parseNatsServers('127.0.0.1:5000,[::1]:5001'), {
    servers: ['127.0.0.1:5000', '[::1]:5001'],
    display: 'nats://127.0.0.1:5000,nats://[::1]:5001',
    tls: false,
  })
})

t.test('parseNatsServers refuses what it cannot honour, saying what and why', async (t) => {
  t.throws(() => parseNatsServers(' , '), /no NATS server in ' , '/)
  t.throws(() => parseNatsServers('nats://a:4222,nats://[oops'), /'nats:\/\/\[oops' in the NATS server list is not a URL/)
  t.throws(() => parseNatsServers('ws://a:80'), /'ws:\/\/' in the NATS server list is not supported: use nats:\/\/host:port, or tls:\/\/host:port for TLS/)
  t.throws(() => parseNatsServers('nats://a:4222,tls://b:4222'), /the NATS servers nats:\/\/a:4222,tls:\/\/b:4222 mix nats:\/\/ and tls:\/\//)
  const mixed = t.throws(() => parseNatsServers('nats://u:pw1xyz@a:4222,nats://u:pw2xyz@b:4222'), /carry different credentials/) as unknown as Error
  t.notMatch(mixed.message, /pw1xyz|pw2xyz/, 'the message does not repeat the passwords')
})

t.test('user and password from the URL', { skip: natsMissing }, async (t) => {
  const nats = await startNats({ config: 'authorization { user: alice, password: "p@ss w" }', client: { user: 'alice', pass: 'p@ss w' } })
  t.teardown(() => nats.stop())
  const host = nats.urls[0].slice('nats://'.length)

  const nc = await connectNats({ servers: `nats://alice:p%40ss%20w@${host}`, name: 'node-a' })
  t.teardown(() => nc.close())
  t.equal(nc.info?.server_name, 's0', 'connected')
  t.equal(nc.getServer(), host, 'the credentials are not in the server list')

  await t.rejects(connectNats({ servers: `nats://alice:wrong@${host}` }), { message: `cannot connect to NATS at nats://${host}: Authorization Violation` })
  await t.rejects(connectNats({ servers: `nats://${host}` }), { message: `cannot connect to NATS at nats://${host}: Authorization Violation` })
})

t.test('a token from the URL; credentials in both the URL and a file are refused', { skip: natsMissing }, async (t) => {
  const nats = await startNats({ config: 'authorization { token: "s3cret" }', client: { token: 's3cret' } })
  t.teardown(() => nats.stop())
  const host = nats.urls[0].slice('nats://'.length)

  const nc = await connectNats({ servers: `nats://s3cret@${host}` })
  t.teardown(() => nc.close())
  t.equal(nc.info?.server_name, 's0', 'connected')
  await t.rejects(connectNats({ servers: `nats://guess@${host}` }), { message: `cannot connect to NATS at nats://${host}: Authorization Violation` })
  await t.rejects(connectNats({ servers: `nats://s3cret@${host}`, credsFile: '/nowhere.creds' }), {
    message: `NATS credentials given twice: in the URLs nats://${host} and in the file /nowhere.creds; keep one`,
  })
})

// The creds file's seed signs the server's nonce: a server that trusts the seed's public NKey
// lets it in, one that does not refuses. (The JWT part matters only in operator mode.)
const ALLOWED_SEED = 'SUAOLRVSB247U5Q3YU2NJ6X727KLHC6R43IFA575YXMFDA4TAD33JEZOVE'
const ALLOWED_NKEY = 'UBYOGI2C7YSLXOK5SSKNOGZFIAYFB2XOT3BSJJ6FE64VJDYZZE6XKMDQ'
const OTHER_SEED = 'SUACEZLE3ZE33HUTQ5KA5AUAAQTIOEJA4EQQ3ZD6FCVRLFHSW2S6FLGLJM'
const credsFile = (seed: string) =>
  [
    '-----BEGIN NATS USER JWT-----',
    'eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.c2ln',
    '------END NATS USER JWT------',
    '',
    '-----BEGIN USER NKEY SEED-----',
    seed,
    '------END USER NKEY SEED------',
    '',
  ].join('\n')

t.test('a .creds file: its NKey signs in; another key or a missing file fails', { skip: natsMissing }, async (t) => {
  const nats = await startNats({
    config: `authorization { users: [ { nkey: ${ALLOWED_NKEY} } ] }`,
    client: { authenticator: nkeyAuthenticator(new TextEncoder().encode(ALLOWED_SEED)) },
  })
  const dir = await mkdtemp(join(tmpdir(), 'dualstream-creds-'))
  t.teardown(async () => {
    await nats.stop()
    await rm(dir, { recursive: true, force: true })
  })
  await writeFile(join(dir, 'allowed.creds'), credsFile(ALLOWED_SEED))
  await writeFile(join(dir, 'other.creds'), credsFile(OTHER_SEED))

  const nc = await connectNats({ servers: nats.url, credsFile: join(dir, 'allowed.creds') })
  t.teardown(() => nc.close())
  t.equal(nc.info?.server_name, 's0', 'connected')
  await t.rejects(connectNats({ servers: nats.url, credsFile: join(dir, 'other.creds') }), {
    message: `cannot connect to NATS at ${nats.url}: Authorization Violation`,
  })
  await t.rejects(connectNats({ servers: nats.url, credsFile: join(dir, 'missing.creds') }), {
    message: new RegExp(`^cannot read the NATS credentials file ${join(dir, 'missing.creds')}: ENOENT`),
  })
})

// a self-signed certificate for localhost and 127.0.0.1 (its own CA)
const tlsDir = fileURLToPath(new URL('../fixtures/tls/', import.meta.url))
const caFile = join(tlsDir, 'cert.pem')

t.test(
  'TLS: tls:// with the CA connects; without it the certificate is refused',
  { skip: natsMissing || (!existsSync(caFile) && `no ${caFile}`) },
  async (t) => {
    const nats = await startNats({ config: `tls { cert_file: "${caFile}", key_file: "${join(tlsDir, 'key.pem')}" }`, client: { tls: { caFile } } })
    t.teardown(() => nats.stop())
    const tlsUrl = nats.url.replace('nats://', 'tls://')

    const nc = await connectNats({ servers: tlsUrl, tlsCaFile: caFile })
    t.teardown(() => nc.close())
    t.equal(nc.info?.tls_required, true, 'the server requires TLS')
    const viaCaOnly = await connectNats({ servers: nats.url, tlsCaFile: caFile })
    t.equal(viaCaOnly.info?.server_name, 's0', 'a CA file alone turns TLS on for nats:// URLs')
    await viaCaOnly.close()
    await t.rejects(connectNats({ servers: tlsUrl }), { message: `cannot connect to NATS at ${tlsUrl}: self-signed certificate` })
  },
)

t.test('no server answers: the error names every server tried', { skip: natsMissing }, async (t) => {
  const nats = await startNats()
  const url = nats.url
  await nats.stop()
  await t.rejects(connectNats({ servers: `${url},nats://127.0.0.1:1` }), { message: `cannot connect to NATS at ${url},nats://127.0.0.1:1: connection refused` })
})

t.test('a connection reconnects on its own after its server restarts', { skip: natsMissing }, async (t) => {
  const nats = await startNats()
  t.teardown(() => nats.stop())
  const nc = await connectNats({ servers: nats.url, reconnectTimeWaitMs: 100 })
  t.teardown(() => nc.close())
  const statuses: string[] = []
  void (async () => {
    for await (const status of nc.status()) statuses.push(status.type)
  })()
  await nats.kill(0)
  await nats.restart(0)
  // the client retries every 100 ms here: wait for its round trip to work again
  const rtt = await waitFor('a round trip after the restart', () => nc.rtt(), 15_000)
  t.ok(rtt >= 0, 'the connection works again')
  t.same(statuses.slice(0, 1), ['disconnect'], 'it saw the server go')
  t.ok(statuses.includes('reconnect'), `it reconnected (${statuses.join(', ')})`)
})
