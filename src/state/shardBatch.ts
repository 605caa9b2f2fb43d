/**
 * Data-parallel trainer ranks (DESIGN §11, PROTOCOL.md "Ranks"): each of W ranks receives one
 * shard of every batch. The shard is cut out of the batch's MessagePack bytes — each rollout's
 * bytes (payload included) are copied as they are, never decoded — and the frame gains a
 * `shard` map saying which rollouts of the whole batch it holds.
 */
import { wirePackr } from './codec.js'
import { skipValue } from './rawPayload.js'

/** What a shard frame says about itself. */
export interface ShardInfo {
  rank: number
  world: number
  /** Rollouts in the whole batch (a rank divides its loss sum by this, so the all-reduced sum is the batch mean). */
  rollouts: number
  /** Positions in the whole batch of this shard's rollouts, ascending (the shard's order). */
  indices: number[]
}

/**
 * Which rollouts go to which rank: `weights[i]` is rollout i's size (its bytes). Deterministic;
 * every rollout in exactly one shard; shard counts differ by at most one (the first `n mod W`
 * ranks take one more); within that, sizes are balanced greedily, largest first, each to the
 * rank with the fewest bytes so far that still has room (ties to the lower rank, and equal
 * sizes keep their order, so with equal sizes rollout i goes to rank i mod W). Returns the
 * indices of each rank's shard, ascending.
 */
export function planShards(weights: readonly number[], world: number): number[][] {
  if (!Number.isSafeInteger(world) || world < 1) throw new RangeError(`world must be an integer >= 1, got ${world}`)
  const n = weights.length
  const room = Array.from({ length: world }, (_, r) => Math.floor(n / world) + (r < n % world ? 1 : 0))
  const load = new Array<number>(world).fill(0)
  const shards: number[][] = Array.from({ length: world }, () => [])
  const order = weights.map((_, i) => i).sort((a, b) => weights[b] - weights[a] || a - b)
  for (const i of order) {
    let best = -1
    for (let r = 0; r < world; r++) if (room[r] > 0 && (best < 0 || load[r] < load[best])) best = r
    room[best]--
    load[best] += weights[i]
    shards[best].push(i)
  }
  for (const shard of shards) shard.sort((a, b) => a - b)
  return shards
}

/** Reads a MessagePack map or array header at `pos`: its element count and where the elements start. */
function readHeader(buf: Uint8Array, pos: number, fix: number, x16: number, x32: number): { count: number; at: number } {
  const byte = buf[pos]
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength)
  if ((byte & 0xf0) === fix) return { count: byte & 0x0f, at: pos + 1 }
  if (byte === x16) return { count: view.getUint16(pos + 1), at: pos + 3 }
  if (byte === x32) return { count: view.getUint32(pos + 1), at: pos + 5 }
  throw new Error(`not a batch frame: expected a MessagePack ${fix === 0x80 ? 'map' : 'array'} at byte ${pos}, found 0x${byte.toString(16)}`)
}

const mapHeader = (buf: Uint8Array, pos: number) => readHeader(buf, pos, 0x80, 0xde, 0xdf)
const arrayHeader = (buf: Uint8Array, pos: number) => readHeader(buf, pos, 0x90, 0xdc, 0xdd)

function writeHeader(count: number, fix: number, x16: number, x32: number): Buffer {
  if (count < 16) return Buffer.from([fix | count])
  const out = Buffer.alloc(count < 65536 ? 3 : 5)
  out[0] = count < 65536 ? x16 : x32
  if (count < 65536) out.writeUInt16BE(count, 1)
  else out.writeUInt32BE(count, 1)
  return out
}

const ROLLOUTS_KEY = Buffer.from([0xa8, ...Buffer.from('rollouts')])

/** Where the parts of a batch frame lie: its other entries, and each rollout's span. */
export interface BatchLayout {
  /** The map's entries other than `rollouts`, as bytes (key and value each). */
  entries: Uint8Array[]
  /** [start, end) of each rollout in the frame. */
  rollouts: [number, number][]
}

/** Finds the entries of a batch frame (a MessagePack map with a `rollouts` array) without decoding its values. */
export function batchLayout(bytes: Uint8Array): BatchLayout {
  const map = mapHeader(bytes, 0)
  const entries: Uint8Array[] = []
  let rollouts: [number, number][] | undefined
  let pos = map.at
  for (let k = 0; k < map.count; k++) {
    const keyEnd = skipValue(bytes, pos)
    const isRollouts = keyEnd - pos === ROLLOUTS_KEY.length && Buffer.from(bytes.buffer, bytes.byteOffset + pos, keyEnd - pos).equals(ROLLOUTS_KEY)
    if (isRollouts) {
      const array = arrayHeader(bytes, keyEnd)
      rollouts = []
      let at = array.at
      for (let i = 0; i < array.count; i++) {
        const end = skipValue(bytes, at)
        rollouts.push([at, end])
        at = end
      }
      pos = at
    } else {
      const end = skipValue(bytes, keyEnd)
      entries.push(bytes.subarray(pos, end))
      pos = end
    }
  }
  if (rollouts === undefined) throw new Error('not a batch frame: no "rollouts" array')
  return { entries, rollouts }
}

/**
 * The shard of a batch frame for `rank` of `world`: the same map with only that shard's
 * rollouts (their bytes copied untouched) and a `shard` entry ({@link ShardInfo}).
 *
 * @example
 * const frames = [0, 1].map((rank) => shardBatch(delivery.bytes, rank, 2))
 */
export function shardBatch(bytes: Uint8Array, rank: number, world: number, layout: BatchLayout = batchLayout(bytes)): Uint8Array {
  const indices = planShards(
    layout.rollouts.map(([start, end]) => end - start),
    world,
  )[rank]
  if (indices === undefined) throw new RangeError(`rank must be an integer in [0, ${world}), got ${rank}`)
  const shard: ShardInfo = { rank, world, rollouts: layout.rollouts.length, indices }
  const parts: Uint8Array[] = [writeHeader(layout.entries.length + 2, 0x80, 0xde, 0xdf), ...layout.entries]
  parts.push(wirePackr.pack('shard'), wirePackr.pack(shard), ROLLOUTS_KEY, writeHeader(indices.length, 0x90, 0xdc, 0xdd))
  for (const i of indices) {
    const [start, end] = layout.rollouts[i]
    parts.push(bytes.subarray(start, end))
  }
  return Buffer.concat(parts)
}
