/**
 * The payload bench's rollouts (`payload.ts`): a payload is what an LLM producer sends,
 * `{ tokens, logprobs }`, each a MessagePack bin of half the payload bytes (token ids and
 * log-probs as raw bytes). Deterministic, so that every process of the bench builds the same.
 */
import { Packr } from 'msgpackr'
import { syntheticRollouts } from './synthetic.js'

// the payloads' bytes are windows into one pool at an offset that changes with the rollout
const POOL_OFFSETS = 256

/** Deterministic pseudo-random bytes the payloads are cut from (producer and trainer build the same). */
export function payloadPool(payloadBytes: number): Buffer {
  const pool = Buffer.allocUnsafe(payloadBytes + POOL_OFFSETS)
  let state = 0x9e3779b9
  for (let i = 0; i < pool.length; i++) {
    state ^= state << 13
    state ^= state >>> 17
    state ^= state << 5
    pool[i] = state & 0xff
  }
  return pool
}

/** Rollout `index`'s payload: `tokens` of ⌊B/2⌋ bytes and `logprobs` of the rest, views into `pool`. */
export function rolloutPayload(pool: Buffer, index: number, payloadBytes: number): { tokens: Buffer; logprobs: Buffer } {
  const half = payloadBytes >> 1
  const tokensAt = index % POOL_OFFSETS
  const logprobsAt = (index * 7) % POOL_OFFSETS
  return { tokens: pool.subarray(tokensAt, tokensAt + half), logprobs: pool.subarray(logprobsAt, logprobsAt + payloadBytes - half) }
}

/**
 * The payload bench's frames: the synthetic FGRPO rollouts of the other benches (ids `r<index>`,
 * no `ts`) with a payload of `payloadBytes`, `frame` per `rollouts` frame, as plain MessagePack
 * (no msgpackr records, as any MessagePack library writes it).
 */
export function payloadFrames(rollouts: number, payloadBytes: number, frame: number): Buffer[] {
  const packr = new Packr({ useRecords: false })
  const pool = payloadPool(payloadBytes)
  const items = syntheticRollouts(rollouts).map(({ ts: _ts, ...rollout }, i) => ({ ...rollout, payload: rolloutPayload(pool, i, payloadBytes) }))
  const frames: Buffer[] = []
  for (let i = 0; i < items.length; i += frame) frames.push(packr.pack({ type: 'rollouts', rollouts: items.slice(i, i + frame) }))
  return frames
}
