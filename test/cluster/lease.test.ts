/**
 * Leases on a JetStream KV key (src/state/cluster/lease.ts) against real nats-server
 * processes: one holder at a time; renewals keep a lease across many TTLs; release hands it
 * over at once; a holder frozen past its TTL (SIGSTOP) loses it to another node and, when it
 * runs again, sees `held` false before it acts; a holder killed -9 frees the key after the
 * TTL; a holder in a three-server cluster keeps its lease through the loss of the server it
 * is connected to.
 *
 * The middle tests drive the lease's timers with a virtual clock (the renew timer and `now`)
 * while the KV is real, so that a renew can be made to come back late, or the key changed
 * under a holder between two renews, at an exact point.
 */
import t, { type Test } from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { firstValueFrom, timeout } from 'rxjs'
import { jetstream, jetstreamManager } from '@nats-io/jetstream'
import { Kvm, type KV } from '@nats-io/kv'
import type { NatsConnection } from '@nats-io/transport-node'
import { Lease, ensureLeaseBucket } from '../../src/state/cluster/lease.js'
import { connectNats } from '../../src/state/cluster/natsConnect.js'
import { natsMissing, startNats, waitFor, type NatsServers } from '../support/natsServers.js'
import { VirtualClock } from '../support/virtualTime.js'

const TTL = 1500

/** Connects to `servers` and closes the connection when `t` ends. */
async function connection(t: Test, servers: string, name: string): Promise<NatsConnection> {
  const nc = await connectNats({ servers, name })
  t.teardown(() => nc.close())
  return nc
}

/** Records what a lease reports on `lost`. */
function losses(lease: Lease): string[] {
  const seen: string[] = []
  lease.lost.subscribe((reason) => seen.push(reason))
  return seen
}

async function revisionOf(kv: KV, key: string): Promise<number> {
  return (await kv.get(key))?.revision ?? 0
}

t.test('the lease bucket: created with its TTL, reopened, refused when its settings differ', { skip: natsMissing }, async (t) => {
  const nats = await startNats()
  t.teardown(() => nats.stop())
  const nc = await connection(t, nats.url, 'bucket')
  const kv = await ensureLeaseBucket(nc, 'leases_b', TTL, 1)
  const status = await kv.status()
  t.same([status.ttl, status.history, status.replicas], [TTL, 1, 1], 'ttl in ms, one value per key')
  t.equal((await ensureLeaseBucket(new Kvm(nc), 'leases_b', TTL, 1)).constructor, kv.constructor, 'opened again through a Kvm')
  await t.rejects(ensureLeaseBucket(jetstream(nc), 'leases_b', 3000, 1), {
    message:
      'the lease bucket leases_b exists with ttl 1500 ms, history 1, 1 replicas; the leases need ttl 3000 ms, history 1, 1 replicas (delete the bucket, or start with its settings)',
  })
  await t.rejects(
    ensureLeaseBucket(nc, 'leases_b', TTL, 3),
    /exists with ttl 1500 ms, history 1, 1 replicas; the leases need ttl 1500 ms, history 1, 3 replicas/,
  )
  t.throws(() => new Lease({ kv, key: 'k', holder: 'a', ttlMs: TTL, renewEveryMs: 1200 }), {
    message: 'lease k: renewEveryMs (1200) must be above 0 and below ttlMs (1500) − marginMs (300), marginMs at least 0',
  })
  t.throws(() => new Lease({ kv, key: 'k', holder: 'a', ttlMs: TTL, marginMs: -1 }), RangeError)
  t.throws(() => new Lease({ kv, key: 'k', holder: 'a', ttlMs: TTL, renewEveryMs: 0 }), RangeError)
})

t.test('one holder at a time; renewals keep it across TTLs; release hands it over at once', { skip: natsMissing }, async (t) => {
  const nats = await startNats()
  t.teardown(() => nats.stop())
  const kvA = await ensureLeaseBucket(await connection(t, nats.url, 'node-a'), 'leases', TTL, 1)
  const kvB = await ensureLeaseBucket(await connection(t, nats.url, 'node-b'), 'leases', TTL, 1)
  const a = new Lease({ kv: kvA, key: 'sequencer', holder: 'node-a', ttlMs: TTL })
  const b = new Lease({ kv: kvB, key: 'sequencer', holder: 'node-b', ttlMs: TTL })
  const lostA = losses(a)
  t.teardown(() => Promise.all([a.release(), b.release()]))

  t.equal(await Lease.holderOf(kvB, 'sequencer'), undefined, 'nobody holds a key that was never written')
  t.equal(a.held, false, 'not held before acquire')
  const [first, second] = await Promise.all([a.acquire(), a.acquire()])
  t.same([first, second], [true, true], 'acquired (two calls at once share one attempt)')
  t.equal(a.held, true)
  t.equal(await a.acquire(), true, 'acquire while held: true at once')
  t.equal(await b.acquire(), false, 'the other node cannot take it')
  const taken = await Lease.holderOf(kvB, 'sequencer')
  t.match(taken, { holder: 'node-a', revision: Number })
  t.ok(Math.abs(taken!.since - Date.now()) < 60_000, 'since: when it was taken')

  // three TTLs' worth of renews (every ttl/3): a holds throughout, b never gets in
  const start = taken!.revision
  let checks = 0
  const outcome = await waitFor(
    'nine renews',
    async () => {
      checks++
      if (!a.held) return `a lost its lease while renewing: ${lostA.join('; ')}`
      if (await b.acquire()) return 'b took a held lease'
      return (await revisionOf(kvB, 'sequencer')) >= start + 9 && 'nine renews'
    },
    4 * TTL + 3000,
    100,
  )
  t.equal(outcome, 'nine renews', `a held it throughout (${checks} checks of a.held and b.acquire())`)
  t.equal(a.held, true, 'still held')
  t.same(lostA, [], 'never reported lost')

  await a.release()
  t.equal(a.held, false, 'not held once released')
  t.equal(await Lease.holderOf(kvB, 'sequencer'), undefined, 'the key is deleted')
  t.equal(await b.acquire(), true, 'the other node takes it at once, without waiting for the TTL')
  t.match(await Lease.holderOf(kvA, 'sequencer'), { holder: 'node-b' })
  t.equal(await a.acquire(), false, 'and now a cannot')
  await a.release()
  t.same(lostA, [], 'a release is not a loss')

  // a release right after an acquire (not awaited) waits for it, then gives the key back
  await b.release()
  const acquiring = a.acquire()
  await a.release()
  t.equal(await acquiring, true)
  t.equal(a.held, false, 'released after the acquire completed')
  t.equal(await Lease.holderOf(kvB, 'sequencer'), undefined, 'and the key is free again')

  // a contended acquire on one connection: both read "free", one write wins
  const c = new Lease({ kv: kvA, key: 'partition.3', holder: 'node-a', ttlMs: TTL })
  const d = new Lease({ kv: kvA, key: 'partition.3', holder: 'node-c', ttlMs: TTL })
  t.teardown(() => Promise.all([c.release(), d.release()]))
  const outcomes = await Promise.all([c.acquire(), d.acquire()])
  t.same(outcomes.sort(), [false, true], 'exactly one of two simultaneous acquires wins')
})

t.test('virtual time: a renew stored without its answer, a late answer, a missed deadline, release mid-renew', { skip: natsMissing }, async (t) => {
  const nats = await startNats()
  t.teardown(() => nats.stop())
  const kv = await ensureLeaseBucket(await connection(t, nats.url, 'virtual'), 'leases_v', TTL, 1)
  const clock = new VirtualClock(0)
  let jump = 0
  const a = new Lease({ kv, key: 'seq', holder: 'node-a', ttlMs: TTL, now: () => clock.now() + jump, scheduler: clock })
  const lost = losses(a)
  t.teardown(() => a.release())
  /** Moves the virtual clock 1 ms per real 5 ms until `check` holds: the real KV answers in between. */
  const creep = <T>(what: string, check: () => T | undefined | false | Promise<T | undefined | false>) =>
    waitFor(
      what,
      () => {
        clock.advance(1)
        return check()
      },
      10_000,
      5,
    )

  t.equal(await a.acquire(), true)
  const acquired = await revisionOf(kv, 'seq')

  // our own value rewritten at the next revision, as when a renew is stored but its answer lost
  const entry = (await kv.get('seq'))!
  const stored = await kv.update('seq', entry.value, acquired)
  clock.advance(TTL / 3)
  await creep('a renew past the stored one', async () => (await revisionOf(kv, 'seq')) > stored)
  t.equal(a.held, true, 'the refused renew found its own value and went on from that revision')
  t.same(lost, [])

  // a renew sent in time but answered after the deadline does not extend the lease
  const before = await revisionOf(kv, 'seq')
  clock.advance(TTL / 3) // sends the next renew; its answer comes after the clock jumps
  jump = TTL
  await creep('the late answer', () => lost.length === 1)
  t.match(lost[0], /^lease seq of node-a lost: a renew was confirmed only after the deadline \(\d+ ms after sending the last confirmed one\)$/)
  t.equal(a.held, false)
  t.ok((await revisionOf(kv, 'seq')) > before, 'the late renew was stored (the key still holds our value)')

  // the key still holds our value: acquire takes it back by its revision
  t.equal(await a.acquire(), true, 'acquired again: the key held our own value')
  t.equal(a.held, true)

  // the deadline passes with no timer run yet (a paused process): held is false at once, and acquire reports the loss first
  jump += TTL
  t.equal(a.held, false, 'held turns false on the clock, not on a timer')
  t.equal(lost.length, 1, 'no timer has run yet')
  t.equal(await a.acquire(), true, 'a new term')
  t.match(lost[1], /lost: no renew was confirmed within 1200 ms of sending the last confirmed one$/)

  // release while a renew is in flight: it waits for the renew and deletes at its revision
  clock.advance(TTL / 3)
  await a.release()
  t.equal(await Lease.holderOf(kv, 'seq'), undefined, 'deleted at the revision the in-flight renew wrote')
  t.equal(a.held, false)
  t.equal(lost.length, 2, 'a release is not a loss')
  await a.release()
})

t.test('virtual time: a holder whose key was deleted, purged, taken or overwritten loses it, saying why', { skip: natsMissing }, async (t) => {
  const nats = await startNats()
  t.teardown(() => nats.stop())
  const nc = await connection(t, nats.url, 'reasons')
  const kv = await ensureLeaseBucket(nc, 'leases_r', TTL, 1)
  const jsm = await jetstreamManager(nc)
  const clock = new VirtualClock(0)
  const cases: [string, (key: string) => Promise<unknown>, RegExp][] = [
    ['deleted', (key) => kv.delete(key), /lost: the key was deleted \(revision \d+\)$/],
    ['purged', (key) => jsm.streams.purge('KV_leases_r', { filter: `$KV.leases_r.${key}` }), /lost: the key is gone \(expired or purged\)$/],
    [
      'taken',
      async (key) => {
        await jsm.streams.purge('KV_leases_r', { filter: `$KV.leases_r.${key}` })
        const other = new Lease({ kv, key, holder: 'node-b', ttlMs: TTL, scheduler: clock })
        t.equal(await other.acquire(), true)
      },
      /lost: node-b holds it now \(revision \d+, since \d{4}-\d\d-\d\dT[\d:.]+Z\)$/,
    ],
    ['overwritten', (key) => kv.put(key, 'not json'), /lost: the key holds something that is not a lease \(revision \d+\)$/],
  ]
  for (const [what, change, reason] of cases) {
    const key = `part.${what}`
    const lease = new Lease({ kv, key, holder: 'node-a', ttlMs: TTL, now: () => clock.now(), scheduler: clock })
    const lost = losses(lease)
    t.equal(await lease.acquire(), true)
    await change(key)
    clock.advance(TTL / 3) // the next renew: refused for its revision; the one after reads the key
    await waitFor(
      `the loss of a ${what} key`,
      () => {
        clock.advance(5)
        return lost.length > 0
      },
      10_000,
      5,
    )
    t.match(lost, [reason], what)
    t.equal(lease.held, false)
    await lease.release()
  }
  await kv.put('junk', '{"holder":"x"}')
  await t.rejects(Lease.holderOf(kv, 'junk'), { message: /^the lease key junk holds 14 bytes that are not a lease \(\{"holder", "since"\}\) at revision \d+$/ })
})

t.test('NATS stops answering: the holder stops acting before the key can expire, and says so', { skip: natsMissing }, async (t) => {
  const nats = await startNats()
  t.teardown(() => nats.stop())
  const nc = await connection(t, nats.url, 'paused')
  // a short request timeout: acquire and release give up while the server is frozen
  const kv = await ensureLeaseBucket(jetstream(nc, { timeout: 300 }), 'leases_p', TTL, 1)
  const a = new Lease({ kv, key: 'seq', holder: 'node-a', ttlMs: TTL })
  const b = new Lease({ kv, key: 'other', holder: 'node-a', ttlMs: TTL })
  t.equal(await a.acquire(), true)
  const lostAt = firstValueFrom(a.lost.pipe(timeout(5000)))
  const heldUntil = waitFor('held to turn false', () => !a.held, 5000, 5).then(() => performance.now())
  nats.pause(0)
  const pausedAt = performance.now()
  const reason = await lostAt
  const lostAfter = performance.now() - pausedAt
  t.match(reason, /lost: no renew was confirmed within 1200 ms/)
  // the deadline is 1200 ms after the last confirmed renew was sent, which was before the freeze
  t.ok(lostAfter <= TTL, `lost ${Math.round(lostAfter)} ms after NATS froze (the key expires ${TTL} ms after the last renew was stored)`)
  t.ok((await heldUntil) - pausedAt <= TTL, 'held was false by then')
  await t.rejects(b.acquire(), /^cannot acquire the lease other for node-a: TIMEOUT/i)
  await t.rejects(a.release(), /^cannot release the lease seq of node-a: TIMEOUT/i)
  nats.resume(0)
})

const childScript = fileURLToPath(new URL('./leaseHolderChild.ts', import.meta.url))

/** Starts leaseHolderChild.ts and collects its lines; resolves once it has acted. */
async function startHolder(
  t: Test,
  nats: NatsServers,
  bucket: string,
  holder: string,
): Promise<{ child: ChildProcess; lines: string[]; exited: Promise<number | null> }> {
  const child = spawn(process.execPath, [...process.execArgv, childScript, nats.url, bucket, 'seq', holder, String(TTL)], { stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => {
    child.kill('SIGCONT')
    child.kill('SIGKILL')
  })
  const lines: string[] = []
  let partial = ''
  let stderr = ''
  child.stdout!.on('data', (chunk: Buffer) => {
    const parts = (partial + chunk.toString()).split('\n')
    partial = parts.pop()!
    lines.push(...parts)
  })
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
  const exited = new Promise<number | null>((resolve) => child.on('exit', resolve))
  await waitFor(`${holder} acting (stderr: ${stderr})`, () => lines.some((l) => l.startsWith('acted')), 15_000)
  return { child, lines, exited }
}

t.test('a holder frozen past its TTL loses the lease to another node and does not act when it thaws', { skip: natsMissing }, async (t) => {
  const nats = await startNats()
  t.teardown(() => nats.stop())
  const kv = await ensureLeaseBucket(await connection(t, nats.url, 'node-b'), 'leases_s', TTL, 1)
  const { child, lines, exited } = await startHolder(t, nats, 'leases_s', 'node-a')
  t.match(await Lease.holderOf(kv, 'seq'), { holder: 'node-a' })

  const b = new Lease({ kv, key: 'seq', holder: 'node-b', ttlMs: TTL })
  t.teardown(() => b.release())
  t.equal(await b.acquire(), false, 'not while node-a renews')
  child.kill('SIGSTOP')
  const stoppedAt = performance.now()
  // node-b holds the lease only after the attempt that took it began (wall clock, as the child's)
  let attemptedAt = 0
  await waitFor(
    'node-b to take the lease',
    () => {
      attemptedAt = Date.now()
      return b.acquire()
    },
    TTL + 3000,
  )
  t.comment(`node-b took the lease ${Math.round(performance.now() - stoppedAt)} ms after node-a froze (TTL ${TTL} ms)`)
  const beforeThaw = lines.length

  child.kill('SIGCONT')
  t.equal(await exited, 0, 'the holder exits after reporting the loss')
  const after = lines.slice(beforeThaw)
  t.ok(
    lines.slice(0, beforeThaw).some((l) => l.startsWith('acted')),
    'it acted while it held the lease',
  )
  // an action checked before the freeze may print after the thaw (the freeze fell between its
  // check and its line: what fencing, not the lease, covers); none may be checked once node-b could hold it
  t.same(
    after.filter((l) => l.startsWith('acted') && Number(/ at (\d+)$/.exec(l)![1]) >= attemptedAt),
    [],
    `no action checked once node-b could hold the lease (from ${attemptedAt}): ${after.join(' | ')}`,
  )
  t.ok(
    after.some((l) => /^lost lease seq of node-a lost: /.test(l)),
    'it reported the loss',
  )
  t.equal(b.held, true, 'node-b holds it')
  t.match(await Lease.holderOf(kv, 'seq'), { holder: 'node-b' })
})

t.test('a holder killed -9: the key expires after the TTL and another node takes it', { skip: natsMissing }, async (t) => {
  const nats = await startNats()
  t.teardown(() => nats.stop())
  const kv = await ensureLeaseBucket(await connection(t, nats.url, 'node-b'), 'leases_k', TTL, 1)
  const { child, exited } = await startHolder(t, nats, 'leases_k', 'node-a')
  const b = new Lease({ kv, key: 'seq', holder: 'node-b', ttlMs: TTL })
  t.teardown(() => b.release())
  child.kill('SIGKILL')
  const killedAt = performance.now()
  await exited
  await waitFor('node-b to take the lease', () => b.acquire(), TTL + 2000, 25)
  const after = performance.now() - killedAt
  t.ok(after <= TTL + 2000, `taken ${Math.round(after)} ms after the holder died (TTL ${TTL} ms)`)
  t.match(await Lease.holderOf(kv, 'seq'), { holder: 'node-b' })
})

t.test('three NATS servers: the holder keeps its lease when the server it is connected to dies', { skip: natsMissing }, async (t) => {
  const ttlMs = 3000
  const nats = await startNats({ servers: 3 })
  t.teardown(() => nats.stop())
  const ncA = await connection(t, nats.url, 'node-a')
  const kvA = await ensureLeaseBucket(ncA, 'leases_c', ttlMs, 3)
  const a = new Lease({ kv: kvA, key: 'seq', holder: 'node-a', ttlMs })
  const lostA = losses(a)
  t.teardown(() => a.release().catch(() => {}))
  t.equal(await a.acquire(), true)

  // node-a's server must not also lead the bucket's stream: a new stream leader takes
  // NATS 2.9 seconds to elect, longer than this lease's margin (that case is a real loss)
  const serverOfA = ncA.info!.server_name
  const jsm = await jetstreamManager(ncA)
  if ((await jsm.streams.info('KV_leases_c')).cluster?.leader === serverOfA) {
    await ncA.request('$JS.API.STREAM.LEADER.STEPDOWN.KV_leases_c', '', { timeout: 2000 })
    await waitFor('another stream leader', async () => {
      const leader = (await jsm.streams.info('KV_leases_c')).cluster?.leader
      return leader !== undefined && leader !== serverOfA
    })
  }
  const index = Number(serverOfA.slice(1))
  const others = nats.urls.filter((_, i) => i !== index).join(',')
  const kvB = await ensureLeaseBucket(await connection(t, others, 'node-b'), 'leases_c', ttlMs, 3)
  const b = new Lease({ kv: kvB, key: 'seq', holder: 'node-b', ttlMs })
  t.teardown(() => b.release().catch(() => {}))

  await nats.kill(index)
  const start = await revisionOf(kvB, 'seq')
  const outcome = await waitFor(
    'five renews (more than a TTL) through the other servers',
    async () => {
      if (!a.held) return `a lost its lease: ${lostA.join('; ')}`
      if (await b.acquire()) return 'b took a held lease'
      return (await revisionOf(kvB, 'seq')) >= start + 5 && 'five renews'
    },
    3 * ttlMs + 5000,
    100,
  )
  t.equal(outcome, 'five renews', 'node-a held it throughout')
  t.equal(a.held, true, `node-a still holds it, connected to ${ncA.info?.server_name} now instead of ${serverOfA}`)
  t.not(ncA.info?.server_name, serverOfA)
  t.same(lostA, [])
})
