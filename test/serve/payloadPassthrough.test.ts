/**
 * Payload passthrough end to end (issue 12): `serve` as a child process; a producer sends
 * payloads whose bytes a decode and re-encode would change (float32, a wide integer form, a
 * `__proto__` key, bin, nested maps) and a JSON producer sends nested values; the trainer's
 * batch carries each payload as the exact bytes the producer sent (JSON payloads converted
 * once, at ingest). Then serve is SIGKILLed before the trainer acknowledges and restarted:
 * the batch comes again with the same bytes.
 */
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { Packr, Unpackr } from 'msgpackr'
import t from 'tap'
import WebSocket from 'ws'
import { RawPayload, decodeRolloutsFrame } from '../../src/state/rawPayload.js'
import { mainScript } from '../support/cli.js'
import { startServe } from '../support/serveProcess.js'
import { tempDir } from './support.js'

const packr = new Packr({ useRecords: false })
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' })

const config = { groupSize: 2, batchGroups: 2, objectives: [{ channel: 'accuracy' }] }

/** Hand-made payload bytes: {x: float32 1.5, "__proto__": 1, n: uint32 7, tokens: bin, nested: {a: [1, {b: "c"}]}}. */
const binaryPayload = Buffer.concat([
  Buffer.from([0x85, 0xa1, 0x78, 0xca, 0x3f, 0xc0, 0x00, 0x00, 0xa9, ...Buffer.from('__proto__'), 0x01, 0xa1, 0x6e, 0xce, 0, 0, 0, 7]),
  Buffer.from([0xa6, ...Buffer.from('tokens'), 0xc4, 6, 1, 2, 3, 250, 251, 252]),
  Buffer.from([0xa6, ...Buffer.from('nested')]),
  packr.pack({ a: [1, { b: 'c' }] }),
])

/** A msgpack rollouts frame built by hand around raw payload bytes. */
function msgpackFrame(items: { id: string; promptId: string; accuracy: number; payload: Buffer }[]): Buffer {
  const parts = [Buffer.from([0x82]), packr.pack('type'), packr.pack('rollouts'), packr.pack('rollouts'), Buffer.from([0x90 | items.length])]
  for (const item of items) {
    parts.push(Buffer.from([0x84]), packr.pack('id'), packr.pack(item.id), packr.pack('promptId'), packr.pack(item.promptId))
    parts.push(packr.pack('rewards'), packr.pack({ accuracy: item.accuracy }), packr.pack('payload'), item.payload)
  }
  return Buffer.concat(parts)
}

/** Opens a socket and resolves with it and every binary frame it receives, raw. */
function open(url: string): Promise<{ ws: WebSocket; frames: Buffer[]; next: (test: (frame: Buffer) => boolean) => Promise<Buffer> }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url)
    const frames: Buffer[] = []
    let waiters: { test: (f: Buffer) => boolean; resolve: (f: Buffer) => void }[] = []
    ws.on('message', (data: Buffer, isBinary) => {
      const frame = isBinary ? data : Buffer.from(packr.pack(JSON.parse(data.toString())))
      frames.push(frame)
      waiters = waiters.filter((w) => !(w.test(frame) && (w.resolve(frame), true)))
    })
    const next = (test: (frame: Buffer) => boolean) =>
      new Promise<Buffer>((resolveFrame) => {
        const seen = frames.find(test)
        if (seen !== undefined) resolveFrame(seen)
        else waiters.push({ test, resolve: resolveFrame })
      })
    ws.once('open', () => resolve({ ws, frames, next }))
    ws.once('error', reject)
  })
}

const typeOf = (frame: Buffer) => (unpackr.unpack(frame) as { type: string }).type

/** Each rollout's payload bytes in a batch frame, by id (read without decoding them). */
function payloadsOf(batch: Buffer): Map<string, Buffer> {
  const decoded = decodeRolloutsFrame(batch) as { rollouts: { id: string; payload?: RawPayload }[] }
  return new Map(decoded.rollouts.map((r) => [r.id, Buffer.from(r.payload!.bytes!)]))
}

t.test('payload bytes travel untouched producer → log → trainer, JSON payloads converted once; the same after a SIGKILL', async (t) => {
  const dir = tempDir()
  const configPath = join(dir, 'config.json')
  writeFileSync(configPath, JSON.stringify(config))
  const dataDir = join(dir, 'data')
  const args = ['-c', configPath, '-d', dataDir, '--heartbeat-ms', '0']
  const serve = await startServe(args, { script: [...process.execArgv, mainScript] })
  t.teardown(() => serve.kill())
  const trainer = await open(serve.url('/batches'))

  const binary = await open(serve.url('/ingest'))
  const sent = new Map<string, Buffer>()
  const items = [0, 1].map((i) => {
    const payload = i === 0 ? binaryPayload : packr.pack({ tokens: Buffer.alloc(300, i), logprobs: new Float32Array([0.5, -1.25]) })
    sent.set(`b${i}`, payload)
    return { id: `b${i}`, promptId: 'pb', accuracy: i, payload }
  })
  binary.ws.send(msgpackFrame(items))
  await binary.next((f) => typeOf(f) === 'ack')

  const json = await open(serve.url('/ingest?format=json'))
  const jsonPayloads = [{ text: 'ünïcode ✓', nested: { list: [1, 2.5, null, true], deep: { a: { b: 'c' } } } }, [1, 'two', { three: 3 }]]
  json.ws.send(
    JSON.stringify({ type: 'rollouts', rollouts: jsonPayloads.map((payload, i) => ({ id: `j${i}`, promptId: 'pj', rewards: { accuracy: i }, payload })) }),
  )
  await json.next((f) => typeOf(f) === 'ack')

  const batch = await trainer.next((f) => typeOf(f) === 'batch')
  const received = payloadsOf(batch)
  for (const [id, bytes] of sent) t.same(received.get(id), bytes, `${id}: the producer's exact bytes`)
  t.match(received.get('b0')!.toString('latin1'), '__proto__', 'a __proto__ key reaches the trainer as sent')
  jsonPayloads.forEach((payload, i) => t.same(unpackr.unpack(received.get(`j${i}`)!), payload, `j${i}: the JSON value, as MessagePack`))
  const decoded = unpackr.unpack(batch) as { rollouts: { id: string; payload: Record<string, unknown> }[] }
  t.same(decoded.rollouts.find((r) => r.id === 'b1')!.payload.tokens, Buffer.alloc(300, 1), 'bin stays bin')

  // killed before the trainer acknowledges: after the restart the batch comes again, byte for byte
  serve.kill()
  await serve.exited
  const again = await startServe(args, { script: [...process.execArgv, mainScript] })
  t.teardown(() => again.kill())
  const trainer2 = await open(again.url('/batches'))
  const redelivered = await trainer2.next((f) => typeOf(f) === 'batch')
  t.same(payloadsOf(redelivered), received, 'the same payload bytes after a SIGKILL and restart')
  t.same(redelivered, batch, 'the whole batch frame, identical')
  for (const socket of [trainer, binary, json, trainer2]) socket.ws.close()
  again.kill('SIGTERM')
  await again.exited
})
