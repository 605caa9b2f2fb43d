/**
 * Checks a TLS certificate and key before a server is built on them. `node:https` would only
 * throw while the server is being constructed — after the engine has opened its data folder —
 * and OpenSSL's message ("PEM routines::no start line") does not say which of the two is wrong.
 */
import { createPrivateKey, X509Certificate } from 'node:crypto'
import { createSecureContext } from 'node:tls'
import type { TlsCredentials } from '../../streams/host/index.js'

/** How the certificate and the key are named in the problem (the CLI names its files). */
export interface TlsNames {
  cert: string
  key: string
}

const reason = (error: unknown): string => (error as Error).message

/**
 * What is wrong with `credentials` — a certificate that is not PEM, a key that is not a PEM
 * private key (or is encrypted), a key that is not the certificate's — naming the part by
 * `names`; undefined when a TLS server can be built on them.
 *
 * @example
 * tlsProblem({ cert: readFileSync('cert.pem'), key: readFileSync('key.pem') }, { cert: 'cert.pem', key: 'key.pem' })
 * // undefined, or e.g. 'the TLS key key.pem is not a PEM private key (error:1E08010C:DECODER routines::unsupported)'
 */
export function tlsProblem(credentials: TlsCredentials, names: TlsNames = { cert: 'tls.cert', key: 'tls.key' }): string | undefined {
  try {
    // X509Certificate refuses an empty one, a secure context one in DER (node:https takes PEM only)
    new X509Certificate(credentials.cert)
    createSecureContext({ cert: credentials.cert })
  } catch (error) {
    return `the TLS certificate ${names.cert} is not a PEM certificate (${reason(error)})`
  }
  try {
    createPrivateKey(credentials.key)
  } catch (error) {
    return `the TLS key ${names.key} is not a PEM private key, or is encrypted (${reason(error)})`
  }
  try {
    createSecureContext({ cert: credentials.cert, key: credentials.key })
  } catch (error) {
    return `the TLS key ${names.key} does not go with the certificate ${names.cert} (${reason(error)})`
  }
  return undefined
}
