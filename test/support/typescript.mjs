/**
 * The tests' TypeScript loader (`.taprc` node-arg; the processes tests spawn inherit it with
 * `process.execArgv`): esbuild strips the types of each `.ts` file as it is imported, with an
 * inline source map for stack traces and coverage. The output keeps the source's lines (no
 * minifying) so that V8 coverage maps back exactly. It replaces tap's ts-node plugin, whose
 * TypeScript transpiler spent 2–3 s of CPU in every test process that loads the CLI.
 */
import { register } from 'node:module'

register('./typescriptHooks.mjs', import.meta.url)
