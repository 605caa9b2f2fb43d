/**
 * `dualstream serve --nats URL --run NAME`: a node of a cluster run (DESIGN §8). The state is
 * in NATS JetStream; this process serves the same endpoints as one node does (streams/PROTOCOL.md
 * unchanged), with a `ClusterEngine` behind them, and takes roles (partition owners, the
 * sequencer) by lease beside it. Any number of nodes serve one run; producers and trainers may
 * use any of them and move between them.
 */
import { hostname } from 'node:os'
import type { NatsConnection } from '@nats-io/transport-node'
import { bindProblem } from '../../streams/auth.js'
import type { EngineServer } from '../../streams/engineServer.js'
import { sendJson } from '../../streams/host/index.js'
import type { EngineTelemetry } from '../../streams/telemetry/telemetry.js'
import { ClusterEngine } from '../state/cluster/clusterEngine.js'
import { ClusterRoles } from '../state/cluster/clusterRoles.js'
import { openRun, RunMismatchError } from '../state/cluster/clusterRun.js'
import { connectNats } from '../state/cluster/natsConnect.js'
import { serveOn, ServeError, serverUrl, type ServeIO, type ServeOptions } from './serve.js'
import { tlsProblem } from './tlsCredentials.js'

export interface ClusterServeOptions extends Omit<ServeOptions, 'dataDir' | 'onListening' | 'diskReserve' | 'diskResume' | 'diskCheckMs' | 'statfs'> {
  /** NATS servers: `nats://a:4222,nats://b:4222` (credentials in the URLs, or `natsCreds`; `tls://` for TLS). */
  nats: string
  natsCreds?: string
  /** The run's name (its streams and buckets are named after it). */
  run: string
  /** A new run's partitions (default 8); a joining node must name the same or none. */
  partitions?: number
  /** A new run's stream replicas (default 3 on a NATS cluster of 3 or more servers, else 1). */
  replicas?: number
  /** This node's name in the run (default host-pid). */
  node?: string
  /** Lease time to live (ms, default 3000). */
  leaseMs?: number
  onListening?: (parts: { engine: ClusterEngine; roles: ClusterRoles; server: EngineServer; telemetry: EngineTelemetry; port: number }) => void
}

/** What `/cluster` answers: this node, its roles and the run. */
export interface ClusterReport {
  run: string
  node: string
  partitions: number
  replicas: number
  roles: { sequencer: boolean; partitions: number[] }
  step: number
  /** How far this node's roles have got (the sequencer's step, each owner's entries fed and published). */
  progress: ReturnType<ClusterRoles['progress']>
}

/**
 * Joins (or creates) the run and serves it until `signal` aborts; resolves with 0 after a
 * clean stop. A node whose config differs from the run's is refused (a `ServeError` naming
 * the difference) before it serves anything.
 */
export async function serveCluster(options: ClusterServeOptions, io: ServeIO, signal: AbortSignal): Promise<number> {
  const problem = bindProblem(options.host, options.tokens) ?? (options.tls === undefined ? undefined : tlsProblem(options.tls))
  if (problem !== undefined) throw new ServeError(problem)
  const node = options.node ?? `${hostname()}-${process.pid}`
  let nc: NatsConnection
  try {
    nc = await connectNats({ servers: options.nats, credsFile: options.natsCreds, name: `dualstream ${node}` })
  } catch (error) {
    throw new ServeError((error as Error).message)
  }
  try {
    const opened = await openRun({ nc, run: options.run, config: options.config, partitions: options.partitions, replicas: options.replicas }).catch(
      (error: unknown) => {
        /* c8 ignore next -- openRun failing otherwise than by a mismatch: NATS lost between connect and the run record */
        throw error instanceof RunMismatchError ? new ServeError(error.message) : error
      },
    )
    const { layout, record } = opened
    const log = (line: string) => io.stdout.write(`dualstream serve: ${line}\n`)
    const engine = await ClusterEngine.open({ nc, layout, config: record.config, partitions: record.partitions, node, now: options.now, log })
    const roles = await ClusterRoles.start({
      js: engine.js,
      jsm: engine.jsm,
      layout,
      record,
      node,
      engine,
      leaseMs: options.leaseMs,
      log,
    })
    const report = (): ClusterReport => ({
      run: options.run,
      node,
      partitions: record.partitions,
      replicas: record.replicas,
      roles: roles.roles(),
      step: engine.stats().step,
      progress: roles.progress(),
    })
    return await serveOn(engine, options, io, signal, {
      started: (stats) => {
        const lambda = Object.entries(stats.lambda)
          .map(([channel, value]) => ` ${channel}=${value.toPrecision(4)}`)
          .join('')
        /* c8 ignore next 3 -- "replicas" in the plural: the three-server runs of the fault suite (run without coverage) */
        io.stdout.write(
          `dualstream serve: node ${node} ${opened.created ? 'created' : 'joined'} run ${options.run} (${record.partitions} partitions, ${record.replicas} replica${record.replicas === 1 ? '' : 's'}): step ${stats.step}${lambda === '' ? '' : `, λ${lambda}`}, ${stats.outbox} batches unacknowledged\n`,
        )
      },
      mount: (server, telemetry) => {
        server.addHttpRoute('/cluster', (_request, response) => sendJson(response, 200, report()))
        // the dashboard names the node and the sequencer; /metrics has the roles
        telemetry.showCluster(() => roles.picture())
        roles.changes.subscribe(() => telemetry.clusterChanged())
      },
      onListening: (parts) => {
        roles.listening(serverUrl(options.host, parts.port, options.tls !== undefined))
        options.onListening?.({ ...parts, roles })
      },
      beforeEngineClose: () => roles.stop(),
    })
  } finally {
    await nc.close()
  }
}
