// OpenTelemetry tracing, configured by the standard OTEL_* variables. Off unless an exporter is
// configured: then nothing of the SDK is even loaded, and the request path skips every span call.
import { ROOT_CONTEXT, type Context, type ContextManager, type Span } from '@opentelemetry/api'
import type { FastifyPluginCallback, FastifyRequest } from 'fastify'

export interface Tracing {
  /** @fastify/otel's plugin: one server span per request. Register it before any route. */
  instrumentation: FastifyPluginCallback
  /**
   * Sets what receives each request's server span as @fastify/otel opens it (its `requestHook`,
   * which is given to it at construction, before the app exists).
   */
  onServerSpan: (hook: ServerSpanHook) => void
  /** Flushes the spans still queued; call when the server has closed. */
  shutdown: () => Promise<void>
}

export type ServerSpanHook = (span: Span, request: FastifyRequest) => void

// Probes and scrapes every few seconds would be most of the traces and tell nothing.
const UNTRACED = new Set(['/health', '/ready', '/metrics'])

/** Whether these variables ask for traces: an OTLP endpoint, or a traces exporter other than none. */
export function tracingConfigured (env: NodeJS.ProcessEnv = process.env): boolean {
  if (env.OTEL_SDK_DISABLED?.trim().toLowerCase() === 'true') return false
  const exporters = env.OTEL_TRACES_EXPORTER?.split(',').map(e => e.trim()).filter(e => e !== '') ?? []
  if (exporters.length > 0) return !exporters.includes('none')
  return Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT?.trim() || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT?.trim())
}

/** Starts the SDK when tracingConfigured(); call after `.env` is loaded, before the app is built. */
export async function startTracing (env: NodeJS.ProcessEnv = process.env): Promise<Tracing | undefined> {
  if (!tracingConfigured(env)) return undefined
  // Metrics stay with Prometheus and logs with pino: the SDK would otherwise push both over OTLP
  // too (its default when these are unset). Set either to opt in.
  env.OTEL_METRICS_EXPORTER ??= 'none'
  env.OTEL_LOGS_EXPORTER ??= 'none'
  if (env.OTEL_SERVICE_NAME === undefined && !/(^|,)\s*service\.name\s*=/.test(env.OTEL_RESOURCE_ATTRIBUTES ?? '')) env.OTEL_SERVICE_NAME = 'gatehouse'
  const [{ NodeSDK }, { FastifyOtelInstrumentation }] = await Promise.all([import('@opentelemetry/sdk-node'), import('@fastify/otel')])
  let serverSpan: ServerSpanHook = () => {}
  const otel = new FastifyOtelInstrumentation({
    requestHook: (span, request) => { serverSpan(span, request) },
    // A span per hook would be a dozen per request; the proxy adds a client span per try instead.
    instrumentHooks: false,
    instrumentHandler: false,
    // Asked for every request: no split, no array.
    ignorePaths: ({ url }) => {
      const query = url.indexOf('?')
      return UNTRACED.has(query === -1 ? url : url.slice(0, query))
    }
  })
  const sdk = new NodeSDK({ instrumentations: [otel], contextManager: new ExplicitContextManager() })
  sdk.start()
  return { instrumentation: otel.plugin(), onServerSpan: hook => { serverSpan = hook }, shutdown: () => sdk.shutdown() }
}

/**
 * No implicit context: the gateway hands its spans along explicitly (request.span, spans.ts), so
 * it needs no AsyncLocalStorage. The SDK's default one made every promise and socket of every
 * request pay for context propagation: on Node 20 it was about 30 % of a traced gateway's CPU
 * samples (async_hooks), sampled or not.
 */
class ExplicitContextManager implements ContextManager {
  active (): Context { return ROOT_CONTEXT }
  with<A extends unknown[], F extends (...args: A) => ReturnType<F>> (_context: Context, fn: F, thisArg?: ThisParameterType<F>, ...args: A): ReturnType<F> {
    return fn.call(thisArg, ...args)
  }

  bind<T> (_context: Context, target: T): T { return target }
  enable (): this { return this }
  disable (): this { return this }
}
