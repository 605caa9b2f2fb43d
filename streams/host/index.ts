/** The shared HTTP + WebSocket host (httpHost.ts) and what goes with it: route types, JSON answers, static files, the heartbeat. */
export { HttpHost, HOST_DEFAULTS, type HostOptions, type ListenResult, type TlsCredentials } from './httpHost.js'
export { Heartbeat } from './heartbeat.js'
export { parseUrl, refuseUnlessRead, sendJson, type Endpoint, type HttpRoute, type Mountable } from './routes.js'
export { staticFile } from './staticFile.js'
