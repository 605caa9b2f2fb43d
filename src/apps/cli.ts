/**
 * The `dualstream` command line: `replay`, `export` (and the commands added by the engine: `serve`,
 * `train`, `eval`, `bench`).
 */
import { inspect } from 'node:util'
import { createReadStream, createWriteStream, statSync, type ReadStream } from 'node:fs'
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
import { exportSteps } from './exportSteps.js'
import { tokensFromEnv } from '../../streams/auth.js'
import { SERVER_DEFAULTS } from '../../streams/engineServer.js'
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
    .option('-o, --out <file>', 'batch records, one JSON object per line ("-" = stdout)', '-')
    .addOption(new Option('--on-invalid <mode>', 'what to do with a malformed line or rollout').choices(['error', 'skip']).default('error'))
    .action(async (opts: { config: string; input: string; log?: string; out: string; onInvalid: 'error' | 'skip' }) => {
      const config = loadConfig(opts.config)
      const output = opts.out === '-' ? io.stdout : createWriteStream(opts.out)
      try {
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
        if (!(error instanceof ReplayInputError || error instanceof LogNotFoundError || isSystemError(error))) throw error
        const hint = error instanceof ReplayInputError ? '\n(use --on-invalid skip to skip and count such lines)' : ''
        io.stderr.write(`dualstream replay: ${error.message}${hint}\n`)
        setExitCode(EXIT_DATA)
      }
    })

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
    .requiredOption('-d, --data <dir>', 'data folder: ingest log, batches and state (LMDB; created if missing, restored if not)')
    .option('--host <host>', 'interface to listen on (beyond loopback only with tokens)', '127.0.0.1')
    .option('-p, --port <n>', 'port (0 = any free port)', integerOption(0, 65535), 8787)
    .option('--credit <n>', 'rollouts a producer may have unacknowledged', integerOption(1), SERVER_DEFAULTS.credit)
    .option(
      '--max-outbox <n>',
      'unacknowledged batches at which producers are paused (credit shrinks from half of it)',
      integerOption(1),
      SERVER_DEFAULTS.maxOutbox,
    )
    .option('--max-frame-bytes <n>', 'largest frame accepted', integerOption(1024), DEFAULT_WIRE_LIMITS.maxFrameBytes)
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
        data: string
        host: string
        port: number
        credit: number
        maxOutbox: number
        maxFrameBytes: number
        heartbeatMs: number
        diskReserve: number | 'auto'
      }) => {
        const config = loadConfig(opts.config)
        const stop = new AbortController()
        const onSignal = () => stop.abort()
        process.once('SIGINT', onSignal)
        process.once('SIGTERM', onSignal)
        try {
          const code = await serve(
            {
              config,
              dataDir: opts.data,
              host: opts.host,
              port: opts.port,
              tokens: tokensFromEnv(process.env),
              credit: opts.credit,
              maxOutbox: opts.maxOutbox,
              heartbeatMs: opts.heartbeatMs,
              limits: { maxFrameBytes: opts.maxFrameBytes },
              diskReserve: opts.diskReserve,
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
  addTrainCommands(program, io)
  return program
}

/** A `--disk-reserve` value: "auto", or a size in bytes with an optional K/M/G/T suffix. */
function sizeOption(value: string): number | 'auto' {
  if (value === 'auto') return 'auto'
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
