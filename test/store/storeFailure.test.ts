/**
 * The line an operator reads after a failed write (src/state/storeFailure.ts): the error with
 * its errno name and number, lmdb-js's `commitError` cause when it comes (waited for a while
 * only), the data folder and its free space, and the disk reserve when one is watched.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { describeStoreFailure, errnoName } from '../../src/state/storeFailure.js'
import type { DiskState } from '../../src/state/diskGuard.js'

const dir = mkdtempSync(join(tmpdir(), 'dualstream-failure-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))

/** "<free> free of <total>" as statfs reports the folder's filesystem. */
const space = /; data folder .+: \d+(\.\d)? (B|KiB|MiB|GiB|TiB) free of \d+(\.\d)? (B|KiB|MiB|GiB|TiB)$/

/** lmdb-js's way of failing a commit: a generic message, the cause in a promise of its own. */
function commitFailure(commitError: Promise<unknown>): Error {
  // handled as the engine does (it reads the cause later)
  commitError.catch(() => {})
  return Object.assign(new Error('Commit failed (see commitError for details)'), { commitError })
}

const lmdbError = (message: string, code: number) => Object.assign(new Error(message), { code })
const nodeError = (message: string, code: string, errno: number) => Object.assign(new Error(message), { code, errno })

t.test('errnoName names errno numbers of this platform', (t) => {
  t.equal(errnoName(28), 'ENOSPC')
  t.equal(errnoName(5), 'EIO')
  t.equal(errnoName(2), 'ENOENT')
  t.equal(errnoName(-1), undefined)
  t.equal(errnoName(123_456), undefined)
  t.end()
})

t.test('a plain error: its message, the data folder and its free space', async (t) => {
  const text = await describeStoreFailure(new Error('MDB_MAP_FULL: mapsize reached'), dir)
  t.ok(text.startsWith(`MDB_MAP_FULL: mapsize reached; data folder ${dir}: `), text)
  t.match(text, space)
  t.match(await describeStoreFailure('not an error', dir), /^not an error; data folder /, 'a thrown non-error, as a string')
  t.match(await describeStoreFailure(undefined, dir), /^undefined; data folder /)
})

t.test('errno details: a Node error (code name, negative errno) and an lmdb-js one (the errno number in code)', async (t) => {
  t.match(
    await describeStoreFailure(nodeError("ENOSPC: no space left on device, write '/data/data.mdb'", 'ENOSPC', -28), dir),
    /^ENOSPC: no space left on device, write '\/data\/data\.mdb' \(errno 28\); data folder /,
    'the name already in the message is not repeated',
  )
  t.match(await describeStoreFailure(nodeError('no space left', 'ENOSPC', -28), dir), /^no space left \(ENOSPC, errno 28\); /)
  t.match(await describeStoreFailure(lmdbError('Input/output error', 5), dir), /^Input\/output error \(EIO, errno 5\); /)
  t.match(await describeStoreFailure(lmdbError('MDB_WHATEVER', 123_456), dir), /^MDB_WHATEVER \(errno 123456\); /, 'an unknown number')
  t.match(await describeStoreFailure(Object.assign(new Error('busy'), { code: 'EBUSY' }), dir), /^busy \(EBUSY\); /, 'a name without a number')
  t.match(await describeStoreFailure(Object.assign(new Error('odd'), { code: {}, errno: 'x' }), dir), /^odd; /, 'fields of other types are ignored')
})

t.test('lmdb-js commit failures: the cause from commitError is appended when it comes', async (t) => {
  const rejected = commitFailure(Promise.reject(lmdbError('No space left on device', 28)))
  t.match(
    await describeStoreFailure(rejected, dir),
    /^Commit failed \(see commitError for details\): No space left on device \(ENOSPC, errno 28\); data folder /,
  )

  const resolved = commitFailure(Promise.resolve('done'))
  t.match(await describeStoreFailure(resolved, dir), /^Commit failed \(see commitError for details\); data folder /, 'a cause that resolves says nothing')

  const notAPromise = Object.assign(new Error('Commit failed (see commitError for details)'), { commitError: 'EIO' })
  t.match(
    await describeStoreFailure(notAPromise, dir),
    /^Commit failed \(see commitError for details\); /,
    'a commitError that is not a promise is not waited for',
  )
})

t.test('a commitError that never settles is waited for a while only', async (t) => {
  const never = commitFailure(new Promise(() => {}))
  const started = Date.now()
  t.match(await describeStoreFailure(never, dir, undefined, 20), /^Commit failed \(see commitError for details\); data folder /)
  t.ok(Date.now() - started < 900, 'the wait given, not the default second')
})

t.test('a folder whose filesystem cannot be read: "free space unknown" with the reason', async (t) => {
  const missing = join(dir, 'missing')
  t.equal(
    await describeStoreFailure(new Error('EIO'), missing),
    `EIO; data folder ${missing}: free space unknown (ENOENT: no such file or directory, statfs '${missing}' (errno 2))`,
  )
})

t.test('with the disk watermarks: the reserve', async (t) => {
  const disk: DiskState = { path: dir, full: true, free: 0, total: 24 * 1024 ** 2, reserve: 256 * 1024 ** 2, resume: 512 * 1024 ** 2 }
  const text = await describeStoreFailure(lmdbError('Input/output error', 5), dir, disk)
  t.match(text, /^Input\/output error \(EIO, errno 5\); data folder .+ free of .+, reserve 256\.0 MiB$/)
})
