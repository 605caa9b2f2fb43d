/**
 * The JetStream streams of a cluster run (runLayout.ts names them), with the settings every
 * part of the cluster relies on: file storage, limits retention (nothing is removed by being
 * read: the streams are the run's history), direct get allowed (any replica may answer a read
 * by sequence or subject), and a two-minute duplicate window (a `Nats-Msg-Id` resent within
 * it is stored once).
 */
import { RetentionPolicy, StorageType, type JetStreamManager, type StreamConfig } from '@nats-io/jetstream'
import type { RunLayout } from './runLayout.js'

/** The duplicate window, in nanoseconds (what JetStream takes): two minutes. */
export const DUPLICATE_WINDOW_NS = 120_000 * 1_000_000

/** The configuration of each stream of run `layout` with `replicas` copies (1, or 3 on a three-server cluster). */
export function runStreamConfigs(layout: RunLayout, replicas: number): (Partial<StreamConfig> & { name: string })[] {
  const { streams, subjects } = layout
  const common = {
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    allow_direct: true,
    duplicate_window: DUPLICATE_WINDOW_NS,
    num_replicas: replicas,
  }
  return [
    { name: streams.rollouts, subjects: [subjects.frames, subjects.partitions], ...common },
    { name: streams.groups, subjects: [subjects.allGroups], ...common },
    { name: streams.batches, subjects: [subjects.batches], ...common },
    { name: streams.acks, subjects: [subjects.acks], ...common },
  ]
}

/**
 * Creates the four streams of a run (ROLLOUTS, GROUPS, BATCHES, ACKS). Creating a stream that
 * exists with the same configuration is a no-op, so this may run on every start; one that
 * exists with a different configuration is an error naming the stream.
 *
 * @example
 * await createRunStreams(await jetstreamManager(nc), runLayout('exp7'), 3)
 */
export async function createRunStreams(jsm: JetStreamManager, layout: RunLayout, replicas: number): Promise<void> {
  for (const config of runStreamConfigs(layout, replicas)) {
    try {
      await jsm.streams.add(config)
    } catch (error) {
      throw new Error(`run ${layout.run}: cannot create stream ${config.name} (${replicas} replicas): ${(error as Error).message}`, { cause: error })
    }
  }
}
