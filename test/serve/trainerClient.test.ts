/** The TypeScript trainer client (`dualstream/client`) against a live engine server. */
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { TrainerClient, TrainerClientError, type TrainerBatch } from '../../src/client.js'
import { Client, prompts, startServer, tempDir } from './support.js'

const config = {
  groupSize: 2,
  batchGroups: 2,
  objectives: [{ channel: 'accuracy' }],
  constraints: [{ channel: 'consistency', sense: '>=' as const, threshold: 0.9, dual: { rule: 'sgd' as const, lr: 0.5 } }],
}

/** Waits (polling) until `test` holds; the assertions come after. */
async function waitFor(test: () => boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!test()) {
    if (Date.now() > deadline) throw new Error('timed out waiting for a condition')
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

/** Takes `n` batches from a trainer, acknowledging each with `ack` (when given). */
async function take(trainer: TrainerClient, n: number, ack?: (batch: TrainerBatch) => Parameters<TrainerBatch['ack']>[0]): Promise<TrainerBatch[]> {
  const out: TrainerBatch[] = []
  if (n === 0) return out
  for await (const batch of trainer) {
    out.push(batch)
    if (ack !== undefined) await batch.ack(ack(batch))
    if (out.length === n) break
  }
  return out
}

t.test('each batch once, in step order, across a restart of the trainer and a dropped connection', async (t) => {
  const served = await startServer({ config, tokens: { trainer: 'train' } })
  t.teardown(() => served.close())
  const producer = await Client.open(served.url('/ingest'))
  producer.send({ type: 'rollouts', rollouts: prompts('a', 8).map((r, i) => ({ ...r, payload: Buffer.from([i]) })) })
  await producer.nth('ack')
  const statePath = join(tempDir(), 'trainer.json')
  const url = `ws://127.0.0.1:${served.port}`

  const first = await TrainerClient.open({ url, token: 'train', statePath })
  t.equal(first.lastStep, 0)
  const got = await take(first, 2, (b) => ({ policyVersion: b.step, state: { checkpoint: `ckpt-${b.step}` } }))
  t.same(
    got.map((b) => b.step),
    [1, 2],
  )
  t.same(
    Array.from(got[0].advantages),
    got[0].rollouts.map((r) => r.advantage),
    'advantages aligned with the rollouts',
  )
  t.ok(Buffer.isBuffer(got[0].rollouts[0].payload), 'payload bytes stay bytes')
  t.equal(got[0].batchSize, 4)
  t.same(Object.keys(got[0].lambda), ['consistency'])
  t.same(JSON.parse(readFileSync(statePath, 'utf8')), { lastStep: 2, policyVersion: 2, state: { checkpoint: 'ckpt-2' } })
  // step 3 received, not acknowledged: the process "dies" (closes) before applying it
  await take(first, 1)
  await first.close()

  // a new process: steps 1 and 2 come again (unacknowledged on the server? no: acked) — step 3 is next
  const second = await TrainerClient.open({ url: `${url}/batches`, token: 'train', statePath })
  t.equal(second.lastStep, 2)
  t.same(second.state, { checkpoint: 'ckpt-2' })
  const [third] = await take(second, 1)
  t.equal(third.step, 3)
  // the connection drops before the ack: the client reconnects, step 3 comes again and is not handed out twice
  const ranks = (served.server as unknown as { trainers: { connections: Map<number, { ws: { terminate(): void } }> } }).trainers
  ranks.connections.get(0)!.ws.terminate()
  await third.ack({ policyVersion: 3 })
  const [fourth] = await take(second, 1, () => ({}))
  t.equal(fourth.step, 4)
  await t.rejects(fourth.ack(), /step 4 is already acknowledged \(the last applied step is 4\)/)
  // step 3's ack was lost with the connection: after the reconnect it comes again, and is acknowledged with the version
  await waitFor(() => served.server.health().outbox === 0)
  await second.close()
  await served.server.acknowledgementsApplied()
  t.equal(served.engine.policyVersion, 3, 'the version of the lost ack reported with the re-ack')
  await producer.close()
})

t.test('two ranks share each batch; a redelivered applied step is acknowledged, not handed out', async (t) => {
  const served = await startServer({ config })
  t.teardown(() => served.close())
  const producer = await Client.open(served.url('/ingest'))
  producer.send({ type: 'rollouts', rollouts: prompts('a', 6) })
  await producer.nth('ack')
  const dir = tempDir()
  // rank 1 applied step 1 before a crash, without its ack reaching the server
  writeFileSync(join(dir, 'rank1.json'), JSON.stringify({ lastStep: 1 }))
  const ranks = await Promise.all(
    [0, 1].map((rank) => TrainerClient.open({ url: `ws://127.0.0.1:${served.port}`, statePath: join(dir, `rank${rank}.json`), rank, world: 2 })),
  )
  const [zero, one] = await Promise.all([take(ranks[0], 3, () => ({})), take(ranks[1], 2, () => ({}))])
  t.same(
    zero.map((b) => b.step),
    [1, 2, 3],
  )
  t.same(
    one.map((b) => b.step),
    [2, 3],
    'rank 1 skips step 1',
  )
  t.same(zero[0].shard, { rank: 0, world: 2, rollouts: 4, indices: [0, 2] })
  t.equal(zero[0].batchSize, 4)
  await Promise.all(ranks.map((r) => r.close()))
  await served.server.acknowledgementsApplied()
  t.equal(served.server.health().outbox, 0, 'every step acknowledged by both ranks')
  await producer.close()
})

t.test('what stops a trainer says why: a wrong token, a refused rank, another connection on its rank', async (t) => {
  const served = await startServer({ config, tokens: { trainer: 'train' } })
  t.teardown(() => served.close())
  const url = `ws://127.0.0.1:${served.port}`
  const statePath = join(tempDir(), 's.json')
  await t.rejects(TrainerClient.open({ url, token: 'nope', statePath }), new TrainerClientError('unauthorized', ''))
  await t.rejects(TrainerClient.open({ url, token: 'nope', statePath }), /^401: .*trainer token/)
  const nowhere = `ws://127.0.0.1:${served.port}/nowhere`
  await t.rejects(TrainerClient.open({ url: nowhere.replace('/nowhere', '/batches/x'), token: 'train', statePath }), /HTTP 404/)

  const bad = await TrainerClient.open({ url, token: 'train', statePath, rank: 3, world: 2 })
  await t.rejects(take(bad, 1), { code: 'bad-rank', message: /refused rank 3: rank: must be below world \(2\), got 3/ })
  const noWorld = await TrainerClient.open({ url, token: 'train', statePath, world: 0 })
  await t.rejects(take(noWorld, 1), { code: 'bad-rank', message: 'the server refused rank 0: world: must be between 1 and 1024, got 0' })

  const replaced = await TrainerClient.open({ url, token: 'train', statePath })
  const other = await Client.open(served.url('/batches', 'token=train'))
  await t.rejects(take(replaced, 1), { code: 'replaced', message: /another connection took rank 0/ })
  await other.close()
  await replaced.close()

  writeFileSync(statePath, JSON.stringify({ lastStep: -1 }))
  await t.rejects(TrainerClient.open({ url, token: 'train', statePath }), /s\.json: lastStep must be an integer >= 0, got -1/)
  t.ok(existsSync(statePath))
})

t.test('a server that stays away: the trainer gives up after its retries, saying so', async (t) => {
  const served = await startServer({ config })
  const statePath = join(tempDir(), 's.json')
  const trainer = await TrainerClient.open({ url: `ws://127.0.0.1:${served.port}`, statePath, retries: 1 })
  const taken = take(trainer, 1)
  await served.close()
  await t.rejects(taken, { code: 'unreachable', message: /gave up after 1 reconnections: .*ECONNREFUSED/ })
  await trainer.close()
})

t.test('against a hand-made server: odd frames, a plain-text refusal, a state path that is a folder, close while waiting', async (t) => {
  const { createServer } = await import('node:http')
  const { WebSocketServer } = await import('ws')
  const { Packr } = await import('msgpackr')
  const packr = new Packr({ useRecords: false })
  const http = createServer()
  const wss = new WebSocketServer({ noServer: true })
  let refuse: string | undefined = 'HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\r\nnot now'
  http.on('upgrade', (request, socket, head) => {
    if (refuse !== undefined) return socket.end(refuse)
    wss.handleUpgrade(request, socket, head, (ws) => {
      const batch = { type: 'batch', step: 1, lambda: {}, constraints: {}, rollouts: [{ id: 'r', promptId: 'p', advantage: 0.5 }] }
      ws.send(packr.pack({ type: 'hello' }))
      ws.send(packr.pack(batch))
      ws.send(packr.pack(batch))
      ws.on('message', () => ws.send(packr.pack({ type: 'error', code: 'bad-ack', reason: 'step: 1 has not been delivered' })))
    })
  })
  await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve))
  t.teardown(() => http.close())
  const url = `ws://127.0.0.1:${(http.address() as { port: number }).port}`
  const dir = tempDir()
  await t.rejects(TrainerClient.open({ url, statePath: join(dir, 's.json') }), /^HTTP 503: not now$/)
  await t.rejects(TrainerClient.open({ url, statePath: dir }), /EISDIR/)
  refuse = 'HTTP/1.1 502 Bad Gateway\r\ncontent-type: application/json\r\n\r\n{"upstream":"down"}'
  await t.rejects(TrainerClient.open({ url, statePath: join(dir, 's.json') }), /^HTTP 502: \{"upstream":"down"\}$/)
  refuse = undefined

  const trainer = await TrainerClient.open({ url: `${url}/batches?format=json`, statePath: join(dir, 's.json') })
  const seen: number[] = []
  const failure = (async () => {
    for await (const batch of trainer) {
      seen.push(batch.step)
      await batch.ack()
    }
  })()
  await t.rejects(failure, { code: 'protocol', message: 'the server refused a frame of this trainer (bad-ack): step: 1 has not been delivered' })
  t.same(seen, [1], 'the same step twice before its ack is handed out once; an unknown frame type is ignored')
  await trainer.close()

  const idle = await TrainerClient.open({ url, statePath: join(dir, 'idle.json') })
  const ended = (async () => {
    const steps: number[] = []
    for await (const batch of idle) steps.push(batch.step)
    return steps
  })()
  await idle.close()
  t.same(await ended, [1], 'close ends the iteration after the batches already received')

  // a reconnection refused with 401 (the token was changed on the server) stops the trainer at once
  const revoked = await TrainerClient.open({ url, statePath: join(dir, 'revoked.json') })
  refuse = 'HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n\r\n{"error":"wrong trainer token"}'
  for (const ws of wss.clients) ws.terminate()
  await t.rejects(
    (async () => {
      for await (const batch of revoked) if (batch.step > 1) break
    })(),
    { code: 'unauthorized', message: /^401: wrong trainer token/ },
  )
  await revoked.close()
})
