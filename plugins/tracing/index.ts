// Traces, when src/tracing.ts started the SDK: @fastify/otel opens a server span per request (the
// client's traceparent as its parent), traceIds() puts the trace id in the request's log lines,
// and spans.ts gives the proxy a client span per try and the events of limits and breakers.
import type { Span } from '@opentelemetry/api'
import type { FastifyInstance, FastifyPluginCallback } from 'fastify'
import fp from 'fastify-plugin'

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

// Each request's logger (Fastify makes one per request) → its server span, for traceIds().
const spansOfLoggers = new WeakMap<object, Span>()

/**
 * pino's `mixin` while tracing: the trace and span id on every line a request's logger writes.
 * Cheaper than a child logger per request, which pino would have to serialise.
 */
export function traceIds (_line: object, _level: number, logger: object): Record<string, string> {
  const span = spansOfLoggers.get(logger)
  if (span === undefined) return {}
  const { traceId, spanId } = span.spanContext()
  return { trace_id: traceId, span_id: spanId }
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
      spansOfLoggers.set(request.log, span)
    }
    done()
  })
}

export default fp(tracingPlugin, { name: 'gatehouse-tracing', fastify: '5.x' })
