/**
 * The engine's dedup index ("counted at most once, ever"): every logged id's seeded 64-bit
 * hash in an in-memory table (`idHashes.ts`), the hashes stored beside each log entry. A new
 * hash proves an id new; a known one is confirmed against the ids it could stand for — the
 * transaction's own, those of entries on their way to disk, and the log's — so a hash
 * collision never drops a rollout.
 */
import { forEachHash, type IdHasher, IdHashTable, StoredHashes } from './idHashes.js'

/** What the index reads of the store to confirm a known hash. */
export interface LoggedIds {
  /** The stored hash blobs by entry seq, newest first, as the disk has them now. */
  hashesNewestFirst(): Iterator<{ key: number; value: Uint8Array }>
  /** The ids of the rollouts of the log entry at `seq`, in seq order. */
  idsOf(seq: number): string[]
}

/** How many decoded log entries are kept (a retried frame hits the same few). */
const DECODED_ENTRIES = 4

export class IdIndex {
  private readonly table: IdHashTable
  // ids of entries handed to LMDB and not yet on disk, by entry seq: reads cannot see them yet
  private readonly unflushed = new Map<number, string[]>()
  // ids of recently read log entries, by entry seq (entries are never rewritten)
  private readonly decoded = new Map<number, string[]>()

  constructor(
    private readonly hasher: IdHasher,
    private readonly logged: LoggedIds,
    capacity?: number,
  ) {
    this.table = new IdHashTable(capacity)
  }

  /** Adds the hashes of a stored blob (at open). */
  load(blob: Uint8Array): void {
    forEachHash(blob, (_, hi, lo) => this.table.add(hi, lo))
  }

  /** Adds ids that were logged without their hashes (a store from before the index); returns the hashes to store. */
  addLogged(ids: readonly string[]): number[] {
    const hashes: number[] = []
    for (const id of ids) {
      this.hasher.hash(id)
      this.table.add(this.hasher.hi, this.hasher.lo)
      hashes.push(this.hasher.hi, this.hasher.lo)
    }
    return hashes
  }

  /** Starts the claims of one transaction. */
  begin(): IdClaims {
    return new IdClaims()
  }

  /** Claims an id for the transaction: false when it was already logged, on its way to disk, or claimed in it. */
  claim(id: string, claims: IdClaims): boolean {
    this.hasher.hash(id)
    const { hi, lo } = this.hasher
    const isNew = this.table.add(hi, lo) || !this.seenBefore(id, hi, lo, claims)
    if (isNew) claims.add(id, hi, lo)
    return isNew
  }

  /** An entry's ids were handed to LMDB: they count as logged until `written`. */
  writing(seq: number, ids: string[]): void {
    this.unflushed.set(seq, ids)
  }

  /** The entry is on disk (or its write failed): reads answer for it now. */
  written(seq: number): void {
    this.unflushed.delete(seq)
  }

  private seenBefore(id: string, hi: number, lo: number, claims: IdClaims): boolean {
    if (claims.has(id)) return true
    for (const ids of this.unflushed.values()) if (ids.includes(id)) return true
    claims.logged ??= new LoggedHashes(this.logged.hashesNewestFirst(), (seq) => this.idsOf(seq))
    return claims.logged.has(id, hi, lo)
  }

  private idsOf(seq: number): string[] {
    let ids = this.decoded.get(seq)
    if (ids !== undefined) return ids
    ids = this.logged.idsOf(seq)
    if (this.decoded.size >= DECODED_ENTRIES) this.decoded.delete(this.decoded.keys().next().value!)
    this.decoded.set(seq, ids)
    return ids
  }
}

/** The ids one transaction claimed: in order, with their hashes, until appended. */
export class IdClaims {
  private ids: string[] = []
  private hashes: number[] = []
  // the claims already appended, by entry
  private readonly appended: string[][] = []
  // every id claimed in this transaction, once one of them needed checking
  private all: Set<string> | undefined
  /** The log's hashes, read once a known hash needs checking. */
  logged: LoggedHashes | undefined

  add(id: string, hi: number, lo: number): void {
    this.ids.push(id)
    this.hashes.push(hi, lo)
    this.all?.add(id)
  }

  has(id: string): boolean {
    this.all ??= new Set([...this.appended.flat(), ...this.ids])
    return this.all.has(id)
  }

  /** Claims not yet appended. */
  get pending(): number {
    return this.ids.length
  }

  /** The claims since the previous take: the rollouts of the entry being appended. */
  take(): { ids: string[]; hashes: number[] } {
    const taken = { ids: this.ids, hashes: this.hashes }
    this.appended.push(this.ids)
    this.ids = []
    this.hashes = []
    return taken
  }

  /** Ends the transaction's reading of the log. */
  close(): void {
    this.logged?.close()
  }
}

/** An entry's stored hashes, searched from where the last id was found in it. */
interface ReadEntry {
  key: number
  hashes: StoredHashes
  // a resent frame repeats the entry's order: the next id is most likely just after the last one found
  cursor: number
}

/**
 * The logged hashes, read newest first and only as far as needed. A resent frame is usually
 * a whole earlier frame, so its ids sit in one entry, in order: entries where an id was
 * confirmed are searched first (from just after it), then those already read, then older ones.
 */
class LoggedHashes {
  // entries read so far, newest first; `matched` are those where an id was confirmed, latest first
  private readonly read: ReadEntry[] = []
  private readonly matched: ReadEntry[] = []
  private exhausted = false

  constructor(
    private readonly scan: Iterator<{ key: number; value: Uint8Array }>,
    private readonly idsOf: (seq: number) => string[],
  ) {}

  /** Whether a logged rollout with this hash has this id. */
  has(id: string, hi: number, lo: number): boolean {
    for (const entry of this.matched) if (this.holds(entry, id, hi, lo)) return true
    for (const entry of this.read) if (!this.matched.includes(entry) && this.holds(entry, id, hi, lo)) return this.match(entry)
    while (!this.exhausted) {
      const next = this.scan.next()
      if (next.done === true) {
        this.exhausted = true
        break
      }
      const { key, value } = next.value
      const entry: ReadEntry = { key, hashes: new StoredHashes(value), cursor: 0 }
      this.read.push(entry)
      if (this.holds(entry, id, hi, lo)) return this.match(entry)
    }
    return false
  }

  private match(entry: ReadEntry): true {
    this.matched.unshift(entry)
    return true
  }

  /** Whether the entry has a rollout with this hash and this id. */
  private holds(entry: ReadEntry, id: string, hi: number, lo: number): boolean {
    const { hashes } = entry
    for (let k = 0; k < hashes.count; k++) {
      const index = (entry.cursor + k) % hashes.count
      if (hashes.hi(index) !== hi || hashes.lo(index) !== lo) continue
      if (this.idsOf(entry.key)[index] !== id) continue
      entry.cursor = index + 1
      return true
    }
    return false
  }

  close(): void {
    this.scan.return?.()
  }
}
