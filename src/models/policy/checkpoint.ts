/**
 * Policy checkpoints in LMDB: one versioned snapshot record per key (e.g. 'latest', 'step/00001200').
 * A put is durable once its promise resolves.
 */
import { open, type RootDatabase } from 'lmdb'
import { recordToSnapshot, snapshotToRecord, type PolicySnapshot } from './snapshot.js'

export class CheckpointStore {
  private constructor(private readonly db: RootDatabase<unknown, string>) {}

  /** Open (creating if needed) an LMDB environment at `path`. */
  static open(path: string): CheckpointStore {
    return new CheckpointStore(open<unknown, string>({ path }))
  }

  async save(key: string, snapshot: PolicySnapshot): Promise<void> {
    await this.db.put(key, snapshotToRecord(snapshot))
  }

  /** The snapshot at `key`, or undefined when there is none. */
  load(key: string): PolicySnapshot | undefined {
    const record = this.db.get(key)
    if (record === undefined) return undefined
    try {
      return recordToSnapshot(record)
    } catch (err) {
      throw new Error(`checkpoint '${key}': ${(err as Error).message}`)
    }
  }

  keys(): string[] {
    return Array.from(this.db.getKeys())
  }

  async close(): Promise<void> {
    await this.db.close()
  }
}
