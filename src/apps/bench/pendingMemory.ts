/**
 * Memory with the trainer stopped (issue 12): `dualstream serve` as a child process with an
 * outbox bound high enough to take everything; a producer streams `rollouts` rollouts with
 * `payloadBytes` of payload each; nobody acknowledges. Every rollout ends up in an
 * unacknowledged batch. Payloads stay in the log on disk (the outbox holds references), so
 * serve's resident memory should not grow with the payload volume: the report gives serve's
 * peak RSS (VmHWM, Linux), its RSS at the end and at start, and the payload volume.
 *
 *   npm run bench -- --pending-rollouts 1000000 --pending-payload-bytes 1024
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, extname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Packr } from 'msgpackr'
import WebSocket from 'ws'
import { benchConfig } from './core.js'

export interface PendingMemoryReport {
  rollouts: number
  payloadBytes: number
  /** Payload bytes streamed in all. */
  payloadVolume: number
  /** Serve's resident memory: at start, at its peak (VmHWM), at the end (bytes). */
  startRss: number
  peakRss: number
  endRss: number
  /** Of it, serve's own memory (RssAnon: heap and buffers): at start, the most seen (sampled every 100 ms), at the end. */
  startAnon: number
  peakAnon: number
  endAnon: number
  /** Of it at the end, pages of the data folder mapped by LMDB (RssFile: the kernel's to drop and read again). */
  endFile: number
  /** Unacknowledged batches at the end, and the rollouts in them. */
  outbox: number
  rolloutsInBatches: number
  elapsedMs: number
}

const here = fileURLToPath(import.meta.url)
/** `dualstream`'s entry point beside this file (main.ts under the test loader, main.js from dist/). */
export const defaultServeCommand = (): string[] => [...process.execArgv, join(dirname(here), '..', `main${extname(here)}`)]

/**
 * A process's resident memory in bytes (Linux /proc): in all (VmRSS), its peak (VmHWM), and
 * the part that is its own (RssAnon: heap, buffers) apart from mapped files (RssFile: LMDB's
 * memory map, pages of the data folder the kernel can drop and read again).
 */
export function residentMemory(pid: number): { rss: number; peak: number; anon: number; file: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) * 1024
  return { rss: field('VmRSS'), peak: field('VmHWM'), anon: field('RssAnon'), file: field('RssFile') }
}

function startServe(command: string[], dataDir: string, configPath: string): Promise<{ child: ChildProcess; port: number }> {
  return new Promise((resolve, reject) => {
    const args = [
      'serve',
      '-c',
      configPath,
      '-d',
      dataDir,
      '--port',
      '0',
      '--heartbeat-ms',
      '0',
      '--max-outbox',
      '10000000',
      '--credit',
      '20000',
      '--disk-reserve',
      '0',
    ]
    const child = spawn(process.execPath, [...command, ...args], { stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    child.stdout!.on('data', (chunk: Buffer) => {
      out += chunk.toString()
      const match = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(out)
      if (match !== null) resolve({ child, port: Number(match[1]) })
    })
    child.once('exit', (code) => reject(new Error(`serve exited (${code}) before listening: ${out}`)))
  })
}

/** Streams the rollouts within credit; resolves once every frame is acknowledged. */
function produce(port: number, rollouts: number, payloadBytes: number, frame: number): Promise<void> {
  const packr = new Packr({ useRecords: false })
  const payload = { tokens: Buffer.alloc(payloadBytes >> 1, 7), logprobs: Buffer.alloc(payloadBytes - (payloadBytes >> 1), 9) }
  const { groupSize } = benchConfig
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ingest`)
    let credit = 0
    let sent = 0
    let acked = 0
    const sizes: number[] = []
    const pump = () => {
      while (sent < rollouts && credit - (sent - acked) > 0) {
        const size = Math.min(frame, credit - (sent - acked), rollouts - sent)
        const items = []
        for (let i = sent; i < sent + size; i++) {
          const prompt = Math.floor(i / groupSize)
          items.push({
            id: `r${i}`,
            promptId: `p${prompt}`,
            rewards: { accuracy: i % 2, consistency: (i * 7) % 5 === 0 ? 0 : 1, grounding: (i % 3) / 2 },
            payload,
          })
        }
        ws.send(packr.pack({ type: 'rollouts', rollouts: items }))
        sizes.push(size)
        sent += size
      }
    }
    ws.on('message', (data: Buffer) => {
      const message = packr.unpack(data) as { type: string; credit?: number; code?: string; reason?: string }
      if (message.type === 'credit') credit = message.credit!
      else if (message.type === 'ack') acked += sizes.shift()!
      else if (message.type === 'error') return reject(new Error(`serve answered ${message.code}: ${message.reason}`))
      if (acked === rollouts) {
        ws.close()
        return resolve()
      }
      pump()
    })
    ws.once('error', reject)
  })
}

export async function benchPendingMemory(options: {
  rollouts: number
  payloadBytes: number
  frame?: number
  serveCommand?: string[]
  log?: (line: string) => void
}): Promise<PendingMemoryReport> {
  const dir = mkdtempSync(join(tmpdir(), 'dualstream-bench-pending-'))
  const configPath = join(dir, 'config.json')
  writeFileSync(configPath, JSON.stringify(benchConfig))
  const { child, port } = await startServe(options.serveCommand ?? defaultServeCommand(), join(dir, 'data'), configPath)
  try {
    const start = residentMemory(child.pid!)
    let peakAnon = start.anon
    const sampler = setInterval(() => (peakAnon = Math.max(peakAnon, residentMemory(child.pid!).anon)), 100)
    const started = performance.now()
    await produce(port, options.rollouts, options.payloadBytes, options.frame ?? 256).finally(() => clearInterval(sampler))
    // the last batches are committed after the last ack: wait until every rollout is in one
    const expected = Math.floor(options.rollouts / (benchConfig.groupSize * benchConfig.batchGroups)) * benchConfig.groupSize * benchConfig.batchGroups
    let health: { outbox: number; pipeline: { rolloutsInBatches: number } }
    for (;;) {
      health = (await (await fetch(`http://127.0.0.1:${port}/healthz`)).json()) as typeof health
      if (health.pipeline.rolloutsInBatches >= expected) break
      /* c8 ignore next -- timing: the last batch is most often committed by the time of the last ack */
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
    const elapsedMs = performance.now() - started
    const end = residentMemory(child.pid!)
    const report: PendingMemoryReport = {
      rollouts: options.rollouts,
      payloadBytes: options.payloadBytes,
      payloadVolume: options.rollouts * options.payloadBytes,
      startRss: start.rss,
      peakRss: end.peak,
      endRss: end.rss,
      startAnon: start.anon,
      peakAnon: Math.max(peakAnon, end.anon),
      endAnon: end.anon,
      endFile: end.file,
      outbox: health.outbox,
      rolloutsInBatches: health.pipeline.rolloutsInBatches,
      elapsedMs,
    }
    const mib = (bytes: number) => `${(bytes / 1024 ** 2).toFixed(0)} MiB`
    options.log?.(
      `pending: ${report.rollouts.toLocaleString('en-US')} rollouts × ${report.payloadBytes} B payload (${mib(report.payloadVolume)}) unacknowledged in ${report.outbox} batches: ` +
        `serve RSS ${mib(report.startRss)} at start, peak ${mib(report.peakRss)}, ${mib(report.endRss)} at the end, of which its own (RssAnon) ` +
        `${mib(report.startAnon)} → peak ${mib(report.peakAnon)} → ${mib(report.endAnon)} and LMDB's mapped pages ${mib(report.endFile)} (${(elapsedMs / 1000).toFixed(1)} s)`,
    )
    return report
  } finally {
    child.kill('SIGKILL')
    rmSync(dir, { recursive: true, force: true })
  }
}
