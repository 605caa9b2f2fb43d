/**
 * Disk watermarks (src/state/diskGuard.ts): a guard over a fake filesystem whose free space
 * the test sets, read on a virtual clock. Full below the reserve, clear again only once a
 * reading shows the resume mark (hysteresis); what is written between readings counts.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { defaultDiskReserve, DiskGuard, formatBytes, parseBytes, systemStatFs, type DiskSpace, type DiskState } from '../../src/state/diskGuard.js'
import { VirtualClock } from '../support/virtualTime.js'

const MiB = 1024 ** 2
const GiB = 1024 ** 3

/** A filesystem whose free space the test sets; counts its readings; `hold()` makes the next reading wait. */
function fakeDisk(free: number, total = 100 * MiB) {
  const disk = {
    free,
    total,
    reads: 0,
    paths: [] as string[],
    fail: false,
    held: undefined as (() => void) | undefined,
    /** The next reading waits until the returned function is called. */
    hold(): () => void {
      let release!: () => void
      const gate = new Promise<void>((resolve) => (release = resolve))
      disk.held = release
      const original = disk.statfs
      disk.statfs = async (path) => {
        disk.statfs = original
        await gate
        return original(path)
      }
      return release
    },
    statfs: async (path: string): Promise<DiskSpace> => {
      disk.reads++
      disk.paths.push(path)
      if (disk.fail) throw new Error('EIO: i/o error, statfs')
      return { free: disk.free, total: disk.total }
    },
  }
  return disk
}

/** Lets the fake filesystem's readings (promises that are already settled) be applied. */
const readingsDone = () => new Promise<void>((resolve) => setImmediate(resolve))

async function openGuard(disk: ReturnType<typeof fakeDisk>, reserveBytes: number | 'auto', resumeBytes?: number) {
  const clock = new VirtualClock()
  const guard = await DiskGuard.open({ path: '/data', reserveBytes, resumeBytes, intervalMs: 1000, scheduler: clock, statfs: (path) => disk.statfs(path) })
  const changes: DiskState[] = []
  guard.changes.subscribe((state) => changes.push(state))
  return { guard, clock, changes }
}

t.test('open: one reading, the reserve given or "auto", the resume mark twice the reserve by default', async (t) => {
  const disk = fakeDisk(50 * MiB)
  const { guard } = await openGuard(disk, 10 * MiB)
  t.equal(disk.reads, 1, 'read once at open')
  t.same(disk.paths, ['/data'])
  t.same(guard.state, { path: '/data', full: false, free: 50 * MiB, total: 100 * MiB, reserve: 10 * MiB, resume: 20 * MiB })
  t.equal(guard.isFull, false)
  guard.close()

  const big = fakeDisk(500 * GiB, 1000 * GiB)
  const auto = (await openGuard(big, 'auto')).guard
  t.equal(auto.state.reserve, 4 * GiB, '"auto": 2% of 1000 GiB is above the 4 GiB cap')
  t.equal(auto.state.resume, 8 * GiB)
  auto.close()

  const explicit = (await openGuard(fakeDisk(50 * MiB), 10 * MiB, 15 * MiB)).guard
  t.equal(explicit.state.resume, 15 * MiB, 'a resume mark given')
  explicit.close()

  const low = (await openGuard(fakeDisk(5 * MiB), 10 * MiB)).guard
  t.equal(low.isFull, true, 'a disk already below the reserve is full from the start')
  low.close()

  const off = (await openGuard(fakeDisk(0), 0)).guard
  t.equal(off.isFull, false, 'a reserve of 0: never full')
  t.ok(off.admits(0))
  off.close()
})

t.test('open refuses a negative or missing reserve and a resume mark below the reserve', async (t) => {
  const statfs = fakeDisk(50 * MiB).statfs
  await t.rejects(DiskGuard.open({ path: '/data', reserveBytes: -1, statfs }), new RangeError('disk reserve must be >= 0 bytes, got -1'))
  await t.rejects(DiskGuard.open({ path: '/data', reserveBytes: NaN, statfs }), new RangeError('disk reserve must be >= 0 bytes, got NaN'))
  await t.rejects(
    DiskGuard.open({ path: '/data', reserveBytes: 1000, resumeBytes: 999, statfs }),
    new RangeError('disk resume mark (999 bytes) must be at least the reserve (1000 bytes)'),
  )
  await t.rejects(DiskGuard.open({ path: '/data', reserveBytes: 'auto', resumeBytes: 1, statfs }), /must be at least the reserve \(268435456 bytes\)/)
})

t.test('admits: only what leaves the reserve free, and nothing while full', async (t) => {
  const disk = fakeDisk(15 * MiB)
  const { guard } = await openGuard(disk, 10 * MiB)
  t.ok(guard.admits(5 * MiB), 'exactly down to the reserve')
  t.notOk(guard.admits(5 * MiB + 1), 'one byte past it')
  guard.wrote(5 * MiB + 1)
  t.ok(guard.isFull)
  t.notOk(guard.admits(0), 'nothing while full')
  guard.close()
})

t.test('wrote: counted against the last reading; crossing the reserve makes the guard full at once and reads again', async (t) => {
  const disk = fakeDisk(30 * MiB)
  const { guard, changes } = await openGuard(disk, 10 * MiB)
  guard.wrote(5 * MiB)
  t.equal(guard.state.free, 25 * MiB, 'free: the reading less what was written since')
  t.equal(disk.reads, 1, 'no reading while above the reserve')
  t.same(changes, [])
  guard.wrote(16 * MiB)
  t.equal(guard.isFull, true, 'full at once, before any reading')
  t.equal(changes.length, 1)
  t.match(changes[0], { full: true, free: 9 * MiB })
  t.equal(disk.reads, 2, 'a fresh reading was asked for')
  await guard.check()
  // the disk did not really fill (the fake still says 30 MiB): the reading counts from zero again, but
  // a full guard clears only at the resume mark
  t.equal(guard.state.free, 30 * MiB)
  t.equal(guard.isFull, false, '30 MiB free is above the 20 MiB resume mark: clear')
  t.same(
    changes.map((c) => c.full),
    [true, false],
  )
  guard.wrote(1)
  t.equal(guard.state.free, 30 * MiB - 1, 'counted from the new reading')
  t.equal(disk.reads, 2, 'above the reserve: no reading')
  guard.close()
})

t.test('a full guard does not read again on every write', async (t) => {
  const disk = fakeDisk(5 * MiB)
  const { guard, changes } = await openGuard(disk, 10 * MiB)
  guard.wrote(MiB)
  t.equal(disk.reads, 1)
  t.same(changes, [])
  t.equal(guard.state.free, 4 * MiB)
  guard.close()
})

t.test('refuse: turns the guard full (once) and says why, in a producer’s terms', async (t) => {
  const disk = fakeDisk(12 * MiB)
  const { guard, changes } = await openGuard(disk, 10 * MiB)
  const reason = guard.refuse(3 * MiB)
  t.equal(
    reason,
    'disk nearly full at /data: 12.0 MiB free of 100.0 MiB, 10.0 MiB must stay free (--disk-reserve) and this frame needs 3.0 MiB; rollouts are taken again once 20.0 MiB are free',
  )
  t.equal(guard.isFull, true)
  t.equal(changes.length, 1)
  t.equal(disk.reads, 2, 'a fresh reading was asked for')
  await guard.check()
  t.equal(guard.isFull, true, '12 MiB is below the resume mark: still full')
  guard.refuse(MiB)
  t.equal(changes.length, 1, 'already full: no new change')
  t.equal(disk.reads, 2, 'and no new reading')
  t.equal(
    guard.problem(),
    'disk nearly full at /data: 12.0 MiB free of 100.0 MiB, 10.0 MiB must stay free (--disk-reserve); rollouts are taken again once 20.0 MiB are free',
    'without a frame size',
  )
  guard.wrote(20 * MiB)
  t.match(guard.problem(), /^disk nearly full at \/data: 0 B free of/, 'an estimate below zero is shown as 0')
  guard.close()
})

t.test('check: full below the reserve, clear only at the resume mark (no flapping between the two)', async (t) => {
  const disk = fakeDisk(50 * MiB)
  const { guard, changes } = await openGuard(disk, 10 * MiB)
  disk.free = 9 * MiB
  await guard.check()
  t.equal(guard.isFull, true, 'below the reserve: full')
  disk.free = 15 * MiB
  await guard.check()
  t.equal(guard.isFull, true, 'between the reserve and the resume mark: still full')
  t.equal(guard.state.free, 15 * MiB)
  disk.free = 20 * MiB
  await guard.check()
  t.equal(guard.isFull, false, 'at the resume mark: clear')
  disk.free = 15 * MiB
  await guard.check()
  t.equal(guard.isFull, false, 'between the marks while clear: stays clear')
  t.same(
    changes.map((c) => [c.full, c.free]),
    [
      [true, 9 * MiB],
      [false, 20 * MiB],
    ],
    'one change each way',
  )
  guard.close()
})

t.test('a reading that fails keeps the last state and count; readings do not overlap', async (t) => {
  const disk = fakeDisk(50 * MiB)
  const { guard, changes } = await openGuard(disk, 10 * MiB)
  disk.fail = true
  guard.wrote(45 * MiB)
  t.equal(guard.isFull, true)
  t.equal(disk.reads, 2, 'a reading was asked for')
  await guard.check()
  t.equal(guard.isFull, true, 'an unreadable filesystem: still full')
  t.equal(guard.state.free, 5 * MiB, 'the estimate is kept')
  disk.fail = false

  const release = disk.hold()
  const first = guard.check()
  const second = guard.check()
  t.equal(second, first, 'a reading under way is shared')
  release()
  await first
  t.equal(guard.isFull, false)
  const third = guard.check()
  t.not(third, first, 'a new reading once the last one is done')
  await third
  t.equal(changes.length, 2)
  guard.close()
})

t.test('the filesystem is read on the scheduler, every interval, until close', async (t) => {
  const disk = fakeDisk(50 * MiB)
  const { guard, clock, changes } = await openGuard(disk, 10 * MiB)
  let completed = false
  guard.changes.subscribe({ complete: () => (completed = true) })
  clock.advance(999)
  t.equal(disk.reads, 1, 'nothing before the interval')
  clock.advance(1)
  t.equal(disk.reads, 2, 'read at 1000 ms')
  await readingsDone()
  disk.free = MiB
  clock.advance(1000)
  t.equal(disk.reads, 3, 'and at 2000 ms')
  await readingsDone()
  t.equal(guard.isFull, true, 'the timer’s reading made it full')
  t.same(
    changes.map((c) => c.full),
    [true],
  )
  for (let k = 0; k < 3; k++) {
    clock.advance(1000)
    await readingsDone()
  }
  t.equal(disk.reads, 6, 'every interval')
  guard.close()
  t.ok(completed, 'changes complete on close')
  clock.advance(10_000)
  t.equal(disk.reads, 6, 'no reading after close')
})

t.test('defaults: the system statfs, a 1 s interval on the async scheduler', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dualstream-disk-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const guard = await DiskGuard.open({ path: dir, reserveBytes: 0 })
  t.ok(guard.state.total > 0, 'a real filesystem was read')
  t.equal(guard.state.resume, 0)
  await guard.check()
  t.equal(guard.isFull, false)
  guard.close()
})

t.test('systemStatFs reads a real folder’s filesystem', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dualstream-disk-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const space = await systemStatFs(dir)
  t.ok(space.total > 0)
  t.ok(space.free >= 0 && space.free <= space.total)
  await t.rejects(systemStatFs(join(dir, 'missing')), { code: 'ENOENT' })
})

t.test('defaultDiskReserve: 256 MiB, 2% of a larger disk, at most 4 GiB', (t) => {
  t.equal(defaultDiskReserve(0), 256 * MiB)
  t.equal(defaultDiskReserve(1 * GiB), 256 * MiB)
  t.equal(defaultDiskReserve(50 * GiB), Math.floor(50 * GiB * 0.02))
  t.equal(defaultDiskReserve(10_000 * GiB), 4 * GiB)
  t.end()
})

t.test('formatBytes: B, KiB … TiB', (t) => {
  t.equal(formatBytes(0), '0 B')
  t.equal(formatBytes(512), '512 B')
  t.equal(formatBytes(1023), '1023 B')
  t.equal(formatBytes(1024), '1.0 KiB')
  t.equal(formatBytes(1536), '1.5 KiB')
  t.equal(formatBytes(320 * MiB), '320.0 MiB')
  t.equal(formatBytes(1.5 * GiB), '1.5 GiB')
  t.equal(formatBytes(2 * 1024 ** 4), '2.0 TiB')
  t.equal(formatBytes(2048 * 1024 ** 4), '2048.0 TiB', 'TiB is the largest unit')
  t.equal(formatBytes(-2048), '-2.0 KiB')
  t.end()
})

t.test('parseBytes: bytes, K/M/G/T suffixes (powers of 1024), KiB and MB forms; anything else is refused', (t) => {
  t.equal(parseBytes('0'), 0)
  t.equal(parseBytes('512'), 512)
  t.equal(parseBytes('512B'), 512)
  t.equal(parseBytes('1k'), 1024)
  t.equal(parseBytes('1.5K'), 1536)
  t.equal(parseBytes('512M'), 512 * MiB)
  t.equal(parseBytes('2G'), 2 * GiB)
  t.equal(parseBytes('1t'), 1024 ** 4)
  t.equal(parseBytes('4 KiB'), 4096)
  t.equal(parseBytes('10MB'), 10 * MiB)
  t.equal(parseBytes(' 3 gib '), 3 * GiB)
  t.equal(parseBytes('0.1'), 0, 'rounded to whole bytes')
  for (const bad of ['', 'lots', '-1', '1X', '1 KBB', '1e6', '.5M', 'M'])
    t.throws(() => parseBytes(bad), new RangeError(`not a size: ${JSON.stringify(bad)} (bytes, or a number with K, M, G or T)`), bad)
  t.end()
})
