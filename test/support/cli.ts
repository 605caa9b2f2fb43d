/** Runs the CLI in-process with string stdin and captured stdout/stderr. */
import { spawn } from 'node:child_process'
import { PassThrough, Readable } from 'node:stream'
import { fileURLToPath } from 'node:url'
import { run } from '../../src/apps/cli.js'

export interface CliResult {
  code: number
  stdout: string
  stderr: string
}

export async function runCli(argv: string[], stdin = ''): Promise<CliResult> {
  const stdout = new PassThrough()
  const stderr = new PassThrough()
  const chunks = { out: [] as Buffer[], err: [] as Buffer[] }
  stdout.on('data', (c: Buffer) => chunks.out.push(c))
  stderr.on('data', (c: Buffer) => chunks.err.push(c))
  const code = await run(argv, { stdin: Readable.from([stdin]), stdout, stderr })
  return { code, stdout: Buffer.concat(chunks.out).toString(), stderr: Buffer.concat(chunks.err).toString() }
}

/** The CLI entry point as a separate process, run with the same loader as the tests. */
export const mainScript = fileURLToPath(new URL('../../src/apps/main.ts', import.meta.url))

export function spawnCli(argv: string[], stdin = '', env: NodeJS.ProcessEnv = process.env): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...process.execArgv, mainScript, ...argv], { env, stdio: ['pipe', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()))
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()))
    child.on('error', reject)
    child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }))
    child.stdin.end(stdin)
  })
}
