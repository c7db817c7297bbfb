// The gateway as one Fastify app: the global plugins (tracing, request ids and access log,
// metrics, health), then the proxied scope, whose pipeline is declared below in the order it runs.
import { randomUUID } from 'node:crypto'
import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import Fastify, { type ConnectionError, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest, type FastifyServerOptions } from 'fastify'
import authPlugin from '../plugins/auth/index.js'
import clientRatePlugin from '../plugins/client-rate/index.js'
import corsPlugin from '../plugins/cors/index.js'
import healthPlugin from '../plugins/health/index.js'
import observabilityPlugin from '../plugins/observability/index.js'
import proxyRoutes, { type ProxyOptions } from '../plugins/proxy/index.js'
import rateLimitPlugin from '../plugins/rate-limit/index.js'
import requestGuardPlugin from '../plugins/request-guard/index.js'
import routeTablePlugin from '../plugins/route-table/index.js'
import tracingPlugin from '../plugins/tracing/index.js'
import websocketPlugin from '../plugins/websocket/index.js'
import type { GatewayEnv } from './config/env.js'
import { BadPathError, BadRequestError, HeadersTooLargeError, RequestTimeoutError, UriTooLongError } from './errors.js'
import { answerInFlight } from './http/parser-answer.js'
import { createLogger, GatewayLogController, requestLoggerFactory, type GatewayLogger } from './logger.js'
import type { Tracing } from './tracing.js'

const BODILESS = new Set(['GET', 'HEAD', 'TRACE'])

// A client's request id is kept when it is a sane token; anything else is replaced.
const REQUEST_ID = /^[\w.:@/+=-]{1,128}$/

export interface AppOptions {
  /** Overrides the logger (tests silence it); then no access lines are written. */
  logger?: FastifyServerOptions['logger']
  /** The process's logger (server.ts makes it, to flush it on exit); made here when absent. */
  log?: GatewayLogger
  /** From startTracing(): undefined leaves tracing off. */
  tracing?: Tracing | undefined
}

export async function buildApp (env: GatewayEnv, options: AppOptions = {}): Promise<FastifyInstance> {
  const log = options.logger === undefined ? options.log ?? createLogger(env.logLevel, env.logFormat) : undefined
  const app: FastifyInstance = Fastify({
    ...(log === undefined ? { logger: options.logger } : { loggerInstance: log.logger as FastifyBaseLogger }),
    childLoggerFactory: requestLoggerFactory,
    logController: new GatewayLogController(),
    requestIdHeader: false,
    genReqId: req => {
      const id = req.headers['x-request-id']
      return typeof id === 'string' && REQUEST_ID.test(id) ? id : randomUUID()
    },
    trustProxy: typeof env.trustProxy === 'number' ? hopsTrusted(env.trustProxy) : env.trustProxy,
    http: {
      // Room for the longest target and the largest headers: the guard then tells 414 from 431.
      maxHeaderSize: env.maxHeaderSize + env.maxUrlLength,
      headersTimeout: env.headersTimeoutMs,
      // The request guard refuses a missing Host itself, and closes what is pipelined behind it.
      requireHostHeader: false,
      // Node checks both timeouts on this interval (default 30 s): check often enough to keep them.
      connectionsCheckingInterval: Math.min(1000, env.headersTimeoutMs)
    },
    requestTimeout: env.requestTimeoutMs,
    keepAliveTimeout: env.keepAliveTimeoutMs,
    bodyLimit: env.bodyLimit,
    // A request that arrives while the listener closes (a connection accepted just before, or a
    // keep-alive one) is proxied as usual with `Connection: close`, not refused with a 503: the
    // connections are drained before any plugin closes its pools.
    return503OnClosing: false,
    clientErrorHandler: clientError(env.maxUrlLength),
    // The router refuses malformed percent-encoding before the proxy sees the path.
    // Fastify answers these without running onRequest hooks, so the request guard never saw the
    // request: close the connection rather than trust its framing for the next one.
    frameworkErrors: (error, request, reply) => {
      // Answered before the onRequest hooks: its access line is not yet arranged.
      app.observeRequest?.(request as FastifyRequest, reply as FastifyReply)
      app.closeConnection(request as FastifyRequest, reply as FastifyReply)
      ;(reply as FastifyReply).send(error.code === 'FST_ERR_BAD_URL' ? new BadPathError('malformed percent-encoding', { cause: error }) : error)
    }
  })
  app.decorateRequest('failure', null)

  app.server.maxConnections = env.maxConnections
  // Node answers `Expect: 100-continue` by itself, even for a response queued behind a pipelined
  // one, where the 100 would land after this response's head. Send it only when the response
  // owns the connection; otherwise the client sends its body after its own wait (RFC 9110 §10.1.1).
  app.server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => {
    if ((req.socket as Socket & { _httpMessage?: unknown })._httpMessage === res) res.writeContinue()
    app.server.emit('request', req, res)
  })

  // Tracing first: the server span must be open before any other hook runs. The plugins below
  // decorate the app with what the pipeline and /metrics need; observability, health and metrics
  // apply to every route.
  if (options.tracing !== undefined) await app.register(tracingPlugin, { instrumentation: options.tracing.instrumentation, onServerSpan: options.tracing.onServerSpan })
  await app.register(requestGuardPlugin, { maxHeaders: env.maxHeaders, maxHeaderSize: env.maxHeaderSize, maxUrlLength: env.maxUrlLength })
  await app.register(routeTablePlugin, {
    routesDir: env.routesDir,
    defaults: { bodyLimit: env.bodyLimit, requestBuffer: env.requestBufferSize, responseBuffer: env.responseBufferSize, affinitySecret: env.affinitySecret },
    watch: env.watchRoutes,
    debounceMs: env.reloadDebounceMs
  })
  await app.register(websocketPlugin)
  await app.register(corsPlugin)
  await app.register(authPlugin, { jwksCooldownMs: env.jwksCooldownMs })
  await app.register(rateLimitPlugin, { redis: env.redis, redisKeyPrefix: env.redisKeyPrefix, redisTimeoutMs: env.redisTimeoutMs })
  await app.register(clientRatePlugin, { minDataRate: env.minDataRate, graceMs: env.minDataRateGraceMs, requestBufferMemory: env.requestBufferMemory, responseBufferMemory: env.responseBufferMemory })
  await app.register(observabilityPlugin, {
    adminPort: env.adminPort,
    adminHost: env.host,
    accessLog: log === undefined || !log.logger.isLevelEnabled('info') ? undefined : { write: log.writeLine, base: log.base }
  })
  await app.register(healthPlugin, {
    maxEventLoopDelayMs: env.maxEventLoopDelayMs,
    maxEventLoopUtilization: env.maxEventLoopUtilization,
    maxHeapUsedBytes: env.maxHeapUsedBytes,
    maxRssBytes: env.maxRssBytes
  })

  await registerPipeline(app, { trustProxy: env.trustProxy, allowUnderscoreHeaders: env.allowUnderscoreHeaders })
  return app
}

/**
 * The proxied scope's onRequest hooks, in the order every request to an upstream runs them. Each
 * is a decorator of the plugin that owns it; the proxy routes come last.
 */
export const PIPELINE = [
  'guardRequest', //   request-guard: framing, sizes, Host, pipelining behind a close
  'resolveRoute', //   route-table: request.match, or 404/400
  'answerCors', //     cors: preflights answered here, before auth and limits; CORS headers on the reply
  'authenticate', //   auth: JWT of routes with auth → request.identity (401/403)
  'checkRateLimit' //  rate-limit: after auth, so a limit can be keyed by a claim (429)
] as const

/**
 * The proxied scope: the pipeline's hooks, then the proxy routes (select → breaker → upstream →
 * response). A plugin the pipeline needs that is not registered fails here, at boot.
 */
export async function registerPipeline (app: FastifyInstance, proxy: ProxyOptions): Promise<void> {
  // The proxy itself needs the client-rate watch and the WebSocket upgrades.
  const missing = [...PIPELINE, 'clientRate', 'websocket'].filter(name => !app.hasDecorator(name))
  if (missing.length > 0) throw new Error(`the proxied pipeline needs ${missing.join(', ')}: register the plugins that decorate them before it`)
  await app.register(async function proxied (scope) {
    for (const name of PIPELINE) scope.addHook('onRequest', app[name])
    await scope.register(proxyRoutes, proxy)
  })
}

/** Trust the nearest `hops` proxies, as a hop count in TRUST_PROXY means. */
function hopsTrusted (hops: number) {
  return (_address: string, hop: number) => hop < hops
}

/**
 * Whether the request line is what overflowed Node's head limit (then 414, not 431). Node hands
 * over only the packet it was parsing: one that starts the request line shows its target; one that
 * continues it shows its end (` HTTP/1.x` before the first line break). A packet in the middle of
 * a long line tells nothing, and gets 431.
 */
function requestLineTooLong (packet: Buffer | undefined, maxUrlLength: number): boolean {
  if (packet === undefined) return false
  const eol = packet.indexOf('\r\n')
  const line = packet.toString('latin1', 0, eol === -1 ? packet.length : eol)
  const method = /^[A-Z]+ /.exec(line)
  if (method !== null) {
    const end = eol === -1 ? line.length : line.lastIndexOf(' ')
    return end - method[0].length > maxUrlLength
  }
  return eol !== -1 && / HTTP\/1\.[01]$/.test(line)
}

/** What Node's parser found wrong, in words: its reason, or the connection's end mid-request. */
function parseFailure (err: ConnectionError & { reason?: string }): string {
  if (err.code === 'HPE_INVALID_EOF_STATE') return 'Incomplete request: the client closed its side of the connection before the end of the request'
  // llhttp's reason ("Invalid header token", "Invalid character in chunk size"), lower-cased to read as a clause.
  const reason = typeof err.reason === 'string' && err.reason !== '' ? err.reason : err.message.replace(/^Parse Error:?\s*/, '')
  return `Malformed HTTP request: ${reason === '' ? String(err.code ?? 'unreadable') : reason.charAt(0).toLowerCase() + reason.slice(1)}`
}

/** Requests Node's parser refuses never reach Fastify: answer them in the same JSON shape. */
const clientError = (maxUrlLength: number) => function clientError (this: FastifyInstance, err: ConnectionError, socket: Socket): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return
  this.log.debug({ err }, 'client error')
  // No answer while an earlier, complete request on this connection is still being served: the
  // client would read it as the answer to that request (bytes pipelined behind it land here).
  // A request whose own body broke off or timed out is the one answered.
  // (GET, HEAD and TRACE are forwarded without waiting for a body, so theirs never counts.)
  const current = (socket as Socket & { _httpMessage?: { headersSent: boolean, req?: IncomingMessage } | null })._httpMessage
  const busy = current != null && (current.headersSent || current.req?.complete !== false || BODILESS.has(current.req.method ?? ''))
  if (socket.writable && !busy) {
    const error = err.code === 'HPE_HEADER_OVERFLOW'
      // Node's rawPacket is the Buffer it was parsing (Fastify's type describes its JSON form).
      ? requestLineTooLong(err.rawPacket as unknown as Buffer | undefined, maxUrlLength) ? new UriTooLongError(maxUrlLength) : new HeadersTooLargeError()
      : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? new RequestTimeoutError() : new BadRequestError(parseFailure(err))
    const reason = STATUS_CODES[error.statusCode] as string
    const body = JSON.stringify({ statusCode: error.statusCode, code: error.code, error: reason, message: error.message })
    // The answer to a request in flight goes in that request's access line. Otherwise this is the
    // access line, with no request object (no method or URL Node would vouch for) but an id of its
    // own, also sent to the client, so a complaint can be matched to the line.
    const id = current?.req === undefined ? randomUUID() : undefined
    socket.write(`HTTP/1.1 ${error.statusCode} ${reason}\r\nConnection: close\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
      (id === undefined ? '' : `X-Request-Id: ${id}\r\n`) + `\r\n${body}`)
    if (current?.req !== undefined) answerInFlight(current.req, { statusCode: error.statusCode, code: error.code, message: error.message })
    else this.log.info({ reqId: id, statusCode: error.statusCode, code: error.code, error: error.message, remoteAddress: socket.remoteAddress }, 'request completed')
  }
  socket.destroy()
}
