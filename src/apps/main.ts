#!/usr/bin/env node
/** Process entry point of the `dualstream` command. */
import { run } from './cli.js'
import { letLmdbCommitFailuresThrough } from './processGuards.js'

process.on('unhandledRejection', letLmdbCommitFailuresThrough)

process.exitCode = await run(process.argv.slice(2), process)
