// Liveness (/health, via under-pressure) and readiness (/ready).
import type { FastifyInstance } from 'fastify'
import underPressure from '@fastify/under-pressure'
import fp from 'fastify-plugin'
import { NotReadyError } from '../../src/errors.js'

export interface HealthOptions {
  maxEventLoopDelayMs: number
  maxEventLoopUtilization: number
  maxHeapUsedBytes: number
  maxRssBytes: number
}

declare module 'fastify' {
  interface FastifyInstance {
    /** Turns /ready to 503 so load balancers stop sending new traffic (SIGTERM). */
    markDraining: () => void
    /** Since markDraining(). */
    readonly draining: boolean
  }
}

async function healthPlugin (app: FastifyInstance, opts: HealthOptions): Promise<void> {
  // Under pressure every route answers 503 with Retry-After: shedding load at the edge keeps
  // the gateway alive; thresholds at 0 are off.
  await app.register(underPressure, {
    maxEventLoopDelay: opts.maxEventLoopDelayMs,
    maxEventLoopUtilization: opts.maxEventLoopUtilization,
    maxHeapUsedBytes: opts.maxHeapUsedBytes,
    maxRssBytes: opts.maxRssBytes,
    retryAfter: 10,
    exposeStatusRoute: { url: '/health', routeOpts: { logLevel: 'warn' } }
  })

  let draining = false
  app.decorate('markDraining', () => { draining = true })
  app.decorate('draining', { getter: () => draining })

  app.get('/ready', { logLevel: 'warn' }, async (_request, reply) => {
    if (draining) {
      reply.header('retry-after', '5')
      throw new NotReadyError('draining for shutdown')
    }
    const cause = app.rateLimitState.storeCause()
    return { status: 'ready', routeTableVersion: app.routeTable.table.version, rateLimitStore: app.rateLimitState.store, ...(cause === undefined ? {} : { rateLimitStoreError: cause }) }
  })
}

export default fp(healthPlugin, { name: 'gatehouse-health', fastify: '5.x', dependencies: ['gatehouse-route-table', 'gatehouse-rate-limit'] })
