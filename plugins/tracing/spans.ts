// The spans and events the gateway adds to @fastify/otel's server span. Every caller holds a
// server span already (request.span), so with tracing off none of this runs.
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, propagation, trace, type Attributes, type Span } from '@opentelemetry/api'
import type { Target } from '../../src/upstream/target.js'
import type { CompiledRoute } from '../route-table/route-table.js'

const tracer = trace.getTracer('gatehouse')

/** Names the server span after the matched route (@fastify/otel knows only the catch-all `/*`). */
export function routeMatched (span: Span, method: string, route: CompiledRoute): void {
  if (!span.isRecording()) return
  span.updateName(`${method} ${route.path}`)
  span.setAttributes({ 'http.route': route.path, 'gatehouse.route': route.id, 'gatehouse.upstream': route.upstream.name })
}

const targetAttributes = new WeakMap<Target, Attributes>()

function attributesOf (target: Target): Attributes {
  let attributes = targetAttributes.get(target)
  if (attributes === undefined) {
    const url = new URL(target.origin)
    attributes = {
      'server.address': url.hostname,
      'server.port': Number(url.port || (url.protocol === 'https:' ? 443 : 80)),
      'gatehouse.upstream': target.upstream,
      'gatehouse.target': target.origin
    }
    targetAttributes.set(target, attributes)
  }
  return attributes
}

/**
 * A client span for one try, child of the server span, and the try's request headers: `headers`
 * without the client's traceparent and tracestate (`clientTraced`: it sent either), plus this
 * try's (each try sets its own). An unsampled request gets no client span, only its trace context
 * passed on (sampled flag off), so the services behind keep the gateway's decision.
 */
export function startTry (server: Span, method: string, target: Target, path: string, resendCount: number, headers: readonly string[], clientTraced: boolean): { span: Span | undefined, headers: string[] } {
  let span: Span | undefined
  if (server.isRecording()) {
    server.setAttribute('gatehouse.target', target.origin)
    span = tracer.startSpan(method, {
      kind: SpanKind.CLIENT,
      attributes: {
        ...attributesOf(target),
        'http.request.method': method,
        // Without the query string: it may carry secrets, and the server span has the full URL.
        'url.full': target.origin + path.split('?', 1)[0],
        ...(resendCount > 0 ? { 'http.request.resend_count': resendCount } : {})
      }
    }, trace.setSpan(ROOT_CONTEXT, server))
  }
  let traced: string[]
  if (clientTraced) {
    traced = []
    for (let i = 0; i < headers.length; i += 2) {
      const name = (headers[i] as string).toLowerCase()
      if (name !== 'traceparent' && name !== 'tracestate') traced.push(headers[i] as string, headers[i + 1] as string)
    }
  } else {
    traced = headers.slice()
  }
  // The incoming tracestate lives on in the span context, and is written again from there.
  const carrier: Record<string, string> = {}
  propagation.inject(trace.setSpan(ROOT_CONTEXT, span ?? server), carrier)
  for (const name in carrier) traced.push(name, carrier[name] as string)
  return { span, headers: traced }
}

/** Ends a try's span with the upstream's status, or with the reason it failed. */
export function endTry (span: Span, outcome: number | string): void {
  if (typeof outcome === 'number') {
    span.setAttribute('http.response.status_code', outcome)
    if (outcome >= 400) span.setAttributes({ 'error.type': String(outcome) })
  } else {
    span.setAttribute('error.type', outcome)
  }
  if (typeof outcome === 'string' || outcome >= 400) span.setStatus({ code: SpanStatusCode.ERROR })
  span.end()
}
