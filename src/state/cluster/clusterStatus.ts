/**
 * `dualstream cluster status --nats URL --run NAME`: what a cluster run looks like now, read
 * from NATS alone (no node needs to answer): the nodes that reported in the last lease times,
 * who holds the sequencer's and each partition's lease, the streams' sizes, the last step and
 * its λ, the steps not yet acknowledged and the trainer's last acknowledgement.
 */
import { jetstream, jetstreamManager } from '@nats-io/jetstream'
import { Kvm } from '@nats-io/kv'
import type { NatsConnection } from '@nats-io/transport-node'
import { lambdasOf } from '../../math/dual.js'
import { readNodeRecords, type NodeRecord } from './clusterRoles.js'
import type { RunRecord } from './clusterRun.js'
import { Lease } from './lease.js'
import { decodeAckMessage, decodeBatchesMessage } from './messages.js'
import { runLayout } from './runLayout.js'

export interface ClusterStatus {
  run: string
  partitions: number
  replicas: number
  created: string
  nodes: NodeRecord[]
  sequencer: string | undefined
  /** The holder of each partition's lease (undefined: free). */
  owners: (string | undefined)[]
  streams: Record<string, { messages: number; bytes: number }>
  step: number
  lambda: Record<string, number>
  /** Committed steps not acknowledged by the trainer. */
  pending: number
  /** The last acknowledgement stored: its step, the policy version its message reported, the node that received it. */
  lastAck: { step: number; policyVersion?: number; node: string } | undefined
}

/**
 * Reads the status of run `run`.
 *
 * @example
 * console.log(formatClusterStatus(await clusterStatus(nc, 'exp7')))
 */
export async function clusterStatus(nc: NatsConnection, run: string): Promise<ClusterStatus> {
  const layout = runLayout(run)
  const js = jetstream(nc)
  const jsm = await jetstreamManager(nc)
  const kvm = new Kvm(js)
  const runBucket = await kvm.open(layout.buckets.run)
  const entry = await runBucket.get('run').catch(() => null)
  if (entry === null || entry.length === 0)
    throw new Error(`no cluster run ${JSON.stringify(run)} on these NATS servers (no record in bucket ${layout.buckets.run})`)
  const record = entry.json<RunRecord>()
  const nodes: NodeRecord[] = []
  const owners: (string | undefined)[] = new Array(record.partitions).fill(undefined)
  let sequencer: string | undefined
  try {
    nodes.push(...(await readNodeRecords(jsm, await kvm.open(layout.buckets.nodes), layout.buckets.nodes)))
    const leases = await kvm.open(layout.buckets.leases)
    sequencer = (await Lease.holderOf(leases, layout.sequencerLease))?.holder
    for (let p = 0; p < record.partitions; p++) owners[p] = (await Lease.holderOf(leases, layout.partitionLease(p)))?.holder
  } catch {
    // no node has started yet: no node or lease bucket
  }
  nodes.sort((a, b) => a.node.localeCompare(b.node))
  const streams: ClusterStatus['streams'] = {}
  for (const name of Object.values(layout.streams)) {
    const info = await jsm.streams.info(name)
    streams[name] = { messages: info.state.messages, bytes: info.state.bytes }
  }
  const lastBatch =
    streams[layout.streams.batches].messages === 0 ? undefined : await jsm.streams.getMessage(layout.streams.batches, { last_by_subj: layout.subjects.batches })
  const batch =
    lastBatch === null || lastBatch === undefined ? undefined : decodeBatchesMessage(lastBatch.data, `${layout.streams.batches} seq ${lastBatch.seq}`).at(-1)
  // the acknowledged steps: every ack message (small)
  const acked = new Set<number>()
  let lastAck: ClusterStatus['lastAck']
  const ackCount = streams[layout.streams.acks].messages
  if (ackCount > 0) {
    const info = await jsm.streams.info(layout.streams.acks)
    for (let seq = info.state.first_seq; seq <= info.state.last_seq; seq++) {
      const message = await jsm.streams.getMessage(layout.streams.acks, { seq }).catch(() => null)
      /* c8 ignore next -- a purged ack message; steps not acknowledged at a status read (the fault suite reads status mid-run) */
      if (message === null) continue
      let entry
      try {
        entry = decodeAckMessage(message.data, `${layout.streams.acks} seq ${seq}`)
      } catch {
        // not this version's acknowledgement (nodes skip it too): its steps count as not acknowledged
        continue
      }
      for (const step of entry.steps) acked.add(step)
      lastAck = { step: entry.steps.at(-1)!, node: entry.node }
      if (entry.policyVersion !== undefined) lastAck.policyVersion = entry.policyVersion
    }
  }
  const step = batch?.step ?? 0
  let pending = 0
  /* c8 ignore next -- a purged ack message; steps not acknowledged at a status read (the fault suite reads status mid-run) */
  for (let s = 1; s <= step; s++) if (!acked.has(s)) pending++
  return {
    run,
    partitions: record.partitions,
    replicas: record.replicas,
    created: record.created,
    nodes,
    sequencer,
    owners,
    streams,
    step,
    // the last step of a BATCHES message carries its state (decodeBatchesMessage checks)
    lambda: batch === undefined ? {} : lambdasOf(batch.state!),
    pending,
    lastAck,
  }
}

/** The status as the command prints it. */
export function formatClusterStatus(status: ClusterStatus): string {
  const lines = [
    `run ${status.run}: ${status.partitions} partitions, ${status.replicas} replica${status.replicas === 1 ? '' : 's'}, created ${status.created}`,
    `step ${status.step}${Object.entries(status.lambda)
      .map(([channel, value]) => `, λ ${channel}=${value.toPrecision(4)}`)
      .join('')}; ${status.pending} step${status.pending === 1 ? '' : 's'} not acknowledged; last ack: ${
      status.lastAck === undefined
        ? 'none'
        : `step ${status.lastAck.step}${status.lastAck.policyVersion === undefined ? '' : ` (policy version ${status.lastAck.policyVersion})`} via ${status.lastAck.node}`
    }`,
    `sequencer: ${status.sequencer ?? 'nobody (free)'}`,
    `partitions: ${status.owners.map((owner, p) => `${p}=${owner ?? '-'}`).join(' ')}`,
    `nodes (${status.nodes.length}):`,
    ...status.nodes.map(
      (n) =>
        `  ${n.node}${n.url === undefined ? '' : ` ${n.url}`}: ${n.sequencer ? 'sequencer, ' : ''}partitions [${n.partitions.join(', ')}], at step ${n.step} (reported ${n.at})`,
    ),
    'streams:',
    ...Object.entries(status.streams).map(([name, s]) => `  ${name}: ${s.messages} messages, ${s.bytes} bytes`),
  ]
  return lines.join('\n') + '\n'
}
