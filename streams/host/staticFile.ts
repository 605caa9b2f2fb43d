/** Static files for the host: read once, served from memory (the dashboard's files, see ../telemetry/routes.ts). */
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { refuseUnlessRead, type HttpRoute } from './routes.js'

/**
 * A file read once and served from memory with an ETag (304 when the client has it), to
 * GET and HEAD only; `headers` go with every 200.
 *
 * @example host.addHttpRoute('/', staticFile(`${dir}index.html`, 'text/html; charset=utf-8'))
 */
export function staticFile(path: string, type: string, headers: Record<string, string> = {}): HttpRoute {
  const body = readFileSync(path)
  const etag = `"${createHash('sha1').update(body).digest('base64url')}"`
  return (request, response) => {
    if (refuseUnlessRead(request, response)) return
    if (request.headers['if-none-match'] === etag) {
      response.writeHead(304, { ETag: etag })
      return void response.end()
    }
    response.writeHead(200, { 'Content-Type': type, 'Content-Length': body.length, 'Cache-Control': 'no-cache', ETag: etag, ...headers })
    response.end(request.method === 'HEAD' ? undefined : body)
  }
}
