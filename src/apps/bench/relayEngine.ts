/**
 * The network floor of the payload bench (`payload.ts`): an engine behind the real
 * `EngineServer` that stores nothing and computes nothing. Each frame's rollouts are
 * acknowledged as soon as they arrive, and every `batchSize` of them, in arrival order, go to
 * the trainer as a batch with their payloads spliced in as they arrived (the engine's own
 * record encoder, advantages 0). What is left of the durable path is the part no engine can
 * remove: the producer's and trainer's sockets, `ws`, the frame decode, the record and the
 * server's flow control. The durable path's rate as a share of this one's is what its engine
 * (the log, the id index, the math, the commits) costs.
 *
 * Not an engine to run: no durability, no dedup (a rollout resent is delivered again), no
 * validation beyond what the record needs (a string id). The bench's producer sends valid,
 * distinct rollouts once.
 */
import { Subject } from 'rxjs'
import type { Config } from '../../core/config.js'
import type { Rollout } from '../../core/types.js'
import type { CommittedBatch, Engine, EngineStats, IngestOutcome, SummaryStore } from '../../state/engine.js'
import type { Delivery } from '../../state/engineStore.js'
import { emptyIngestCounters, emptyPipelineCounters } from '../../state/engineStore.js'
import { encodeBatchForTrainer } from '../../state/outboxEncoder.js'
import { wireUnpackr } from '../../state/codec.js'
import type { OutboxBatch } from '../../state/engineStore.js'

/** No summaries, nothing saved: the relay keeps no history. */
const NO_STORE: SummaryStore = {
  summaries: () => [],
  auxiliary: () => undefined,
  saveAuxiliary: async () => {},
}

/**
 * An engine that relays rollouts to the trainer in batches of `batchSize`, in arrival order.
 *
 * @example
 * const engine = new RelayEngine(benchConfig, 128)
 * const server = new EngineServer({ engine })
 */
export class RelayEngine implements Engine {
  readonly committed = new Subject<CommittedBatch>()
  readonly failed = new Promise<unknown>(() => {})
  readonly error = undefined
  readonly policyVersion = undefined
  readonly store = NO_STORE
  private readonly pending: Rollout[] = []
  private readonly outbox = new Map<number, Delivery>()
  private step = 0
  private ingested = 0

  constructor(
    readonly config: Config,
    private readonly batchSize: number,
  ) {}

  async ingest(items: readonly unknown[]): Promise<IngestOutcome> {
    const acked: string[] = []
    for (const [index, item] of items.entries()) {
      const rollout = item as Rollout
      if (typeof rollout?.id !== 'string') throw new Error(`relay engine: item ${index} has no string id`)
      acked.push(rollout.id)
      this.pending.push(rollout)
    }
    this.ingested += acked.length
    while (this.pending.length >= this.batchSize) this.relay(this.pending.splice(0, this.batchSize))
    return { acked, rejected: [], duplicates: 0 }
  }

  private relay(rollouts: Rollout[]): void {
    const step = ++this.step
    const bytes = encodeBatchForTrainer({
      step,
      lambda: {},
      constraints: {},
      groups: [{ promptId: 'relay', rollouts, partial: false, ts: 0 }],
      advantages: new Float64Array(rollouts.length),
    })
    const delivery: Delivery = { step, bytes }
    this.outbox.set(step, delivery)
    this.committed.next({
      summary: {
        step,
        groups: 1,
        rollouts: rollouts.length,
        partialGroups: 0,
        lambda: {},
        constraints: {},
        objectives: {},
        fracZeroStd: {},
        advantageMean: 0,
        advantageStd: 0,
      },
      delivery,
      latencyMs: 0,
      get outbox() {
        return wireUnpackr.unpack(bytes) as OutboxBatch
      },
    })
  }

  stats(): EngineStats {
    return {
      step: this.step,
      lambda: {},
      ingest: { ...emptyIngestCounters(), ingested: this.ingested },
      pipeline: { ...emptyPipelineCounters(), batches: this.step, rolloutsInBatches: this.step * this.batchSize },
      pendingRollouts: this.pending.length,
      outbox: this.outbox.size,
      nextSeq: this.ingested,
    }
  }

  pendingDeliveries(): Delivery[] {
    return [...this.outbox.values()]
  }

  async acknowledge(step: number): Promise<boolean> {
    return this.outbox.delete(step)
  }

  async failureCause(): Promise<string | undefined> {
    return undefined
  }

  async close(): Promise<void> {
    this.committed.complete()
  }
}
