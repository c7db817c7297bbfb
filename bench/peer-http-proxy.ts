// A peer of the bench: @fastify/http-proxy 11 from the peers folder, on the project's Fastify
// (the same as the bare proxy's), prefix /bench to UPSTREAM (the path forwarded unchanged),
// logger off, undici pool of CONNECTIONS. Prints {"port": N} once listening.
// Env: UPSTREAM, PORT, HOST, CONNECTIONS, PEERS_DIR.
import Fastify, { type FastifyPluginCallback } from 'fastify'
import { peerRequire } from './peers.js'
import { serve } from './serve.js'

interface HttpProxyOptions {
  upstream: string
  prefix: string
  rewritePrefix: string
  undici: { connections: number, pipelining: number }
}

const upstream = process.env.UPSTREAM
if (upstream === undefined || upstream === '') {
  console.error('peer-http-proxy: set UPSTREAM')
  process.exit(1)
}
// CommonJS: module.exports is the plugin.
const httpProxy = peerRequire()('@fastify/http-proxy') as FastifyPluginCallback<HttpProxyOptions>

const app = Fastify({ logger: false })
await app.register(httpProxy, {
  upstream,
  prefix: '/bench',
  rewritePrefix: '/bench',
  undici: { connections: Number(process.env.CONNECTIONS ?? 128), pipelining: 1 }
})
await serve(app)
