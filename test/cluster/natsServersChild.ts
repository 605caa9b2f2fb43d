/**
 * The test harness in a process of its own, for natsServers.test.ts. Modes:
 * - `hang`: starts NATS, prints `{"url", "dir"}`, waits to be killed (-9);
 * - `exit`: starts NATS, prints `{"url", "dir"}`, exits without stopping it;
 * - `probe`: prints `{"missing"}` (natsMissing); `probe start` then also `{"error"}`: what
 *   startNats() rejected with (for a `$NATS_SERVER` that is missing or cannot run).
 */
import { natsMissing, startNats } from '../support/natsServers.js'

const mode = process.argv[2]
if (mode === 'probe') {
  console.log(JSON.stringify({ missing: natsMissing }))
  if (process.argv[3] === 'start') console.log(JSON.stringify({ error: await startNats().then(String, (error: Error) => error.message) }))
} else {
  const nats = await startNats()
  console.log(JSON.stringify({ url: nats.url, dir: nats.dir }))
  if (mode === 'exit') process.exit(0)
  setInterval(() => {}, 60_000)
}
