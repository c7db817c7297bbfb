// The benchmark's baseline: the least a Fastify + @fastify/reply-from proxy can be, to one
// upstream (env UPSTREAM, e.g. http://127.0.0.1:9001). Logger off, no routing, no checks.
// Prints {"port": N} on stdout once listening (PORT=0 picks a free port).
//
// BARE_FEATURE adds one of Gatehouse's chosen packages the way its own documentation sets it up,
// and nothing else: what that package costs on its own, the floor for the same feature in Gatehouse.
//   log           Fastify's logger at info (its request log: two lines per request) to LOG_FILE
//   limit-memory  @fastify/rate-limit, its in-memory store (LIMIT_MAX per LIMIT_WINDOW_MS, by IP)
//   limit-redis   @fastify/rate-limit, its Redis store on an ioredis client of REDIS_URL
//   tracing       @fastify/otel in the OpenTelemetry Node SDK, configured by the OTEL_* variables
//   post          request bodies of any type passed to reply-from as the raw stream (as @fastify/http-proxy does)
import Fastify, { type FastifyPluginCallback } from 'fastify'
import replyFrom from '@fastify/reply-from'
import { serve } from './serve.js'

const upstream = process.env.UPSTREAM
if (upstream === undefined || upstream === '') {
  console.error('bare-proxy: set UPSTREAM, e.g. UPSTREAM=http://127.0.0.1:9001')
  process.exit(1)
}
const feature = process.env.BARE_FEATURE ?? 'none'

/** The SDK's tracing plugin, started before Fastify exists (as @fastify/otel's README does it). */
async function startTracing (): Promise<FastifyPluginCallback> {
  const [{ NodeSDK }, { FastifyOtelInstrumentation }] = await Promise.all([import('@opentelemetry/sdk-node'), import('@fastify/otel')])
  process.env.OTEL_METRICS_EXPORTER ??= 'none'
  process.env.OTEL_LOGS_EXPORTER ??= 'none'
  const otel = new FastifyOtelInstrumentation()
  new NodeSDK({ instrumentations: [otel] }).start()
  return otel.plugin()
}

const tracing = feature === 'tracing' ? await startTracing() : undefined
const app = Fastify({ logger: feature === 'log' ? { level: 'info', file: process.env.LOG_FILE as string } : false })
if (tracing !== undefined) await app.register(tracing)
if (feature === 'limit-memory' || feature === 'limit-redis') {
  const { default: rateLimit } = await import('@fastify/rate-limit')
  const redis = feature === 'limit-redis' ? new (await import('ioredis')).Redis(process.env.REDIS_URL as string) : undefined
  await app.register(rateLimit, {
    max: Number(process.env.LIMIT_MAX),
    timeWindow: Number(process.env.LIMIT_WINDOW_MS),
    ...(redis === undefined ? {} : { redis })
  })
}
if (feature === 'post') app.addContentTypeParser('*', (_request, payload, done) => { done(null, payload) })
await app.register(replyFrom, {
  base: upstream,
  // Same pool size as the gateway's target in the bench, so only the proxy code differs.
  undici: { connections: Number(process.env.CONNECTIONS ?? 128), pipelining: 1 }
})
app.all('/*', (request, reply) => reply.from(request.url))

await serve(app)
