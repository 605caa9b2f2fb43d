/**
 * ws (un)masks WebSocket frames with bufferutil when it loads: a prebuilt native addon for
 * linux-x64 and others (node-gyp-build picks it; no compiler, no install script needed). Without
 * it ws masks in JavaScript, ≈ 4 ns a byte here: a third of serve's CPU at 16 KiB payloads. If the
 * addon stopped loading, bufferutil would quietly fall back to its JavaScript loop; this says so.
 */
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import t from 'tap'

const require = createRequire(import.meta.url)

t.test("bufferutil loads its native addon, which ws's buffer-util uses", async (t) => {
  const bufferutil = require('bufferutil') as { mask: (...args: unknown[]) => void; unmask: (buffer: Buffer, mask: Buffer) => void }
  t.match(Function.prototype.toString.call(bufferutil.unmask), /\[native code\]/, 'native unmask, not fallback.js')
  const data = Buffer.from('dualstream payload bytes, longer than ws’s 32-byte threshold for the addon')
  const masked = Buffer.from(data)
  const mask = Buffer.from([0x12, 0x34, 0x56, 0x78])
  bufferutil.unmask(masked, mask)
  t.same(
    masked,
    data.map((byte, i) => byte ^ mask[i & 3]),
    'XOR with the mask, byte by byte',
  )
  // not in ws's exports map: by its path
  const wsBufferUtil = require(join(dirname(require.resolve('ws')), 'lib', 'buffer-util.js')) as { unmask: (buffer: Buffer, mask: Buffer) => void }
  t.match(wsBufferUtil.unmask.toString(), /bufferUtil\.unmask\(/, "ws's unmask calls bufferutil's for all but short buffers")
})
