// A peer of the bench: fast-gateway 5.0.1 (restana + fast-proxy-lite) from the peers folder, with
// one route /bench to UPSTREAM (the path forwarded unchanged), its defaults otherwise, and a
// keep-alive agent of CONNECTIONS sockets like the other proxies' pools. Prints {"port": N} once
// listening. Env: UPSTREAM, PORT, HOST, CONNECTIONS, PEERS_DIR.
import type { Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { peerRequire } from './peers.js'

/** The part of fast-gateway used here (its own types are not where tsc looks). */
interface GatewayRoute {
  prefix: string
  prefixRewrite: string
  target: string
  proxyConfig: { maxSockets: number, maxFreeSockets: number }
}
interface Restana {
  start: (port: number, host: string) => Promise<Server>
  close: () => Promise<void>
}
type FastGateway = (opts: { routes: GatewayRoute[], enableServicesEndpoint: boolean }) => Restana

const upstream = process.env.UPSTREAM
if (upstream === undefined || upstream === '') {
  console.error('peer-fast-gateway: set UPSTREAM')
  process.exit(1)
}
const connections = Number(process.env.CONNECTIONS ?? 128)
const gateway = peerRequire()('fast-gateway') as FastGateway
const server = gateway({
  enableServicesEndpoint: false,
  routes: [{ prefix: '/bench', prefixRewrite: '/bench', target: upstream, proxyConfig: { maxSockets: connections, maxFreeSockets: connections } }]
})
const http = await server.start(Number(process.env.PORT ?? 0), process.env.HOST ?? '127.0.0.1')
console.log(JSON.stringify({ port: (http.address() as AddressInfo).port }))

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.once(signal, () => {
    http.closeAllConnections()
    server.close().then(() => process.exit(0), () => process.exit(1))
  })
}
