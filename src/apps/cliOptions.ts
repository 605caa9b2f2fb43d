/** Parsers of command-line option values shared by the commands. */
import { InvalidArgumentError } from 'commander'

/** A commander parser for an integer option within bounds. */
export function integerOption(min: number, max = Number.MAX_SAFE_INTEGER): (value: string) => number {
  return (value) => {
    const n = Number(value)
    if (!Number.isSafeInteger(n) || n < min || n > max)
      throw new InvalidArgumentError(max === Number.MAX_SAFE_INTEGER ? `must be an integer >= ${min}.` : `must be an integer from ${min} to ${max}.`)
    return n
  }
}
