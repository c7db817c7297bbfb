// The benchmark's baseline: the least a Fastify + @fastify/reply-from proxy can be, to one
// upstream (env UPSTREAM, e.g. http://127.0.0.1:9001). Logger off, no routing, no checks.
// Prints {"port": N} on stdout once listening (PORT=0 picks a free port).
import Fastify from 'fastify'
import replyFrom from '@fastify/reply-from'
import { serve } from './serve.js'

const upstream = process.env.UPSTREAM
if (upstream === undefined || upstream === '') {
  console.error('bare-proxy: set UPSTREAM, e.g. UPSTREAM=http://127.0.0.1:9001')
  process.exit(1)
}

const app = Fastify({ logger: false })
await app.register(replyFrom, {
  base: upstream,
  // Same pool size as the gateway's target in the bench, so only the proxy code differs.
  undici: { connections: Number(process.env.CONNECTIONS ?? 128), pipelining: 1 }
})
app.all('/*', (request, reply) => reply.from(request.url))

await serve(app)
