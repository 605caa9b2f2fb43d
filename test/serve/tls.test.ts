/**
 * `serve` over TLS (`--tls-cert`, `--tls-key`; `tls` of the programmatic serve): producers,
 * trainers and viewers on wss:// and https:// with the certificate's CA, plain http:// and
 * ws:// refused on that port, the warning of a non-loopback bind without TLS, and the errors
 * for a missing half, an unreadable file and contents that are not a certificate and its key.
 * The certificate (test/fixtures/tls) is self-signed for localhost and 127.0.0.1, valid 100 years.
 */
import { execFile as execFileCallback } from 'node:child_process'
import { generateKeyPairSync } from 'node:crypto'
import { readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { get as httpGet } from 'node:http'
import { get as httpsGet } from 'node:https'
import { join } from 'node:path'
import { PassThrough } from 'node:stream'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import t, { type Test } from 'tap'
import { parseConfig } from '../../src/core/config.js'
import { cleartextWarning, listeningLine, serve, ServeError } from '../../src/apps/serve.js'
import { startServer } from '../../src/apps/startServer.js'
import { tlsProblem } from '../../src/apps/tlsCredentials.js'
import { TrainerClient } from '../../streams/trainerClient.js'
import { runCli } from '../support/cli.js'
import { PYTHON, pythonMissing } from '../support/python.js'
import { baseConfig, Client, configFile, prompts, startServeCli, tempDir } from './support.js'

const execFile = promisify(execFileCallback)
const fixtures = fileURLToPath(new URL('../fixtures/tls/', import.meta.url))
const certFile = join(fixtures, 'cert.pem')
const keyFile = join(fixtures, 'key.pem')
const cert = readFileSync(certFile)
const key = readFileSync(keyFile)
const config = parseConfig(baseConfig)

/** An HTTPS (or HTTP) GET: status and body, or the error the request failed with. */
function request(url: string, ca?: Buffer, headers: Record<string, string> = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const get = url.startsWith('https:') ? httpsGet : httpGet
    get(url, { ca, headers }, (response) => {
      let body = ''
      response.on('data', (chunk: Buffer) => (body += chunk.toString()))
      response.on('end', () => resolve({ status: response.statusCode!, body }))
    }).on('error', reject)
  })
}

/** `dualstream serve` in-process on any free port, without heartbeat. */
const startCli = (argv: string[]) => startServeCli(['--port', '0', '--heartbeat-ms', '0', ...argv])

/** Sets the three role tokens for the test (a non-loopback host needs them). */
function withTokens(t: Test): void {
  const saved = { ...process.env }
  t.teardown(() => {
    process.env = saved
  })
  process.env.DUALSTREAM_PRODUCER_TOKEN = 'P'
  process.env.DUALSTREAM_TRAINER_TOKEN = 'T'
  process.env.DUALSTREAM_VIEWER_TOKEN = 'V'
}

t.test('serve() with tls: producers, trainers and viewers on wss:// and https://; plain http:// and ws:// refused', async (t) => {
  let log = ''
  const out = new PassThrough()
  out.on('data', (chunk: Buffer) => (log += chunk.toString()))
  const server = await startServer({ config, dataDir: tempDir(), tls: { cert, key }, log: out, heartbeatMs: 0 })
  t.teardown(() => server.close())
  t.equal(server.url, `https://127.0.0.1:${server.port}`)
  t.match(log, `listening on https://127.0.0.1:${server.port} (WebSocket /ingest`)
  t.notMatch(log, 'warning', 'no warning on loopback')

  const health = await request(`${server.url}/healthz`, cert)
  t.equal(health.status, 200)
  t.match(JSON.parse(health.body), { status: 'ok', step: 0 })
  t.equal((await request(`${server.url}/`, cert)).status, 200, 'the dashboard')
  t.equal((await request(`${server.url}/metrics`, cert)).status, 200)
  t.equal((await request(`${server.url}/history`, cert)).status, 200)

  const wss = `wss://127.0.0.1:${server.port}`
  const producer = await Client.open(`${wss}/ingest`, { ca: cert })
  producer.send({ type: 'rollouts', rollouts: prompts('a', 2) })
  t.match(await producer.nth('ack'), { type: 'ack' })
  const viewer = await Client.open(`${wss}/telemetry`, { ca: cert })
  await viewer.close()

  const trainer = await TrainerClient.open({ url: wss, ca: cert, statePath: join(tempDir(), 'trainer.json') })
  for await (const batch of trainer) {
    t.equal(batch.step, 1)
    t.equal(batch.rollouts.length, 4)
    await batch.ack()
    break
  }
  t.equal(trainer.lastStep, 1)
  await trainer.close()
  await producer.close()

  // the TLS server takes the plain request for a bad handshake and drops the connection
  await t.rejects(request(`http://127.0.0.1:${server.port}/healthz`), { code: 'ECONNRESET' }, 'plain HTTP on the TLS port gets no answer')
  await t.rejects(Client.open(`ws://127.0.0.1:${server.port}/ingest`), { code: 'ECONNRESET' }, 'nor does a plain ws:// upgrade')
  await t.rejects(Client.open(`${wss}/ingest`), { code: 'DEPTH_ZERO_SELF_SIGNED_CERT' }, 'without the CA the self-signed certificate is not trusted')
  await t.rejects(request(`${server.url}/healthz`), { code: 'DEPTH_ZERO_SELF_SIGNED_CERT' }, 'nor over https://')
})

t.test('serve() refuses tls contents that are not a PEM certificate and its key, before opening the data folder', async (t) => {
  const other = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' })
  const dataDir = tempDir()
  await t.rejects(
    startServer({ config, dataDir, tls: { cert: key, key } }),
    new ServeError('the TLS certificate tls.cert is not a PEM certificate (error:0480006C:PEM routines::no start line)'),
  )
  await t.rejects(startServer({ config, dataDir, tls: { cert, key: 'not a key' } }), {
    name: 'ServeError',
    message: /^the TLS key tls\.key is not a PEM private key, or is encrypted \(/,
  })
  await t.rejects(startServer({ config, dataDir, tls: { cert, key: other } }), {
    name: 'ServeError',
    message: /^the TLS key tls\.key does not go with the certificate tls\.cert \(.*key values mismatch\)$/,
  })
  t.same(readdirSync(dataDir), [], 'the engine was not opened')
  t.match(tlsProblem({ cert: '', key }), /^the TLS certificate tls\.cert is not a PEM certificate/, 'an empty certificate is none')
  t.equal(tlsProblem({ cert: cert.toString(), key: key.toString() }), undefined, 'strings do as well as Buffers')
})

t.test('the listening line says https:// with TLS; the warning names the host', (t) => {
  t.equal(
    listeningLine('::1', 8787, true),
    'dualstream serve: listening on https://[::1]:8787 (WebSocket /ingest, /batches, /telemetry; GET /healthz, /metrics, /history; dashboard at /)\n',
  )
  t.equal(
    cleartextWarning('0.0.0.0'),
    'dualstream serve: warning: listening on 0.0.0.0 without TLS: bearer tokens and rollouts travel in clear; pass --tls-cert and --tls-key\n',
  )
  t.end()
})

t.test('dualstream serve --tls-cert --tls-key: https:// line, wss:// producer and trainer, no warning', async (t) => {
  const config = configFile()
  const served = await startCli(['-c', config, '-d', tempDir(), '--tls-cert', certFile, '--tls-key', keyFile])
  t.equal(served.scheme, 'https')
  t.match(served.output(), `listening on https://127.0.0.1:${served.port} (`)
  t.notMatch(served.output(), 'warning')
  t.equal((await request(`https://127.0.0.1:${served.port}/healthz`, cert)).status, 200)
  const producer = await Client.open(`wss://127.0.0.1:${served.port}/ingest`, { ca: cert })
  producer.send({ type: 'rollouts', rollouts: prompts('c', 2) })
  await producer.nth('ack')
  const trainer = await Client.open(`wss://127.0.0.1:${served.port}/batches`, { ca: cert })
  t.match(await trainer.nth('batch'), { type: 'batch', step: 1 })
  await trainer.close()
  await producer.close()
  served.stop()
  t.equal(await served.exit, 0)
})

t.test('dualstream serve on a non-loopback host: a warning without TLS, none with it', async (t) => {
  withTokens(t)
  const config = configFile()
  const clear = await startCli(['-c', config, '-d', tempDir(), '--host', '0.0.0.0'])
  t.equal(clear.scheme, 'http')
  const warnings = clear
    .output()
    .split('\n')
    .filter((line) => line.includes('warning'))
  t.same(warnings, ['dualstream serve: warning: listening on 0.0.0.0 without TLS: bearer tokens and rollouts travel in clear; pass --tls-cert and --tls-key'])
  clear.stop()
  t.equal(await clear.exit, 0)

  const secure = await startCli(['-c', config, '-d', tempDir(), '--host', '0.0.0.0', '--tls-cert', certFile, '--tls-key', keyFile])
  t.equal(secure.scheme, 'https')
  t.match(secure.output(), `listening on https://0.0.0.0:${secure.port} (`)
  t.notMatch(secure.output(), 'warning')
  const producer = await Client.open(`wss://127.0.0.1:${secure.port}/ingest`, { ca: cert, headers: { authorization: 'Bearer P' } })
  producer.send({ type: 'rollouts', rollouts: prompts('h', 1) })
  await producer.nth('ack')
  await producer.close()
  await t.rejects(Client.open(`wss://127.0.0.1:${secure.port}/ingest`, { ca: cert }), { message: 'HTTP 401' }, 'tokens still checked')
  secure.stop()
  t.equal(await secure.exit, 0)
})

t.test('dualstream serve: --tls-cert and --tls-key go together, files must be readable and hold a certificate and its key', async (t) => {
  const config = configFile()
  const serveWith = (...tls: string[]) => runCli(['serve', '-c', config, '-d', tempDir(), '--port', '0', ...tls])

  const noKey = await serveWith('--tls-cert', certFile)
  t.equal(noKey.code, 2)
  t.equal(noKey.stderr, 'dualstream serve: --tls-cert needs --tls-key (the private key of the certificate)\n')
  const noCert = await serveWith('--tls-key', keyFile)
  t.equal(noCert.code, 2)
  t.equal(noCert.stderr, 'dualstream serve: --tls-key needs --tls-cert (the certificate of the key)\n')

  const nowhere = join(tempDir(), 'no-such-cert.pem')
  const missingCert = await serveWith('--tls-cert', nowhere, '--tls-key', keyFile)
  t.equal(missingCert.code, 2)
  t.match(missingCert.stderr, `dualstream serve: cannot read the TLS certificate ${nowhere}: ENOENT: no such file or directory`)
  const missingKey = await serveWith('--tls-cert', certFile, '--tls-key', nowhere)
  t.match(missingKey.stderr, `dualstream serve: cannot read the TLS key ${nowhere}: ENOENT`)

  const swapped = await serveWith('--tls-cert', keyFile, '--tls-key', certFile)
  t.equal(swapped.code, 2)
  t.match(swapped.stderr, `dualstream serve: the TLS certificate ${keyFile} is not a PEM certificate (`)
  const certAsKey = await serveWith('--tls-cert', certFile, '--tls-key', certFile)
  t.match(certAsKey.stderr, `dualstream serve: the TLS key ${certFile} is not a PEM private key, or is encrypted (`)
  const otherKey = join(tempDir(), 'other-key.pem')
  writeFileSync(otherKey, generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }))
  const mismatch = await serveWith('--tls-cert', certFile, '--tls-key', otherKey)
  t.match(mismatch.stderr, `dualstream serve: the TLS key ${otherKey} does not go with the certificate ${certFile} (`)
})

const pythonClients = `
import asyncio, json, os, ssl, sys, tempfile
from dualstream_client import Producer, Trainer

url, cafile = sys.argv[1], sys.argv[2]
rollouts = [{"id": f"p{p}-{i}", "promptId": f"p{p}", "rewards": {"accuracy": (p + i) % 2, "consistency": 1}} for p in range(2) for i in range(2)]

async def main():
    trusted = ssl.create_default_context(cafile=cafile)
    async with Producer(url + "/ingest", ssl_context=trusted) as producer:
        await producer.send(rollouts)
    with tempfile.TemporaryDirectory() as folder:
        async with Trainer(url + "/batches", state_path=os.path.join(folder, "trainer.json"), ssl_context=trusted) as trainer:
            async for batch in trainer:
                await batch.ack(policy_version=1)
                step, size = batch.step, len(batch.rollouts)
                break
    try:
        # the system's CAs do not trust a self-signed certificate; retrying cannot change that
        async with Producer(url + "/ingest", max_retries=None):
            untrusted = None
    except ssl.SSLCertVerificationError as error:
        untrusted = type(error).__name__
    print(json.dumps({"step": step, "size": size, "untrusted": untrusted}))

asyncio.run(main())
`

const python = pythonMissing(['msgpack', 'websockets'], ['python3-msgpack', 'python3-websockets'])

t.test('the Python producer and trainer connect to wss:// with ssl_context', { skip: python }, async (t) => {
  const server = await startServer({ config, dataDir: tempDir(), tls: { cert, key }, heartbeatMs: 0 })
  t.teardown(() => server.close())
  const examples = fileURLToPath(new URL('../../examples/python/', import.meta.url))
  const { stdout } = await execFile(PYTHON, ['-c', pythonClients, `wss://127.0.0.1:${server.port}`, certFile], {
    env: { ...process.env, PYTHONPATH: examples, PYTHONDONTWRITEBYTECODE: '1' },
    timeout: 60_000,
  })
  t.same(JSON.parse(stdout), { step: 1, size: 4, untrusted: 'SSLCertVerificationError' })
})

t.test('serve() on a non-loopback host without TLS warns once; on loopback it does not', async (t) => {
  let out = ''
  const stdout = new PassThrough()
  stdout.on('data', (chunk: Buffer) => (out += chunk.toString()))
  const stop = new AbortController()
  const tokens = { producer: 'P', trainer: 'T', viewer: 'V' }
  const code = serve({ config, dataDir: tempDir(), host: '0.0.0.0', port: 0, tokens, heartbeatMs: 0, onListening: () => stop.abort() }, { stdout }, stop.signal)
  t.equal(await code, 0)
  t.equal(out.split(cleartextWarning('0.0.0.0')).length, 2, 'one warning line')
  out = ''
  const loopback = new AbortController()
  loopback.abort()
  t.equal(await serve({ config, dataDir: tempDir(), host: '127.0.0.1', port: 0, tokens: {} }, { stdout }, loopback.signal), 0)
  t.match(out, 'listening on http://127.0.0.1:')
  t.notMatch(out, 'warning')
})
