/**
 * Where a cluster run lives in NATS JetStream (DESIGN §8, ARCHITECTURE.md §3): the names of
 * its streams, subjects and KV buckets, derived from the run's name, and which partition a
 * prompt belongs to. One definition, so every node, `replay --nats` and `cluster status`
 * read and write the same places.
 *
 * Streams of run `R`:
 * - `DS_R_ROLLOUTS`: `ds.R.frames` holds each accepted producer frame's bytes once (the
 *   payloads travel in it untouched, DESIGN §9); `ds.R.part.<p>` holds, per partition, which
 *   items of which frame are its rollouts, plus the watermark and policy-version records its
 *   owner appends. A partition's subject is the whole input of its owner, like the log of one
 *   node. (DESIGN §8 has one subject per partition carrying the rollouts; splitting the bytes
 *   from the index writes the payloads once even when a frame spans partitions.)
 * - `DS_R_GROUPS`: `ds.R.groups.<p>`, the groups (and drops) each partition's owner formed,
 *   in order; `ds.R.groups.wm`, the sequencer's watermarks.
 * - `DS_R_BATCHES`: `ds.R.batches`, one message per step: the engine's state.
 * - `DS_R_ACKS`: `ds.R.acks`, the trainer's acknowledgements and policy versions.
 * KV buckets: `DS_R_RUN` (the run's config), `DS_R_LEASES` (roles), `DS_R_NODES` (who is up).
 */

/** A run name: letters, digits, `_` and `-` (it becomes part of stream and subject names). */
export const RUN_NAME = /^[A-Za-z0-9_-]{1,64}$/

/** Most partitions a run may have. */
export const MAX_PARTITIONS = 1024

export interface RunLayout {
  run: string
  streams: { rollouts: string; groups: string; batches: string; acks: string }
  subjects: {
    frames: string
    /** The subject of partition `p`'s index. */
    partition(p: number): string
    /** Every partition's index (a wildcard). */
    partitions: string
    /** The groups of partition `p`. */
    groups(p: number): string
    /** The sequencer's watermarks in the GROUPS stream. */
    groupsWatermark: string
    /** Everything in the GROUPS stream (a wildcard). */
    allGroups: string
    batches: string
    acks: string
  }
  buckets: { run: string; leases: string; nodes: string }
  /** The lease key of partition `p`. */
  partitionLease(p: number): string
  /** The sequencer's lease key. */
  sequencerLease: string
}

/**
 * The names of run `run`; throws on a name NATS could not carry.
 *
 * @example
 * const layout = runLayout('exp7')
 * await js.publish(layout.subjects.partition(3), entry)
 */
export function runLayout(run: string): RunLayout {
  if (!RUN_NAME.test(run)) throw new Error(`run name ${JSON.stringify(run)}: use 1 to 64 letters, digits, "_" or "-" (it names NATS streams and subjects)`)
  const prefix = `DS_${run}`
  const subject = `ds.${run}`
  return {
    run,
    streams: { rollouts: `${prefix}_ROLLOUTS`, groups: `${prefix}_GROUPS`, batches: `${prefix}_BATCHES`, acks: `${prefix}_ACKS` },
    subjects: {
      frames: `${subject}.frames`,
      partition: (p) => `${subject}.part.${p}`,
      partitions: `${subject}.part.*`,
      groups: (p) => `${subject}.groups.${p}`,
      groupsWatermark: `${subject}.groups.wm`,
      allGroups: `${subject}.groups.*`,
      batches: `${subject}.batches`,
      acks: `${subject}.acks`,
    },
    buckets: { run: `${prefix}_RUN`, leases: `${prefix}_LEASES`, nodes: `${prefix}_NODES` },
    partitionLease: (p) => `partition.${p}`,
    sequencerLease: 'sequencer',
  }
}

/**
 * The partition of a prompt: FNV-1a (32 bits) of its UTF-8 bytes, modulo `partitions`. Fixed
 * for the life of a run (a prompt's rollouts must meet in one partition), and simple enough to
 * compute in any language. The UTF-8 bytes are those `TextEncoder` gives (a lone surrogate is
 * U+FFFD), hashed as they are produced: ingest asks this of every rollout, and encoding each
 * prompt into a new array first was ≈ 2% of a cluster node's time.
 *
 * @example
 * partitionOf('prompt-17', 8) // → the same number on every node, every time
 */
export function partitionOf(promptId: string, partitions: number): number {
  let hash = 0x811c9dc5
  const n = promptId.length
  for (let i = 0; i < n; i++) {
    let c = promptId.charCodeAt(i)
    if (c < 0x80) {
      hash = fnv1a(hash, c)
      continue
    }
    if (c < 0x800) {
      hash = fnv1a(fnv1a(hash, 0xc0 | (c >> 6)), 0x80 | (c & 0x3f))
      continue
    }
    if (c >= 0xd800 && c <= 0xdfff) {
      const low = i + 1 < n ? promptId.charCodeAt(i + 1) : 0
      if (c <= 0xdbff && low >= 0xdc00 && low <= 0xdfff) {
        // a surrogate pair: one code point of four bytes
        const point = 0x10000 + ((c - 0xd800) << 10) + (low - 0xdc00)
        hash = fnv1a(fnv1a(fnv1a(fnv1a(hash, 0xf0 | (point >> 18)), 0x80 | ((point >> 12) & 0x3f)), 0x80 | ((point >> 6) & 0x3f)), 0x80 | (point & 0x3f))
        i++
        continue
      }
      c = 0xfffd
    }
    hash = fnv1a(fnv1a(fnv1a(hash, 0xe0 | (c >> 12)), 0x80 | ((c >> 6) & 0x3f)), 0x80 | (c & 0x3f))
  }
  return hash % partitions
}

/** One byte into an FNV-1a (32-bit) hash. */
function fnv1a(hash: number, byte: number): number {
  return Math.imul(hash ^ byte, 0x01000193) >>> 0
}

/**
 * How long a pull of the run's consumers waits (ms). With nats.js's default (30 s, and idle
 * heartbeats every half of it) a role whose server was killed would sit idle for about 30 s
 * before resuming on another; the heartbeats are shorter still (below).
 */
export const CONSUME_EXPIRES_MS = 2000

/**
 * How often the server says a consumer's pull is still open while it has nothing to send
 * (`idle_heartbeat`; nats.js's default is half of `expires`). nats.js resets a consumer after
 * two missed heartbeats, and a pull the server no longer holds — seen under load here, now
 * and then, on a partition owner's consumer — otherwise leaves the reader waiting 2 s.
 */
export const CONSUME_HEARTBEAT_MS = 500
