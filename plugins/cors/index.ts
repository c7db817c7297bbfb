// CORS of routes that declare it (the route's `cors`, compiled at load into a CorsPolicy). Its
// step runs after route resolution and before authentication and rate limits: a preflight is
// answered here (it carries no credentials, and must not spend a budget) and never reaches the
// upstream. An actual request gets its Access-Control-* headers on the reply, so they are on the
// upstream's response and on the gateway's own refusals (a page can read a 401 or a 429) alike.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { RouteNotFoundError } from '../../src/errors.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** The pipeline's CORS step (onRequest). */
    answerCors: (request: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void) => void
  }
}

// Caches must keep answers apart by what decided them.
const PREFLIGHT_VARY = 'Origin, Access-Control-Request-Method, Access-Control-Request-Headers'

async function corsPlugin (app: FastifyInstance): Promise<void> {
  app.decorate('answerCors', function answerCors (request: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void): void {
    const route = request.match?.route
    const policy = route?.cors
    if (route === undefined || policy === undefined) {
      done()
      return
    }
    const headers = request.headers
    const origin = headers.origin
    const preflight = request.method === 'OPTIONS' && origin !== undefined && headers['access-control-request-method'] !== undefined
    if (!preflight) {
      // Only there for preflights: a plain OPTIONS is not this route's.
      if (route.preflightOnly) {
        done(new RouteNotFoundError(request.method, request.match?.path ?? ''))
        return
      }
      reply.header('vary', 'Origin')
      const allowOrigin = origin === undefined ? undefined : policy.allowOrigin(origin)
      if (allowOrigin !== undefined) {
        reply.header('access-control-allow-origin', allowOrigin)
        if (policy.credentials) reply.header('access-control-allow-credentials', 'true')
        if (policy.exposeHeaders !== undefined) reply.header('access-control-expose-headers', policy.exposeHeaders)
      }
      done()
      return
    }
    reply.header('vary', PREFLIGHT_VARY)
    // A disallowed origin gets an answer without any Access-Control-* header: the browser stops there.
    const allowOrigin = policy.allowOrigin(origin)
    if (allowOrigin !== undefined) {
      reply.header('access-control-allow-origin', allowOrigin)
      reply.header('access-control-allow-methods', policy.allowMethods)
      const asked = headers['access-control-request-headers']
      const allowHeaders = policy.allowHeaders ?? asked
      if (allowHeaders !== undefined && allowHeaders !== '') reply.header('access-control-allow-headers', allowHeaders)
      if (policy.credentials) reply.header('access-control-allow-credentials', 'true')
      if (policy.maxAge !== undefined) reply.header('access-control-max-age', policy.maxAge)
    }
    reply.code(204).send()
  })
}

export default fp(corsPlugin, { name: 'gatehouse-cors', fastify: '5.x', dependencies: ['gatehouse-route-table'] })
