/**
 * The cluster's connection to NATS (DESIGN §8), from what a user types after `--nats`: a
 * comma-separated list of server URLs, credentials either in the URLs or in a `.creds` file.
 *
 * - `nats://host:4222` plain; `tls://host:4222` TLS (with `tlsCaFile` to trust a private CA;
 *   a CA file alone also turns TLS on). One TLS setting covers every server of a connection,
 *   so a list mixing `nats://` and `tls://` is refused rather than half-honoured.
 * - `nats://user:password@host:4222` user and password; `nats://token@host:4222` a token.
 *   They go to the connect options and out of the server list (nats.js ignores userinfo),
 *   and no message repeats them. Percent-escapes are decoded (`p%40ss` is `p@ss`).
 * - `credsFile`: a decentralised-auth `.creds` file (JWT + NKey seed).
 *
 * The connection reconnects forever (a cluster node outlives any NATS server's restart);
 * only the first connection must succeed, and when it cannot, the error names the servers
 * tried and why. It retries a server every 250 ms rather than nats.js's 2 s: when the server
 * a node is connected to dies, nats.js may first wait out that server's retry interval
 * before it tries the next one, and the node's leases must be renewed through another
 * server well within their margin (measured: a 1.1–1.7 s gap with the default, on a
 * connection less than 2 s old).
 */
import { readFile } from 'node:fs/promises'
import { connect, credsAuthenticator, type NatsConnection, type NodeConnectionOptions } from '@nats-io/transport-node'

export interface NatsConnectOptions {
  /** `nats://a:4222,tls://b:4222`, optionally with `user:pass@` or `token@` in the URLs. */
  servers: string
  /** A `.creds` file (decentralised JWT auth). */
  credsFile?: string
  /** The connection's name, as the server's monitoring shows it (e.g. the node id). */
  name?: string
  /** A PEM file of the CA that signed the servers' certificates; turns TLS on. */
  tlsCaFile?: string
  /** How long to wait before dialling the same server again (default 250 ms). */
  reconnectTimeWaitMs?: number
}

/** A `--nats` list taken apart: the servers without credentials, and the credentials once. */
export interface NatsServerList {
  /** `host:port` per server, as nats.js takes them. */
  servers: string[]
  /** The URLs without credentials, for messages: `nats://a:4222,tls://b:4222`. */
  display: string
  tls: boolean
  user?: string
  pass?: string
  token?: string
}

/**
 * Parses a `--nats` list (see the file's comment). Throws on an empty list, a URL that does
 * not parse, a scheme other than nats:// or tls://, a mix of the two, or URLs that disagree
 * on their credentials.
 *
 * @example
 * parseNatsServers('nats://u:p@10.0.0.1:4222,nats://10.0.0.2')
 * // { servers: ['10.0.0.1:4222', '10.0.0.2:4222'], display: 'nats://10.0.0.1:4222,nats://10.0.0.2:4222', tls: false, user: 'u', pass: 'p' }
 */
export function parseNatsServers(list: string): NatsServerList {
  const entries = list
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '')
  if (entries.length === 0) throw new Error(`no NATS server in '${list}': expected e.g. nats://127.0.0.1:4222`)
  const servers: string[] = []
  const shown: string[] = []
  const schemes = new Set<string>()
  const credentials = new Set<string>()
  let userinfo: { user: string; pass?: string } | undefined
  for (const entry of entries) {
    let url: URL
    try {
      url = new URL(entry.includes('://') ? entry : `nats://${entry}`)
    } catch {
      throw new Error(`'${entry}' in the NATS server list is not a URL: expected nats://host:port or tls://host:port`)
    }
    if (url.protocol !== 'nats:' && url.protocol !== 'tls:') {
      throw new Error(`'${url.protocol}//' in the NATS server list is not supported: use nats://host:port, or tls://host:port for TLS`)
    }
    schemes.add(url.protocol)
    const hostPort = `${url.hostname}:${url.port === '' ? 4222 : url.port}`
    servers.push(hostPort)
    shown.push(`${url.protocol}//${hostPort}`)
    if (url.username === '') continue
    credentials.add(`${url.username}:${url.password}`)
    userinfo = { user: decodeURIComponent(url.username), pass: url.password === '' ? undefined : decodeURIComponent(url.password) }
  }
  const display = shown.join(',')
  if (schemes.size > 1) throw new Error(`the NATS servers ${display} mix nats:// and tls://: one connection uses TLS with every server or with none`)
  if (credentials.size > 1)
    throw new Error(`the NATS servers ${display} carry different credentials in their URLs: give the same user:pass@ or token@ in each, or in one only`)
  const parsed: NatsServerList = { servers, display, tls: schemes.has('tls:') }
  if (userinfo?.pass !== undefined) Object.assign(parsed, { user: userinfo.user, pass: userinfo.pass })
  else if (userinfo !== undefined) parsed.token = userinfo.user
  return parsed
}

/**
 * Connects to NATS and returns the connection, which then reconnects forever on its own.
 * Rejects when the first connection fails, naming the servers tried and why (refused,
 * authorization violation, TLS failure, …), or when the credentials file cannot be read.
 *
 * @example
 * const nc = await connectNats({ servers: 'nats://127.0.0.1:4222,nats://127.0.0.1:4223', name: 'node-a' })
 * const js = jetstream(nc)
 */
export async function connectNats(options: NatsConnectOptions): Promise<NatsConnection> {
  const parsed = parseNatsServers(options.servers)
  if (options.credsFile !== undefined && (parsed.user !== undefined || parsed.token !== undefined)) {
    throw new Error(`NATS credentials given twice: in the URLs ${parsed.display} and in the file ${options.credsFile}; keep one`)
  }
  const connectOptions: NodeConnectionOptions = {
    servers: parsed.servers,
    name: options.name,
    user: parsed.user,
    pass: parsed.pass,
    token: parsed.token,
    maxReconnectAttempts: -1,
    reconnectTimeWait: options.reconnectTimeWaitMs ?? 250,
    waitOnFirstConnect: false,
    // nats.js otherwise builds an Error per request up front (for the caller's stack should it
    // fail): ≈ 4% of a cluster node's CPU at full ingest. Our errors name what failed in the message.
    noAsyncTraces: true,
  }
  if (options.credsFile !== undefined) {
    const creds = await readFile(options.credsFile).catch((error: Error) => {
      throw new Error(`cannot read the NATS credentials file ${options.credsFile}: ${error.message}`, { cause: error })
    })
    connectOptions.authenticator = credsAuthenticator(creds)
  }
  if (parsed.tls || options.tlsCaFile !== undefined) connectOptions.tls = options.tlsCaFile === undefined ? {} : { caFile: options.tlsCaFile }
  try {
    return await connect(connectOptions)
  } catch (error) {
    throw new Error(`cannot connect to NATS at ${parsed.display}: ${(error as Error).message}`, { cause: error })
  }
}
