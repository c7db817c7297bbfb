// Traces, when src/tracing.ts started the SDK: @fastify/otel opens a server span per request (the
// client's traceparent as its parent), the request's log lines get its trace and span id,
// and spans.ts gives the proxy a client span per try and the events of limits and breakers.
import type { Span } from '@opentelemetry/api'
import type { FastifyInstance, FastifyPluginCallback } from 'fastify'
import fp from 'fastify-plugin'
import { RequestLogger } from '../../src/logger.js'

export interface TracingOptions {
  /** @fastify/otel's plugin, from startTracing(). */
  instrumentation: FastifyPluginCallback
}

declare module 'fastify' {
  interface FastifyRequest {
    /** The request's server span; undefined when tracing is off, null for an untraced path. */
    span?: Span | null
  }
}

async function tracingPlugin (app: FastifyInstance, opts: TracingOptions): Promise<void> {
  // Not encapsulated (it skips override): its hooks see every route registered after it.
  await app.register(opts.instrumentation)
  app.decorateRequest('span', null)
  // After @fastify/otel's onRequest hook, which has opened the span by now.
  app.addHook('onRequest', (request, _reply, done) => {
    const span = request.opentelemetry().span
    if (span != null) {
      request.span = span
      // The request's log lines carry the trace (the access line reads request.span itself).
      const { traceId, spanId } = span.spanContext()
      if (request.log instanceof RequestLogger) request.log.bind({ trace_id: traceId, span_id: spanId })
    }
    done()
  })
}

export default fp(tracingPlugin, { name: 'gatehouse-tracing', fastify: '5.x' })
