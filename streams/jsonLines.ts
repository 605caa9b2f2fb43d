/**
 * JSON Lines in and out: a Readable read as an Observable of parsed lines, and a Writable
 * sink that respects backpressure by pausing the input it is fed from.
 */
import { createInterface } from 'node:readline'
import type { Readable, Writable } from 'node:stream'
import { Observable } from 'rxjs'

/** One non-blank input line: its 1-based number and the parsed value, or why it did not parse. */
export type JsonLine = { lineNumber: number; value: unknown; error?: undefined } | { lineNumber: number; value?: undefined; error: string }

/**
 * Reads JSON Lines from a stream; blank lines are skipped, a line that is not JSON is
 * emitted with its parse error (so the caller decides whether that is fatal). Unsubscribing
 * closes the reader.
 *
 * @example
 * readJsonLines(createReadStream('rollouts.jsonl')).subscribe(({ lineNumber, value }) => …)
 */
export function readJsonLines(input: Readable): Observable<JsonLine> {
  return new Observable<JsonLine>((subscriber) => {
    const reader = createInterface({ input, crlfDelay: Infinity })
    // 1-based line number of the last line read
    let lineNumber = 0
    reader.on('line', (line) => {
      lineNumber++
      if (line.trim() === '') return
      let value: unknown
      try {
        value = JSON.parse(line)
      } catch (error) {
        subscriber.next({ lineNumber, error: `not valid JSON (${(error as Error).message})` })
        return
      }
      subscriber.next({ lineNumber, value })
    })
    reader.on('close', () => subscriber.complete())
    // readline forwards the input's errors (a file that cannot be opened) to the interface
    reader.on('error', (error) => subscriber.error(error))
    return () => reader.close()
  })
}

/**
 * Writes one JSON document per line. When the destination's buffer is full, `pause` is
 * called, and `resume` once it drains, so a fast producer cannot grow memory without bound.
 * A destination that fails (a folder that does not exist, a closed pipe) calls `onError`
 * once; later writes are dropped and `end` rejects with that error.
 */
export class JsonLinesWriter {
  private waiting = false
  private failure: Error | undefined

  constructor(
    private readonly out: Writable,
    private readonly flow?: { pause: () => void; resume: () => void; onError?: (error: Error) => void },
  ) {
    out.once('error', (error) => {
      this.failure = error
      flow?.onError?.(error)
    })
  }

  write(value: unknown): void {
    if (this.failure !== undefined) return
    if (this.out.write(`${JSON.stringify(value)}\n`) || this.waiting) return
    this.waiting = true
    this.flow?.pause()
    this.out.once('drain', () => {
      this.waiting = false
      this.flow?.resume()
    })
  }

  /** Resolves once everything written has been handed to the destination. */
  end(): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.failure !== undefined) return reject(this.failure)
      this.out.once('error', reject)
      // never end stdout: the process may still write to it
      if (this.out === process.stdout) this.out.write('', () => resolve())
      else this.out.end(() => resolve())
    })
  }
}
