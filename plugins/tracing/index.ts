// Traces, when src/tracing.ts started the SDK: @fastify/otel opens a server span per request (the
// client's traceparent as its parent), the request's log lines get its trace and span id,
// and spans.ts gives the proxy a client span per try and the events of limits and breakers.
import type { Span } from '@opentelemetry/api'
import type { FastifyInstance, FastifyPluginCallback } from 'fastify'
import fp from 'fastify-plugin'
import { RequestLogger } from '../../src/logger.js'
import type { ServerSpanHook } from '../../src/tracing.js'

export interface TracingOptions {
  /** @fastify/otel's plugin, from startTracing(). */
  instrumentation: FastifyPluginCallback
  /** startTracing()'s hand-off of each request's server span. */
  onServerSpan: (hook: ServerSpanHook) => void
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
  // Called by @fastify/otel's onRequest hook once it has opened the span: no hook of our own, and
  // no request.opentelemetry() (an object and two closures per call).
  opts.onServerSpan((span, request) => {
    request.span = span
    // The request's log lines carry the trace (the access line reads request.span itself).
    const { traceId, spanId } = span.spanContext()
    if (request.log instanceof RequestLogger) request.log.bind({ trace_id: traceId, span_id: spanId })
  })
}

export default fp(tracingPlugin, { name: 'gatehouse-tracing', fastify: '5.x' })
