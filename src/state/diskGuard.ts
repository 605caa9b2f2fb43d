/**
 * Disk watermarks for the data folder (as Kafka's log-dir and Elasticsearch's flood-stage
 * marks): the free space of the folder's filesystem is read with `statfs` on a timer, and
 * between two readings it is estimated by subtracting what the engine wrote since. Below
 * `reserve` free bytes the guard is *full*: the engine takes no new rollouts (LMDB must never
 * meet ENOSPC, after which its environment cannot be trusted). It is *clear* again, by itself,
 * once a reading shows at least `resume` free bytes (twice the reserve by default), so a disk
 * hovering at the mark does not flap.
 */
import { statfs as statfsAsync } from 'node:fs/promises'
import { asyncScheduler, Subject, type SchedulerAction, type SchedulerLike, type Subscription } from 'rxjs'

/** Free and total bytes of a filesystem (free: what an unprivileged process may still write). */
export interface DiskSpace {
  free: number
  total: number
}

/** Reads the space of the filesystem holding `path`. */
export type StatFs = (path: string) => Promise<DiskSpace>

export const systemStatFs: StatFs = async (path) => {
  const s = await statfsAsync(path)
  return { free: s.bavail * s.bsize, total: s.blocks * s.bsize }
}

export interface DiskGuardOptions {
  /** The data folder. */
  path: string
  /** Free bytes that must remain: below them the guard is full (`auto`: {@link defaultDiskReserve} of the filesystem). */
  reserveBytes: number | 'auto'
  /** Free bytes at which a full guard clears (default 2 × reserve). */
  resumeBytes?: number
  /** How often the filesystem is read (ms, default 1000). */
  intervalMs?: number
  scheduler?: SchedulerLike
  statfs?: StatFs
}

/** What the guard knows now. */
export interface DiskState {
  path: string
  full: boolean
  /** Free bytes: the last reading less what was written since. */
  free: number
  total: number
  reserve: number
  resume: number
}

/** Default reserve: 256 MiB, or 2% of a larger filesystem, at most 4 GiB. */
export function defaultDiskReserve(total: number): number {
  return Math.min(4 * 1024 ** 3, Math.max(256 * 1024 ** 2, Math.floor(total * 0.02)))
}

/** A size for people: 1.5 GiB, 320.0 MiB, 512 B. */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let value = bytes
  let unit = 0
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024
    unit++
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`
}

/** Parses a size: a number of bytes, or one with a K, M, G or T suffix (powers of 1024; `KiB`, `MB` … also read). */
export function parseBytes(text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$/i.exec(text)
  if (match === null) throw new RangeError(`not a size: ${JSON.stringify(text)} (bytes, or a number with K, M, G or T)`)
  const power = ' kmgt'.indexOf(match[2].toLowerCase() || ' ')
  return Math.round(Number(match[1]) * 1024 ** power)
}

export class DiskGuard {
  /** Each change between full and clear, as it happens. */
  readonly changes = new Subject<DiskState>()
  private readonly options: Required<Omit<DiskGuardOptions, 'resumeBytes' | 'reserveBytes'>> & { reserveBytes: number; resumeBytes: number }
  private reading: DiskSpace
  // bytes written since the last reading
  private sinceReading = 0
  private full = false
  private timer: Subscription | undefined
  private checking: Promise<void> | undefined

  private constructor(options: DiskGuardOptions, first: DiskSpace) {
    const reserveBytes = options.reserveBytes === 'auto' ? defaultDiskReserve(first.total) : options.reserveBytes
    this.options = {
      path: options.path,
      scheduler: options.scheduler ?? asyncScheduler,
      statfs: options.statfs ?? systemStatFs,
      intervalMs: options.intervalMs ?? 1000,
      reserveBytes,
      resumeBytes: options.resumeBytes ?? 2 * reserveBytes,
    }
    this.reading = first
    this.full = first.free < reserveBytes
  }

  /** Reads the filesystem once and starts watching it. */
  static async open(options: DiskGuardOptions): Promise<DiskGuard> {
    const { reserveBytes, resumeBytes } = options
    if (reserveBytes !== 'auto' && !(reserveBytes >= 0)) throw new RangeError(`disk reserve must be >= 0 bytes, got ${reserveBytes}`)
    const guard = new DiskGuard(options, await (options.statfs ?? systemStatFs)(options.path))
    if (resumeBytes !== undefined && !(resumeBytes >= guard.options.reserveBytes))
      throw new RangeError(`disk resume mark (${resumeBytes} bytes) must be at least the reserve (${guard.options.reserveBytes} bytes)`)
    const check = () => void guard.check()
    guard.timer = guard.options.scheduler.schedule(function (this: SchedulerAction<void>) {
      check()
      this.schedule(undefined, guard.options.intervalMs)
    }, guard.options.intervalMs)
    return guard
  }

  get state(): DiskState {
    return {
      path: this.options.path,
      full: this.full,
      free: this.free,
      total: this.reading.total,
      reserve: this.options.reserveBytes,
      resume: this.options.resumeBytes,
    }
  }

  get isFull(): boolean {
    return this.full
  }

  private get free(): number {
    return this.reading.free - this.sinceReading
  }

  /** Whether `bytes` more may be written without going below the reserve. */
  admits(bytes: number): boolean {
    return !this.full && this.free - bytes >= this.options.reserveBytes
  }

  /** Counts bytes written; crossing the reserve makes the guard full at once and asks for a fresh reading. */
  wrote(bytes: number): void {
    this.sinceReading += bytes
    if (!this.full && this.free < this.options.reserveBytes) {
      this.set(true)
      void this.check()
    }
  }

  /** Refuses `bytes` when they do not fit: the guard turns full (it may not have been yet). */
  refuse(bytes: number): string {
    if (!this.full) {
      this.set(true)
      void this.check()
    }
    return this.problem(bytes)
  }

  /** Why a write of `bytes` is refused, in a producer's terms. */
  problem(bytes = 0): string {
    const s = this.state
    return (
      `disk nearly full at ${s.path}: ${formatBytes(Math.max(0, s.free))} free of ${formatBytes(s.total)}, ` +
      `${formatBytes(s.reserve)} must stay free (--disk-reserve)${bytes > 0 ? ` and this frame needs ${formatBytes(bytes)}` : ''}; ` +
      `rollouts are taken again once ${formatBytes(s.resume)} are free`
    )
  }

  /** Reads the filesystem now (readings do not overlap); resolves once the state is updated. */
  check(): Promise<void> {
    this.checking ??= this.options
      .statfs(this.options.path)
      .then(
        (reading) => {
          this.reading = reading
          this.sinceReading = 0
          if (this.full && reading.free >= this.options.resumeBytes) this.set(false)
          else if (!this.full && reading.free < this.options.reserveBytes) this.set(true)
        },
        // an unreadable filesystem keeps the last state; the next reading may succeed
        () => {},
      )
      .finally(() => (this.checking = undefined))
    return this.checking
  }

  private set(full: boolean): void {
    this.full = full
    this.changes.next(this.state)
  }

  close(): void {
    this.timer?.unsubscribe()
    this.changes.complete()
  }
}
