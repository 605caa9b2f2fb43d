/**
 * The floors of the payload bench (`payload.ts`): what the disk takes for the same frames with
 * no network and no pipeline. Run in a process of their own (`payloadClient.ts`, role
 * `floors`), so that the frames they hold never count in the server's RSS.
 *
 * - LMDB: the frames appended to a log database opened as the engine opens its store, one put
 *   per frame awaited to `flushed` (when the engine acknowledges a frame): one frame at a time,
 *   and with as many frames in flight as the producer's credit allows (that one also with the
 *   engine's frame decode before each put).
 * - file: the frames appended to a plain file, each written whole and `fdatasync`ed before the next.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { open as openFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { open as openLmdb } from 'lmdb'
import { decodeFrame } from '../../../streams/wire.js'
import { payloadFrames } from './payloadFrames.js'

export type FloorKind = 'lmdbPerFrame' | 'lmdbWindow' | 'lmdbDecodeWindow' | 'filePerFrame'

/** What each floor does (in the table and the JSON). */
export const FLOORS: Record<FloorKind, string> = {
  lmdbPerFrame: 'LMDB log, one put per frame awaited to flushed before the next',
  lmdbWindow: 'LMDB log, one put per frame awaited to flushed, as many frames in flight as the credit allows',
  lmdbDecodeWindow: 'the same with the engine’s frame decode (wire.ts decodeFrame) before each put',
  filePerFrame: 'plain file, write + fdatasync per frame',
}

export interface FloorsTask {
  role: 'floors'
  rollouts: number
  payloadBytes: number
  frame: number
  /** Frames in flight at most in the windowed LMDB floors. */
  window: number
  /** Rounds of every floor: `warmup` unmeasured, then `runs`. */
  warmup: number
  runs: number
}

export interface FloorsReport {
  frames: number
  frameBytes: number
  /** Each measured round: the ms each floor took. */
  rounds: Record<FloorKind, number>[]
}

/**
 * The LMDB floor: `frames` appended to a log database, one put per frame, each awaited to
 * `flushed`, at most `window` in flight; with `decode`, each frame first decoded as the
 * engine's ingest decodes it. Returns the ms taken.
 */
export async function lmdbFloor(frames: readonly Buffer[], window: number, decode: boolean): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'dualstream-bench-floor-lmdb-'))
  // as EngineStore opens the engine's store (lmdb-js defaults: its sync, its write thread)
  const env = openLmdb({ path: dir, maxDbs: 8 })
  const log = env.openDB<Uint8Array, number>({ name: 'log', encoding: 'binary' })
  try {
    const started = performance.now()
    const inflight: Promise<unknown>[] = []
    for (let seq = 0; seq < frames.length; seq++) {
      if (inflight.length === window) await inflight.shift()
      if (decode) decodeFrame(frames[seq], true)
      inflight.push(log.put(seq, frames[seq]).then(() => env.flushed))
    }
    await Promise.all(inflight)
    return performance.now() - started
  } finally {
    await env.close()
    rmSync(dir, { recursive: true, force: true })
  }
}

/** The file floor: `frames` appended to a plain file, each written whole and `fdatasync`ed before the next. Returns the ms taken. */
export async function fileFloor(frames: readonly Buffer[]): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'dualstream-bench-floor-file-'))
  const file = await openFile(join(dir, 'log'), 'w')
  try {
    const started = performance.now()
    for (const frame of frames) {
      // writeFile on a handle writes from its position on, in as many writes as it takes
      await file.writeFile(frame)
      await file.datasync()
    }
    return performance.now() - started
  } finally {
    await file.close()
    rmSync(dir, { recursive: true, force: true })
  }
}

/** Packs the bench's frames, then runs every floor `warmup + runs` times, in turn; reports the measured rounds. */
export async function runFloors(task: FloorsTask): Promise<FloorsReport> {
  const frames = payloadFrames(task.rollouts, task.payloadBytes, task.frame)
  const all: Record<FloorKind, number>[] = []
  for (let i = 0; i < task.warmup + task.runs; i++)
    all.push({
      lmdbPerFrame: await lmdbFloor(frames, 1, false),
      lmdbWindow: await lmdbFloor(frames, task.window, false),
      lmdbDecodeWindow: await lmdbFloor(frames, task.window, true),
      filePerFrame: await fileFloor(frames),
    })
  return { frames: frames.length, frameBytes: frames.reduce((sum, f) => sum + f.length, 0), rounds: all.slice(task.warmup) }
}
