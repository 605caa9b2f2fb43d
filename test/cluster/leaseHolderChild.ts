/**
 * A lease holder in a process of its own, for lease.test.ts to freeze (SIGSTOP) or kill -9.
 * Args: servers bucket key holder ttlMs. It takes the lease, then every 25 ms checks `held`
 * right before its "action" and prints one line: `acted N at T` when it acted (T: the wall
 * clock in ms when it checked: a freeze may fall between the check and the line), `idle`
 * when it did not; `lost <reason>` when the lease reports its loss. Five ticks after a loss
 * it exits.
 */
import { Lease, ensureLeaseBucket } from '../../src/state/cluster/lease.js'
import { connectNats } from '../../src/state/cluster/natsConnect.js'

const [servers, bucket, key, holder, ttl] = process.argv.slice(2)
const ttlMs = Number(ttl)
const nc = await connectNats({ servers, name: holder })
const kv = await ensureLeaseBucket(nc, bucket, ttlMs, 1)
const lease = new Lease({ kv, key, holder, ttlMs })
let ticksSinceLoss: number | undefined
lease.lost.subscribe((reason) => {
  console.log(`lost ${reason}`)
  ticksSinceLoss = 0
})
while (!(await lease.acquire())) await new Promise((resolve) => setTimeout(resolve, 50))
console.log('acquired')
let acted = 0
const ticks = setInterval(() => {
  const checkedAt = Date.now()
  if (lease.held) console.log(`acted ${++acted} at ${checkedAt}`)
  else console.log('idle')
  if (ticksSinceLoss !== undefined && ++ticksSinceLoss >= 5) {
    clearInterval(ticks)
    void nc.close().then(() => process.exit(0))
  }
}, 25)
