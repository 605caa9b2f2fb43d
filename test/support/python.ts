/** The system python for the tests that run Python: Debian's packages live there, not in a pyenv one that may come first on PATH. */
import { spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'

export const PYTHON = '/usr/bin/python3'

/**
 * Why a test needing the Python `modules` cannot run here (a tap `skip` reason), or false when
 * it can. `packages` are the Debian packages that provide them (.ci/run installs them).
 */
export function pythonMissing(modules: readonly string[], packages: readonly string[]): false | string {
  const probe = existsSync(PYTHON) ? spawnSync(PYTHON, ['-c', `import ${modules.join(', ')}`]) : undefined
  if (probe?.status === 0) return false
  const why = probe?.stderr.toString().trim().split('\n').at(-1) ?? 'no such file'
  return `${PYTHON} cannot import ${modules.join(', ')} (apt-get install ${packages.join(' ')}): ${why}`
}
