/**
 * Bearer tokens per role (DESIGN §6), checked at the HTTP upgrade before any frame is read.
 * A token comes as `Authorization: Bearer …` or `?token=…`; comparison is constant-time.
 */
import { timingSafeEqual, createHash } from 'node:crypto'
import type { IncomingMessage } from 'node:http'
import { isIP } from 'node:net'
import type { Duplex } from 'node:stream'

export type Role = 'producer' | 'trainer' | 'viewer'

/** The configured token of each role; a role without one is open (loopback only). */
export type RoleTokens = Partial<Record<Role, string>>

/** The environment variable holding each role's token. */
export const TOKEN_ENV: Record<Role, string> = {
  producer: 'DUALSTREAM_PRODUCER_TOKEN',
  trainer: 'DUALSTREAM_TRAINER_TOKEN',
  viewer: 'DUALSTREAM_VIEWER_TOKEN',
}

/** Reads the role tokens from the environment (empty values count as unset). */
export function tokensFromEnv(env: NodeJS.ProcessEnv): RoleTokens {
  const tokens: RoleTokens = {}
  for (const role of Object.keys(TOKEN_ENV) as Role[]) {
    const value = env[TOKEN_ENV[role]]
    if (value !== undefined && value !== '') tokens[role] = value
  }
  return tokens
}

/** Whether a host name or address only accepts connections from this machine. */
export function isLoopback(host: string): boolean {
  const bare = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host
  if (bare === 'localhost') return true
  if (isIP(bare) === 4) return bare.startsWith('127.')
  if (isIP(bare) === 6) return bare === '::1' || bare.toLowerCase().startsWith('::ffff:127.')
  return false
}

/** A server may not listen beyond loopback unless these roles have tokens (telemetry exposes the run's figures: viewers too). */
export const ROLES_REQUIRED_OFF_LOOPBACK: readonly Role[] = ['producer', 'trainer', 'viewer']

/** Refuses a non-loopback bind without tokens: returns the problem, or undefined when fine. */
export function bindProblem(host: string, tokens: RoleTokens, required: readonly Role[] = ROLES_REQUIRED_OFF_LOOPBACK): string | undefined {
  if (isLoopback(host)) return undefined
  const missing = required.filter((role) => tokens[role] === undefined)
  if (missing.length === 0) return undefined
  const names = missing.map((role) => TOKEN_ENV[role])
  const list = names.length === 1 ? names[0] : `${names.slice(0, -1).join(', ')} and ${names[names.length - 1]}`
  return `refusing to listen on ${host} (not loopback) without tokens: set ${list}`
}

// hashing first makes the comparison constant-time whatever the lengths
const digest = (s: string) => createHash('sha256').update(s).digest()
const sameToken = (a: string, b: string) => timingSafeEqual(digest(a), digest(b))

/** The token a request presents: the Bearer header first, else `?token=`. */
export function presentedToken(request: IncomingMessage, url: URL): string | undefined {
  const header = request.headers.authorization
  if (header !== undefined) {
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header)
    return match === null ? undefined : match[1]
  }
  return url.searchParams.get('token') ?? undefined
}

/**
 * Checks a request against the token of `role`. Returns undefined when allowed, else the
 * reason for the 401. A role without a configured token is open.
 */
export function authorize(request: IncomingMessage, url: URL, role: Role, tokens: RoleTokens): string | undefined {
  const expected = tokens[role]
  if (expected === undefined) return undefined
  const token = presentedToken(request, url)
  if (token === undefined) {
    return request.headers.authorization !== undefined
      ? 'malformed Authorization header (expected "Bearer <token>")'
      : `missing token: the ${role} token is required (Authorization: Bearer … or ?token=…)`
  }
  if (sameToken(token, expected)) return undefined
  const other = (Object.keys(tokens) as Role[]).find((r) => r !== role && sameToken(token, tokens[r]!))
  return other !== undefined ? `a ${other} token cannot open this endpoint: the ${role} token is required` : `wrong token for role ${role}`
}

/** Answers an upgrade request with an HTTP error and closes the socket before any frame. */
export function refuseUpgrade(socket: Duplex, status: 400 | 401 | 404 | 503, reason: string): void {
  const text = { 400: 'Bad Request', 401: 'Unauthorized', 404: 'Not Found', 503: 'Service Unavailable' }[status]
  const body = `${JSON.stringify({ error: reason })}\n`
  const headers = [
    `HTTP/1.1 ${status} ${text}`,
    'Connection: close',
    'Content-Type: application/json',
    `Content-Length: ${Buffer.byteLength(body)}`,
    ...(status === 401 ? ['WWW-Authenticate: Bearer realm="dualstream"'] : []),
  ]
  // as ws's own abortHandshake: destroy once the response is written
  socket.once('finish', () => socket.destroy())
  socket.end(`${headers.join('\r\n')}\r\n\r\n${body}`)
}
