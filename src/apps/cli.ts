/**
 * The `dualstream` command line: `replay`, `export` (and the commands added by the engine: `serve`,
 * `train`, `eval`, `bench`).
 */
import { inspect } from 'node:util'
import { createReadStream, createWriteStream, readFileSync, statSync, type ReadStream } from 'node:fs'
import { Command, InvalidArgumentError, Option } from 'commander'
import { integerOption } from './cliOptions.js'
import { ConfigError, loadConfig } from '../core/config.js'
import { replay, ReplayInputError, type ReplaySummary } from './replay.js'
import { LogNotFoundError, replayLog } from '../state/logReplay.js'
import { batchRecord } from '../state/batchRecord.js'
import { parseBytes } from '../state/diskGuard.js'
import { JsonLinesWriter } from '../../streams/jsonLines.js'
import { addTrainCommands } from './train/commands.js'
import { replayProgress } from './progress.js'
import { serve, ServeError } from './serve.js'
import { serveCluster } from './serveCluster.js'
import { clusterStatus, formatClusterStatus } from '../state/cluster/clusterStatus.js'
import { connectNats } from '../state/cluster/natsConnect.js'
import { replayRun } from '../state/cluster/replayRun.js'
import { tlsProblem } from './tlsCredentials.js'
import { exportSteps } from './exportSteps.js'
import { tokensFromEnv } from '../../streams/auth.js'
import { SERVER_DEFAULTS } from '../../streams/engineServer.js'
import type { TlsCredentials } from '../../streams/host/index.js'
import { DEFAULT_WIRE_LIMITS } from '../../streams/wire.js'

/** Exit codes: 1 for bad data in the input, 2 for a bad invocation or config. */
export const EXIT_DATA = 1
export const EXIT_USAGE = 2

/** What the CLI needs from its process; tests pass their own. */
export interface CliIO {
  stdin: NodeJS.ReadableStream
  stdout: NodeJS.WritableStream
  stderr: NodeJS.WritableStream
}

/** An error from the operating system (a file that cannot be opened, a closed pipe). */
const isSystemError = (error: unknown): error is NodeJS.ErrnoException =>
  error instanceof Error && typeof (error as NodeJS.ErrnoException).code === 'string' && typeof (error as NodeJS.ErrnoException).syscall === 'string'

function formatSummary(summary: ReplaySummary): string {
  const dropped = Object.entries(summary.dropped)
    .map(([reason, n]) => `${reason} ${n}`)
    .join(', ')
  const lambda = Object.entries(summary.lambda)
    .map(([channel, value]) => `${channel}=${value.toPrecision(4)}`)
    .join(' ')
  const lines = [
    `replay: ${summary.lines} rollouts read → ${summary.batches} batches holding ${summary.inBatches}; dropped: ${dropped}`,
    `replay: last step ${summary.step}${lambda === '' ? '' : `, λ ${lambda}`}`,
  ]
  for (const sample of summary.invalidSamples) lines.push(`replay: skipped ${sample}`)
  return `${lines.join('\n')}\n`
}

/** Builds the program; `run` parses argv and resolves to the exit code. */
export function buildProgram(io: CliIO, setExitCode: (code: number) => void): Command {
  const program = new Command('dualstream')
    .description('Online constrained RL (GRPO / Faithful GRPO) as a stream of rollouts.')
    .exitOverride()
    .configureOutput({ writeOut: (s) => io.stdout.write(s), writeErr: (s) => io.stderr.write(s) })

  program
    .command('replay')
    .description('Run recorded rollouts (JSON Lines) through the pipeline; one JSON line per batch out.')
    .requiredOption('-c, --config <file>', 'engine config (JSON)')
    .option('-i, --input <file>', 'rollouts, one JSON object per line ("-" = stdin)', '-')
    .option('-l, --log <dir>', 'instead of --input: the ingest log in a `serve` data folder (read-only)')
    .option(
      '--nats <urls>',
      "instead of --input: a cluster run's streams on these NATS servers (needs --run); checks every group and batch against the stored ones",
    )
    .option('--nats-creds <file>', 'NATS credentials file (.creds) for --nats')
    .option('--run <name>', 'the cluster run to replay (with --nats)')
    .option('-o, --out <file>', 'batch records, one JSON object per line ("-" = stdout)', '-')
    .addOption(new Option('--on-invalid <mode>', 'what to do with a malformed line or rollout').choices(['error', 'skip']).default('error'))
    .action(
      async (opts: {
        config: string
        input: string
        log?: string
        nats?: string
        natsCreds?: string
        run?: string
        out: string
        onInvalid: 'error' | 'skip'
      }) => {
        const config = loadConfig(opts.config)
        const output = opts.out === '-' ? io.stdout : createWriteStream(opts.out)
        try {
          if (opts.nats !== undefined) {
            if (opts.run === undefined) {
              io.stderr.write('dualstream replay: --run <name> is required with --nats\n')
              return setExitCode(EXIT_USAGE)
            }
            const nc = await connectNats({ servers: opts.nats, credsFile: opts.natsCreds, name: 'dualstream replay' }).catch((error: unknown) => {
              throw new ClusterCommandError((error as Error).message)
            })
            try {
              const writer = new JsonLinesWriter(output as never)
              const result = await replayRun({ nc, run: opts.run, config }, (line) => writer.write(line)).catch((error: unknown) => {
                throw new ClusterCommandError((error as Error).message)
              })
              await writer.end()
              const exact = result.differences.length === 0
              io.stderr.write(
                `replay: run ${opts.run}: ${result.partitionEntries} partition entries → ${result.groupMessages} group messages → ${result.batches} batches${
                  JSON.stringify(config) === JSON.stringify(result.record.config)
                    ? exact
                      ? '; every group and batch equals the stored one'
                      : ''
                    : " (under another config than the run's: not compared)"
                }\n`,
              )
              if (!exact) {
                io.stderr.write(`replay: ${result.differences.length} differences from the stored run:\n${result.differences.slice(0, 20).join('\n')}\n`)
                setExitCode(EXIT_DATA)
              }
            } finally {
              await nc.close()
            }
            return
          }
          if (opts.log !== undefined) {
            const writer = new JsonLinesWriter(output as never)
            const result = await replayLog(config, opts.log, (batch) => writer.write(batchRecord(batch)))
            await writer.end()
            io.stderr.write(`replay: ${result.records} log records → ${result.batches} batches\n`)
            return
          }
          const input = opts.input === '-' ? io.stdin : createReadStream(opts.input)
          // a progress line on a terminal: by bytes read for a file, by lines for stdin
          const progress = replayProgress(io.stderr, fileSize(opts.input), () => (input as ReadStream).bytesRead)
          const summary = await replay({
            config,
            input: input as never,
            output: output as never,
            inputName: opts.input === '-' ? 'stdin' : opts.input,
            onInvalid: opts.onInvalid,
            onBatch: progress.update,
          }).finally(() => progress.stop())
          io.stderr.write(formatSummary(summary))
        } catch (error) {
          // bad data, a missing log, a file that cannot be read or written: say which and exit 1
          if (!(error instanceof ReplayInputError || error instanceof LogNotFoundError || error instanceof ClusterCommandError || isSystemError(error)))
            throw error
          const hint = error instanceof ReplayInputError ? '\n(use --on-invalid skip to skip and count such lines)' : ''
          io.stderr.write(`dualstream replay: ${error.message}${hint}\n`)
          setExitCode(EXIT_DATA)
        }
      },
    )

  program
    .command('export')
    .description(
      'One row per committed step of a serve data folder (λ before/after, J, violation, per-sample violation rate and count per constraint, objective means, counts, advantage mean/std, commit time), as CSV or JSON Lines. Read-only: serve may be running.',
    )
    .requiredOption('-d, --data <dir>', 'the serve data folder')
    .addOption(
      new Option('--format <format>', 'csv (a header, then one line per step) or jsonl (one object per line)').choices(['csv', 'jsonl']).default('csv'),
    )
    .option('-o, --out <file>', 'where to write ("-" = stdout)', '-')
    .action(async (opts: { data: string; format: 'csv' | 'jsonl'; out: string }) => {
      try {
        const toStdout = opts.out === '-'
        const steps = await exportSteps(opts.data, opts.format, toStdout ? io.stdout : createWriteStream(opts.out), !toStdout)
        io.stderr.write(`export: ${steps} steps from ${opts.data}${toStdout ? '' : ` to ${opts.out}`}\n`)
      } catch (error) {
        if (!(error instanceof LogNotFoundError || isSystemError(error))) throw error
        io.stderr.write(`dualstream export: ${error.message}\n`)
        setExitCode(EXIT_DATA)
      }
    })

  program
    .command('serve')
    .description(
      'Run the durable engine (LMDB) behind WebSocket endpoints: /ingest for producers, /batches for the trainer, /telemetry for viewers; the live dashboard at /, GET /metrics (Prometheus), /healthz.',
    )
    .requiredOption('-c, --config <file>', 'engine config (JSON)')
    .option('-d, --data <dir>', 'data folder: ingest log, batches and state (LMDB; created if missing, restored if not); not with --nats')
    .option(
      '--nats <urls>',
      'a cluster node: the state is in NATS JetStream at these servers (nats://host:port,…; user:pass@ or token@ in the URLs; tls:// for TLS); needs --run',
    )
    .option('--nats-creds <file>', 'NATS credentials file (.creds) for --nats')
    .option('--run <name>', 'the cluster run this node serves (created by its first node, joined by the others)')
    .option('--partitions <n>', 'partitions of a new cluster run (fixed at creation; default 8)', integerOption(1, 1024))
    .option('--replicas <n>', 'stream replicas of a new cluster run (default 3 on a NATS cluster of 3+ servers, else 1)', integerOption(1, 5))
    .option('--node <name>', "this cluster node's name in the run (default host-pid)")
    .option('--lease-ms <n>', "cluster role lease time to live: a dead node's roles move after at most this (ms)", integerOption(500), 3000)
    .option('--host <host>', 'interface to listen on (beyond loopback only with tokens)', '127.0.0.1')
    .option('-p, --port <n>', 'port (0 = any free port)', integerOption(0, 65535), 8787)
    .option('--tls-cert <file>', 'serve HTTPS and wss:// with this PEM certificate (its chain may follow it); needs --tls-key')
    .option('--tls-key <file>', 'the PEM private key of --tls-cert (unencrypted)')
    .option('--credit <n>', 'rollouts a producer may have unacknowledged', integerOption(1), SERVER_DEFAULTS.credit)
    .option(
      '--max-outbox <n>',
      'unacknowledged batches at which producers are paused (credit shrinks from half of it)',
      integerOption(1),
      SERVER_DEFAULTS.maxOutbox,
    )
    .option('--max-frame-bytes <n>', 'largest frame accepted', integerOption(1024), DEFAULT_WIRE_LIMITS.maxFrameBytes)
    .option(
      '--max-ingest-bytes <size>',
      "bytes of producer frames read and not yet acknowledged, across producers (e.g. 64M, 1G): above it no producer is read, so serve's memory does not grow with payload sizes",
      bytesOption,
      SERVER_DEFAULTS.maxIngestBytes,
    )
    .option('--heartbeat-ms <n>', 'ping period; peers silent for a whole period are dropped (0 = off)', integerOption(0), SERVER_DEFAULTS.heartbeatMs)
    .option(
      '--disk-reserve <size>',
      'free space to keep on the data folder\'s disk (e.g. 512M, 2G): below it new rollouts are refused ("disk-full") until twice as much is free; "auto" = 2% of the disk, 256 MiB to 4 GiB; 0 = off',
      sizeOption,
      'auto' as const,
    )
    .addHelpText(
      'after',
      '\nTokens per role from the environment: DUALSTREAM_PRODUCER_TOKEN, DUALSTREAM_TRAINER_TOKEN, DUALSTREAM_VIEWER_TOKEN (the dashboard and /telemetry) (Authorization: Bearer … or ?token=…).',
    )
    .action(
      async (opts: {
        config: string
        data?: string
        nats?: string
        natsCreds?: string
        run?: string
        partitions?: number
        replicas?: number
        node?: string
        leaseMs: number
        host: string
        port: number
        tlsCert?: string
        tlsKey?: string
        credit: number
        maxOutbox: number
        maxFrameBytes: number
        maxIngestBytes: number
        heartbeatMs: number
        diskReserve: number | 'auto'
      }) => {
        const config = loadConfig(opts.config)
        const stop = new AbortController()
        const onSignal = () => stop.abort()
        process.once('SIGINT', onSignal)
        process.once('SIGTERM', onSignal)
        try {
          const common = {
            config,
            host: opts.host,
            port: opts.port,
            tls: readTlsFiles(opts.tlsCert, opts.tlsKey),
            tokens: tokensFromEnv(process.env),
            credit: opts.credit,
            maxOutbox: opts.maxOutbox,
            maxIngestBytes: opts.maxIngestBytes,
            heartbeatMs: opts.heartbeatMs,
            limits: { maxFrameBytes: opts.maxFrameBytes },
          }
          const code =
            opts.nats === undefined
              ? await serve(
                  { ...common, dataDir: required(opts.data, '--data <dir> (or --nats <urls> --run <name> for a cluster node)'), diskReserve: opts.diskReserve },
                  io,
                  stop.signal,
                )
              : await serveCluster(
                  {
                    ...common,
                    nats: opts.nats,
                    natsCreds: opts.natsCreds,
                    run: required(opts.run, '--run <name> with --nats'),
                    partitions: opts.partitions,
                    replicas: opts.replicas,
                    node: opts.node,
                    leaseMs: opts.leaseMs,
                  },
                  io,
                  stop.signal,
                )
          setExitCode(code)
        } catch (error) {
          if (!(error instanceof ServeError)) throw error
          io.stderr.write(`dualstream serve: ${error.message}\n`)
          setExitCode(EXIT_USAGE)
        } finally {
          process.off('SIGINT', onSignal)
          process.off('SIGTERM', onSignal)
        }
      },
    )
  program
    .command('cluster')
    .description('Commands about a cluster run on NATS JetStream.')
    .command('status')
    .description(
      "Nodes, who holds which lease, stream sizes, the step and λ, unacknowledged steps and the trainer's last acknowledgement of a cluster run (read from NATS; no node needs to answer).",
    )
    .requiredOption('--nats <urls>', 'NATS servers (nats://host:port,…)')
    .option('--nats-creds <file>', 'NATS credentials file (.creds)')
    .requiredOption('--run <name>', 'the cluster run')
    .option('--json', 'one JSON object instead of text')
    .action(async (opts: { nats: string; natsCreds?: string; run: string; json?: boolean }) => {
      try {
        const nc = await connectNats({ servers: opts.nats, credsFile: opts.natsCreds, name: 'dualstream cluster status' })
        try {
          const status = await clusterStatus(nc, opts.run)
          io.stdout.write(opts.json === true ? JSON.stringify(status) + '\n' : formatClusterStatus(status))
        } finally {
          await nc.close()
        }
      } catch (error) {
        io.stderr.write(`dualstream cluster status: ${(error as Error).message}\n`)
        setExitCode(EXIT_DATA)
      }
    })

  addTrainCommands(program, io)
  return program
}

/** A cluster command could not reach NATS or find its run: said in one line, exit 1. */
class ClusterCommandError extends Error {}

/**
 * The certificate and key of `--tls-cert` and `--tls-key` (undefined without both), read and
 * checked here so that a problem names the file; a `ServeError` for a missing half, a file
 * that cannot be read, or contents that are not a PEM certificate and its key.
 */
function readTlsFiles(certFile: string | undefined, keyFile: string | undefined): TlsCredentials | undefined {
  if (certFile === undefined && keyFile === undefined) return undefined
  if (keyFile === undefined) throw new ServeError('--tls-cert needs --tls-key (the private key of the certificate)')
  if (certFile === undefined) throw new ServeError('--tls-key needs --tls-cert (the certificate of the key)')
  const read = (file: string, what: string): Buffer => {
    try {
      return readFileSync(file)
    } catch (error) {
      throw new ServeError(`cannot read the TLS ${what} ${file}: ${(error as Error).message}`)
    }
  }
  const credentials = { cert: read(certFile, 'certificate'), key: read(keyFile, 'key') }
  const problem = tlsProblem(credentials, { cert: certFile, key: keyFile })
  if (problem !== undefined) throw new ServeError(problem)
  return credentials
}

/** A value the invocation needs: a `ServeError` naming the flag when it is missing. */
function required<T>(value: T | undefined, flag: string): T {
  if (value === undefined) throw new ServeError(`${flag} is required`)
  return value
}

/** A `--disk-reserve` value: "auto", or a size in bytes with an optional K/M/G/T suffix. */
function sizeOption(value: string): number | 'auto' {
  return value === 'auto' ? 'auto' : parseBytesOption(value)
}

/** A size in bytes with an optional K/M/G/T suffix, more than 0. */
function bytesOption(value: string): number {
  const bytes = parseBytesOption(value)
  if (bytes === 0) throw new InvalidArgumentError(`expected a size of more than 0 bytes, got ${value}`)
  return bytes
}

function parseBytesOption(value: string): number {
  try {
    return parseBytes(value)
  } catch (error) {
    throw new InvalidArgumentError((error as Error).message)
  }
}

/** The size of a replay input file ("-" = stdin: unknown), for the progress bar. */
function fileSize(path: string): number | undefined {
  if (path === '-') return undefined
  try {
    return statSync(path).size
  } catch {
    return undefined // the stream reports the error
  }
}

/** Runs the CLI on argv (without node and script) and resolves to the exit code. */
export async function run(argv: string[], io: CliIO): Promise<number> {
  let code = 0
  const program = buildProgram(io, (c) => (code = c))
  try {
    await program.parseAsync(argv, { from: 'user' })
  } catch (error) {
    if (error instanceof ConfigError) {
      io.stderr.write(`dualstream: ${error.message}\n`)
      return EXIT_USAGE
    }
    const exit = error as { code?: string; exitCode?: number }
    if (typeof exit.code === 'string' && exit.code.startsWith('commander.')) return exit.exitCode === 0 ? 0 : EXIT_USAGE
    // not a problem of the input or the invocation: a bug or the environment; show everything
    io.stderr.write(`dualstream: ${inspect(error)}\n`)
    return 1
  }
  return code
}
