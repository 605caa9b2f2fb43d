#!/usr/bin/env node
/** Process entry point of the `dualstream` command. */
import { run } from './cli.js'

run(process.argv.slice(2), process).then(
  (code) => {
    process.exitCode = code
  },
  (error: unknown) => {
    process.stderr.write(`dualstream: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`)
    process.exitCode = 1
  },
)
