// Rate limits of routes: @fastify/rate-limit runs the check on the proxy routes, with a store
// that asks Redis (REDIS_URL) or memory, and falls back per route when Redis fails.
import { randomUUID } from 'node:crypto'
import { hostname } from 'node:os'
import type { FastifyInstance, FastifyReply, FastifyRequest, onRequestHookHandler } from 'fastify'
import fastifyRateLimit from '@fastify/rate-limit'
import fp from 'fastify-plugin'
import type { RedisConnection } from '../../src/config/redis-url.js'
import { RateLimitedError, RateLimitUnavailableError } from '../../src/errors.js'
import { DurationHistogram } from '../../src/stats/duration-histogram.js'
import type { RouteMatch } from '../route-table/index.js'
import type { CompiledLimit } from '../route-table/route-table.js'
import { MemoryLimitStore } from './store/memory.js'
import { RedisLimitStore } from './store/redis.js'
import type { LimitDecision } from './store/types.js'

export interface RateLimitOptions {
  /** Unset: limits are kept in this process. */
  redis: RedisConnection | undefined
  /** Prefix of every key in Redis: deployments sharing one Redis keep apart with their own. */
  redisKeyPrefix: string
  /** Longest wait for one Redis call. */
  redisTimeoutMs: number
}

/** What /ready and /metrics tell about the limiter. */
export interface RateLimitState {
  store: 'memory' | 'redis' | 'fallback'
  storeErrors: number
  /** Requests refused with 429, by limit id. */
  rejected: Map<string, number>
  /** Time of each decision, fallbacks included. */
  latency: DurationHistogram
  /** Live gateway replicas last counted in Redis (1 without Redis): the local fallback divides max by it. */
  replicas: number
  /** Why Redis is not usable right now (connection refused, authentication failed, ...); undefined when it is, or without Redis. */
  storeCause: () => string | undefined
}

declare module 'fastify' {
  interface FastifyInstance {
    rateLimitState: RateLimitState
    /** Pipeline hook, after authenticate: applies the route's limit (429), passes routes without one. */
    checkRateLimit: onRequestHookHandler
  }
}

const HEARTBEAT_EVERY_MS = 5000
const HEARTBEAT_TTL_MS = 15_000
const STARTUP_WAIT_MS = 2000

type IncrCallback = (err: Error | null, result?: { current: number, ttl: number }) => void

/**
 * A client's header or claim value as it goes into a Redis key: control characters (a header
 * value may hold a tab, a claim anything) and `%` percent-encoded, so an operator can read and
 * delete the key with redis-cli, and two values never share one key.
 */
function printable (value: string): string {
  // eslint-disable-next-line no-control-regex -- the control characters are what is escaped
  return /[\x00-\x1f\x7f%]/.test(value) ? value.replace(/[\x00-\x1f\x7f%]/g, c => `%${c.charCodeAt(0).toString(16).toUpperCase().padStart(2, '0')}`) : value
}

async function rateLimitPlugin (app: FastifyInstance, opts: RateLimitOptions): Promise<void> {
  const redis = opts.redis === undefined ? undefined : new RedisLimitStore(opts.redis, { keyPrefix: opts.redisKeyPrefix, commandTimeoutMs: opts.redisTimeoutMs })
  // The store without Redis; with Redis, the per-route fallback (onStoreError: local).
  const memory = new MemoryLimitStore()
  const state: RateLimitState = { store: redis === undefined ? 'memory' : 'redis', storeErrors: 0, rejected: new Map(), latency: new DurationHistogram(), replicas: 1, storeCause: () => redis?.cause }
  app.decorate('rateLimitState', state)

  // The switch to and from the fallback is logged once, not per request.
  const failed = (err: unknown): void => {
    state.storeErrors++
    if (state.store !== 'fallback') {
      state.store = 'fallback'
      // The cause, once: a stack would say only where ioredis noticed.
      app.log.error({ error: (err as Error).message }, 'rate-limit store failed: routes fall back to their onStoreError policy')
    }
  }
  const recovered = (): void => {
    if (state.store === 'fallback') {
      state.store = 'redis'
      app.log.info('rate-limit store recovered')
    }
  }

  /**
   * The store @fastify/rate-limit calls: `incr(key, callback, timeWindow, max)` (its index.js,
   * applyRateLimit), with max and timeWindow from the functions below. Its key is
   * `<limit id>:<client key>` (limit ids have no colon). The plugin passes a store nothing else of the request, so the
   * algorithm and the onStoreError policy are read from the live route table by the limit's id.
   */
  class GatewayStore {
    incr (key: string, callback: IncrCallback, timeWindow: number, max: number): void {
      const limit = app.routeTable.table.limits.get(key.slice(0, key.indexOf(':')))
      // A limit a reload removed while this request waited: its max and window still apply.
      const algorithm = limit?.algorithm ?? 'sliding-log'
      const onStoreError = limit?.onStoreError ?? 'local'
      const began = performance.now()
      const answer = (d: LimitDecision): void => {
        state.latency.observe((performance.now() - began) / 1000)
        // The plugin refuses when current > max and sends max - current as remaining. The stores
        // count admitted requests only (a refused one consumes nothing), so a refused request is
        // the one past the limit; the ttl is x-ratelimit-reset, or Retry-After when refused.
        callback(null, d.allowed ? { current: max - d.remaining, ttl: d.resetMs } : { current: max + 1, ttl: d.retryAfterMs })
      }
      if (redis === undefined) {
        // In memory: decided now, no promise (a bad argument throws; the plugin's promise rejects).
        answer(memory.decide(key, max, timeWindow, algorithm))
        return
      }
      redis.hit(key, max, timeWindow, algorithm).then(d => { recovered(); answer(d) }, err => {
        failed(err)
        // open: admitted and not counted (nothing could count it).
        if (onStoreError === 'open') answer({ allowed: true, limit: max, remaining: max, retryAfterMs: 0, resetMs: timeWindow })
        else if (onStoreError === 'closed') callback(new RateLimitUnavailableError({ cause: err }))
        else {
          try {
            answer(memory.decide(key, Math.max(1, Math.floor(max / state.replicas)), timeWindow, algorithm))
          } catch (e) {
            callback(e as Error)
          }
        }
      })
    }

    child (): GatewayStore {
      return this
    }
  }

  const limitOf = (request: FastifyRequest): CompiledLimit => (request.match as RouteMatch).route.rateLimit as CompiledLimit

  await app.register(fastifyRateLimit, {
    global: false,
    store: GatewayStore as never,
    // x-ratelimit-limit, -remaining, -reset and Retry-After come from the plugin, on every response.
    errorResponseBuilder: (request, context) => {
      const limit = limitOf(request)
      state.rejected.set(limit.id, (state.rejected.get(limit.id) ?? 0) + 1)
      request.span?.addEvent('rate_limit.rejected', { 'gatehouse.rate_limit.id': limit.id, 'gatehouse.rate_limit.max': context.max, 'gatehouse.rate_limit.window_s': Math.ceil(limit.windowMs / 1000) })
      return new RateLimitedError(context.max, `${Math.ceil(limit.windowMs / 1000)}s`)
    }
  })
  const keyGenerator = (request: FastifyRequest): string => {
    const limit = limitOf(request)
    const key = limit.key
    if (key.kind === 'ip') return `${limit.id}:${request.ip}`
    // A missing header or claim is a key of its own (shared by all requests without one).
    const value = key.kind === 'header' ? request.headers[key.name] : request.identity?.claims[key.name]
    return `${limit.id}:${key.kind[0] as string}:${printable(typeof value === 'string' ? value : value === undefined ? '' : JSON.stringify(value))}`
  }
  // One check per compiled limit, made when a request first meets it, with max and timeWindow as
  // numbers: the plugin awaits a function option on every request, a number it reads
  // (applyRateLimit). A reload compiles new limits; the old ones' checks go with them.
  const checks = new WeakMap<CompiledLimit, ReturnType<typeof app.rateLimit>>()
  const checkOf = (limit: CompiledLimit): ReturnType<typeof app.rateLimit> => {
    let check = checks.get(limit)
    if (check === undefined) {
      check = app.rateLimit({ keyGenerator, max: limit.max, timeWindow: limit.windowMs })
      checks.set(limit, check)
    }
    return check
  }

  // After the route is resolved and the client authenticated. A route without a limit costs one check.
  app.decorate('checkRateLimit', function checkRateLimit (request: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void): void {
    const limit = request.match?.route.rateLimit
    if (limit === undefined) {
      done()
      return
    }
    // The route's policy (draft-ietf-httpapi-ratelimit-headers): configuration, the same on every response.
    reply.header('ratelimit-policy', limit.policy)
    checkOf(limit).call(app, request, reply).then(() => done(), done)
  })

  // A gateway that starts while Redis is still connecting would refuse its first requests on the
  // fallback: wait a little for it. A Redis that does not answer in time is a store failure.
  if (redis !== undefined) await redis.ready(STARTUP_WAIT_MS).catch(failed)

  // Heartbeats: every replica counts the live ones, so a local fallback keeps the total near max
  // (100 per minute stays about 100 in total, not 100 per replica, while Redis is away).
  let heartbeat: NodeJS.Timeout | undefined
  if (redis !== undefined) {
    const id = `${hostname()}:${process.pid}:${randomUUID()}`
    const beat = (): void => {
      redis.heartbeat(id, HEARTBEAT_TTL_MS).then(n => { state.replicas = Math.max(1, n) }, () => {})
    }
    // The client connects in the background and queues nothing: the first beat waits for it.
    redis.ready().then(beat, () => {})
    heartbeat = setInterval(beat, HEARTBEAT_EVERY_MS)
    heartbeat.unref()
  }

  app.addHook('onClose', async () => {
    clearInterval(heartbeat)
    await Promise.all([redis?.close(), memory.close()])
  })
}

export default fp(rateLimitPlugin, { name: 'gatehouse-rate-limit', fastify: '5.x', dependencies: ['gatehouse-route-table'] })
