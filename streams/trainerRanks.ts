/**
 * The trainer side of the engine server: one connection per data-parallel rank
 * (`/batches?rank=r&world=W`, PROTOCOL.md "Ranks"). Each rank receives its shard of every
 * batch (src/state/shardBatch.ts) and acknowledges it; a step is acknowledged to the engine
 * once every rank of the world has acknowledged it, with the lowest policy version the ranks
 * reported (the conservative one for staleness). A single trainer is world 1, rank 0, and
 * receives whole batches exactly as before.
 *
 * Which ranks acknowledged a step is kept in memory only: after a restart of the server every
 * rank receives its shard of the unacknowledged steps again, and skips what it applied
 * (at-least-once delivery, exactly-once effect, as for a single trainer).
 */
import type { WebSocket } from 'ws'
import type { Delivery } from '../src/state/engineStore.js'
import { TrainerConnection, type BatchesContext } from './batchesEndpoint.js'
import { encodeFrame, errorFrame, type WireFormat } from './wire.js'

/** Most ranks a trainer may have (a bound on per-step bookkeeping, far above real data-parallel worlds). */
export const MAX_WORLD = 1024

/** Close code for a refused rank or world (after an error frame saying why). */
export const RANK_REFUSED = 4002

/** What the ranks need from the server around them. */
export interface TrainerRanksContext extends Omit<BatchesContext, 'acknowledge'> {
  /** The unacknowledged batches, in step order. */
  pendingDeliveries(): Delivery[]
  /** Every rank acknowledged `step`: acknowledge it to the engine. */
  acknowledge(step: number, policyVersion: number | undefined): void
}

/** A connection's place among the ranks, from its URL. */
export interface RankSpec {
  rank: number
  world: number
}

/** Reads `?rank=r&world=W` (defaults 0 and 1); a reason when they are not usable. */
export function parseRank(url: URL): RankSpec | string {
  const read = (name: string, fallback: number): number | string => {
    const raw = url.searchParams.get(name)
    if (raw === null) return fallback
    return /^\d{1,7}$/.test(raw) ? Number(raw) : `${name}: must be an integer >= 0, got ${JSON.stringify(raw.slice(0, 40))}`
  }
  const world = read('world', 1)
  const rank = read('rank', 0)
  if (typeof world === 'string') return world
  if (typeof rank === 'string') return rank
  if (world < 1 || world > MAX_WORLD) return `world: must be between 1 and ${MAX_WORLD}, got ${world}`
  if (rank >= world) return `rank: must be below world (${world}), got ${rank}`
  return { rank, world }
}

export class TrainerRanks {
  private world: number | undefined
  private readonly connections = new Map<number, TrainerConnection>()
  // steps some ranks (not yet all) acknowledged: which, and the versions they reported
  private readonly partial = new Map<number, { ranks: Set<number>; versions: number[] }>()
  // batches sent by connections that have closed
  private closedDelivered = 0

  constructor(private readonly context: TrainerRanksContext) {}

  /** Attaches a `/batches` connection as the rank its URL names, or refuses it (error frame, then close 4002). */
  connect(ws: WebSocket, format: WireFormat, url: URL): void {
    const spec = parseRank(url)
    const problem = typeof spec === 'string' ? spec : this.mismatch(spec)
    if (typeof spec === 'string' || problem !== undefined) {
      this.context.countError('bad-rank')
      ws.send(encodeFrame(errorFrame('bad-rank', problem!), format))
      ws.close(RANK_REFUSED, typeof spec === 'string' ? 'bad rank or world' : 'world differs from the connected ranks')
      return
    }
    const { rank, world } = spec
    // a new world (every rank of the old one gone): acknowledgements of its shards do not count towards the new one's
    if (world !== this.world) this.partial.clear()
    this.world = world
    const replaced = this.connections.get(rank)
    if (replaced !== undefined) this.retire(rank, replaced, true)
    const pending = this.context.pendingDeliveries().filter((batch) => this.partial.get(batch.step)?.ranks.has(rank) !== true)
    const context: BatchesContext = { ...this.context, acknowledge: (step, policyVersion) => this.acknowledge(rank, step, policyVersion) }
    const connection = new TrainerConnection(ws, format, context, pending, world > 1 ? spec : undefined)
    this.connections.set(rank, connection)
    ws.on('close', () => {
      if (this.connections.get(rank) === connection) this.retire(rank, connection)
    })
  }

  /** Takes a connection out of the ranks (closing it with 4001 when a newer one replaces it); what it sent so far is final (a closing socket sends nothing more). */
  private retire(rank: number, connection: TrainerConnection, replaced = false): void {
    this.connections.delete(rank)
    this.closedDelivered += connection.delivered
    if (replaced) connection.ws.close(4001, 'replaced by a newer trainer connection')
  }

  /** Why a rank cannot join the ranks connected now (undefined when it can). */
  private mismatch({ world }: RankSpec): string | undefined {
    if (this.connections.size === 0 || world === this.world) return undefined
    const ranks = [...this.connections.keys()].sort((a, b) => a - b).join(', ')
    return `world: ${world}, but the connected ranks (${ranks}) use world ${this.world}: every rank of a trainer must pass the same world`
  }

  private acknowledge(rank: number, step: number, policyVersion: number | undefined): void {
    let acks = this.partial.get(step)
    if (acks === undefined) this.partial.set(step, (acks = { ranks: new Set(), versions: [] }))
    acks.ranks.add(rank)
    if (policyVersion !== undefined) acks.versions.push(policyVersion)
    if (acks.ranks.size < this.world!) return
    this.partial.delete(step)
    this.context.acknowledge(step, acks.versions.length > 0 ? Math.min(...acks.versions) : undefined)
  }

  /** A newly durable batch, for every connected rank. */
  enqueue(batch: Delivery): void {
    for (const connection of this.connections.values()) connection.enqueue(batch)
  }

  /** Batches sent to ranks so far (redeliveries included). */
  delivered(): number {
    let sum = this.closedDelivered
    for (const connection of this.connections.values()) sum += connection.delivered
    return sum
  }

  /** The world of the ranks connected and which are (none: world undefined). */
  status(): { world: number | undefined; ranks: number[] } {
    if (this.connections.size === 0) return { world: undefined, ranks: [] }
    return { world: this.world, ranks: [...this.connections.keys()].sort((a, b) => a - b) }
  }
}
