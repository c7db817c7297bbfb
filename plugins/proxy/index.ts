// The proxy path: one lookup in the route table, a first target, then an UpstreamCall that runs
// the tries (retries, breakers, cancellation) and hands the final response to reply-from.
import type { Socket } from 'node:net'
import { Transform, type Readable, type TransformCallback } from 'node:stream'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import replyFrom, { type FastifyReplyFromHooks } from '@fastify/reply-from'
import fp from 'fastify-plugin'
import type { TrustProxy } from '../../src/config/env.js'
import { HTTP_METHODS } from '../../src/config/route-file.js'
import {
  BadPathError, BodyTooLargeError, ClientClosedError, RouteNotFoundError, UpstreamBadResponseError, UpstreamResetError, UpstreamSaturatedError,
  UpstreamTimeoutError, UpstreamTlsError, UpstreamUnavailableError, UpstreamUnreachableError
} from '../../src/errors.js'
import { selectTarget } from '../../src/upstream/select.js'
import { malformedResponse, tlsFailure, type Target } from '../../src/upstream/target.js'
import type { CompiledRoute, CompiledUpstream } from '../route-table/route-table.js'
import { routeMatched } from '../tracing/spans.js'
import { compileTrust, stripResponseHeaders, upstreamRequestHeaders } from './headers.js'
import { hasEncodedSlash, normalizePath } from './normalize-path.js'
import { CallDispatcher } from './call-dispatcher.js'
import { CancelSignal } from './cancel-signal.js'
import { CONNECT_FAILURE, UpstreamCall } from './upstream-call.js'

export interface ProxyOptions {
  trustProxy: TrustProxy
}

/** What the route table made of a request: resolved before any other per-route work. */
export interface RouteMatch {
  route: CompiledRoute
  /** The normalised path, as matched. */
  path: string
  /** Path and query string to send upstream (after rewritePrefix). */
  forward: string
}

declare module 'fastify' {
  interface FastifyRequest {
    /** The route this request matched (set in onRequest, so later hooks can use it). */
    match: RouteMatch | null
    /** The target this request was sent to, once selected. */
    target: Target | null
  }
}

// undici and reply-from codes of an upstream that went quiet.
const TIMEOUT = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'FST_REPLY_FROM_GATEWAY_TIMEOUT', 'FST_REPLY_FROM_TIMEOUT'])

const RETRY_AFTER_SATURATED = '1'

async function proxyPlugin (app: FastifyInstance, opts: ProxyOptions): Promise<void> {
  const dispatcher = new CallDispatcher()
  // Retries are off: reply-from would otherwise retry a GET on 503 up to ten times.
  await app.register(replyFrom, { undici: dispatcher as never, disableRequestLogging: true, disableCache: true })
  app.decorateRequest('match', null)
  app.decorateRequest('target', null)

  // Bodies are streamed, never parsed: hand the raw request stream to the proxy.
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('*', (_request, payload, done) => { done(null, payload) })

  const trusted = compileTrust(opts.trustProxy)
  const tooLarge = new WeakMap<FastifyRequest, number>()
  const fromOptions = new WeakMap<CompiledUpstream, FastifyReplyFromHooks & { retryDelay: () => null }>()
  const optionsFor = (upstream: CompiledUpstream) => {
    let options = fromOptions.get(upstream)
    if (options === undefined) {
      options = {
        retryDelay: () => null,
        // reply-from types its hooks for HTTP/2 too; this server is HTTP/1.1 only.
        rewriteRequestHeaders: (request, headers) => upstreamRequestHeaders(request as FastifyRequest, headers, trusted),
        rewriteHeaders: headers => stripResponseHeaders(headers),
        onError: (reply, { error }) => { reply.send(upstreamError(reply as FastifyReply, upstream, error, tooLarge)) }
      }
      fromOptions.set(upstream, options)
    }
    return options
  }

  // One lookup per request, in onRequest: the body is not read for a request that matches nothing.
  function resolve (request: FastifyRequest, _reply: FastifyReply, done: (err?: Error) => void): void {
    const url = request.raw.url as string
    const q = url.indexOf('?')
    const rawPath = q === -1 ? url : url.slice(0, q)
    if (rawPath.charCodeAt(0) !== 47 /* / */) {
      // Deliberately refused: absolute-form is for forward proxies, and `OPTIONS *` asks about a
      // server, not about any upstream route.
      done(new BadPathError(rawPath === '*' ? 'OPTIONS * is not forwarded' : /^[a-z][a-z0-9+.-]*:\/\//i.test(rawPath) ? 'absolute-form targets are for forward proxies; send the path' : 'the request target must be a path starting with /'))
      return
    }
    let path: string
    try {
      path = normalizePath(rawPath)
    } catch (err) {
      done(err as Error)
      return
    }
    const route = app.routeTable.table.lookup(request.method, hostOf(request.headers.host), path)
    if (route === null) {
      done(new RouteNotFoundError(request.method, path))
      return
    }
    if (!route.allowEncodedSlashes && hasEncodedSlash(path)) {
      done(new BadPathError('encoded slash or backslash (%2F, %5C); the route can allow them with allowEncodedSlashes'))
      return
    }
    const forward = route.rewritePrefix === undefined ? path : rewrite(route.rewritePrefix, path.slice(route.prefixLength))
    request.match = { route, path, forward: q === -1 ? forward : forward + url.slice(q) }
    if (request.span != null) routeMatched(request.span, request.method, route)
    done()
  }

  function proxy (request: FastifyRequest, reply: FastifyReply): FastifyReply {
    const { route, forward } = request.match as RouteMatch
    // The client may be gone already (a parse error later in the same packet destroyed the
    // socket): nothing to send, and a body that will never end must not hold a target.
    const socket = request.raw.socket
    if (socket.destroyed) throw new ClientClosedError()
    const declared = request.headers['content-length']
    if (declared !== undefined && Number(declared) > route.bodyLimit) {
      reply.header('connection', 'close')
      throw new BodyTooLargeError(route.bodyLimit)
    }

    const upstream = route.upstream
    const first = selectTarget(upstream.targets, upstream.totalWeight)
    if (first === undefined) throw unavailable(upstream, request, reply)
    if (request.body !== undefined && declared === undefined) {
      // Chunked: the size is known only while streaming.
      request.body = (request.body as NodeJS.ReadableStream).pipe(limitBody(route.bodyLimit, () => tooLarge.set(request, route.bodyLimit)))
    }

    // The client left before the response finished: cancel whatever try is running. Watched on
    // the socket, because a response queued behind a pipelined one never emits 'close' itself.
    const cancel = new CancelSignal()
    const unwatch = onSocketClose(socket, () => { if (!reply.raw.writableFinished) cancel.abort(new ClientClosedError()) })
    // Not on the response's 'close': Node emits it before the socket's, so the watch would be
    // gone before it could cancel.
    reply.raw.once('finish', unwatch)
    const start = (replay: Buffer | undefined, replayable: boolean): void => {
      dispatcher.use(new UpstreamCall({
        upstream,
        first,
        request,
        path: forward,
        replay,
        replayable,
        signal: cancel
      }))
      reply.from(first.origin + '/', optionsFor(upstream))
    }

    const body = request.body as Readable | undefined
    if (body === undefined) {
      start(undefined, true)
    } else if (declared !== undefined && Number(declared) <= upstream.retry.bufferBody && upstream.retry.attempts > 0) {
      // Small enough to keep: a retry can send it again.
      readAll(body).then(buffer => start(buffer, true), err => reply.send(err))
    } else {
      // Streamed: it cannot be sent twice, so it is never retried.
      start(undefined, false)
    }
    return reply
  }

  // `gatehouseProxy` lets per-route plugins (auth, rate limits) find these routes; they run after resolve.
  // One route per method: fastify-metrics matches a request against `METHOD:url` slugs, and a
  // route registered with a list of methods would never match (no request histogram at all).
  for (const method of HTTP_METHODS) {
    for (const url of ['/*', '/']) app.route({ method, url, exposeHeadRoute: false, config: { gatehouseProxy: true }, onRequest: [resolve], handler: proxy })
  }
  app.setNotFoundHandler((request, reply) => {
    reply.send(new RouteNotFoundError(request.method, request.url.split('?')[0] ?? ''))
  })
}

/** 503 when no target admits a request: saturated, or every breaker open (then Retry-After says until the next probe). */
function unavailable (upstream: CompiledUpstream, request: FastifyRequest, reply: FastifyReply): Error {
  let soonest = Infinity
  for (const t of upstream.targets) {
    if (t.breaker.state !== 'open') {
      reply.header('retry-after', RETRY_AFTER_SATURATED)
      return new UpstreamSaturatedError(upstream.name)
    }
    soonest = Math.min(soonest, t.breaker.retryAfterMs())
  }
  const seconds = Math.max(1, Math.ceil(soonest / 1000))
  request.span?.addEvent('circuit_breaker.rejected', { 'gatehouse.upstream': upstream.name, 'circuit_breaker.retry_after_s': seconds })
  reply.header('retry-after', String(seconds))
  return new UpstreamUnavailableError(upstream.name)
}

function readAll (stream: Readable): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    stream.on('data', (chunk: Buffer) => chunks.push(chunk))
    stream.once('end', () => resolve(Buffer.concat(chunks)))
    stream.once('error', reject)
    // Destroyed without an error (the client went away): the body will never end.
    stream.once('close', () => reject(new ClientClosedError()))
  })
}

// One 'close' listener per client socket, however many pipelined requests wait on it.
const socketWatchers = new WeakMap<Socket, Set<() => void>>()

/** Calls `fn` when `socket` closes; returns the function that stops watching. */
function onSocketClose (socket: Socket, fn: () => void): () => void {
  let watchers = socketWatchers.get(socket)
  if (watchers === undefined) {
    const set = new Set<() => void>()
    watchers = set
    socketWatchers.set(socket, set)
    socket.once('close', () => { for (const w of set) w() })
  }
  watchers.add(fn)
  const set = watchers
  return () => { set.delete(fn) }
}

function upstreamError (reply: FastifyReply, upstream: CompiledUpstream, error: Error, tooLarge: WeakMap<FastifyRequest, number>): Error {
  const request = reply.request
  const limit = tooLarge.get(request)
  if (limit !== undefined) {
    reply.header('connection', 'close')
    return new BodyTooLargeError(limit, { cause: error })
  }
  if (request.raw.socket.destroyed) return new ClientClosedError({ cause: error })
  const cause = error.cause as { code?: string } | undefined
  // The call's own errors (no target left to retry on) are already ours.
  if (cause instanceof UpstreamUnavailableError || cause instanceof UpstreamSaturatedError) {
    reply.header('retry-after', RETRY_AFTER_SATURATED)
    return cause
  }
  const code = cause?.code ?? (error as { code?: string }).code ?? ''
  const where = `${upstream.name} (${request.target?.origin ?? '?'})`
  if (CONNECT_FAILURE.has(code)) return new UpstreamUnreachableError(where, { cause: error })
  const tls = tlsFailure(cause ?? error)
  if (tls !== undefined) return new UpstreamTlsError(where, tls, { cause: error })
  const malformed = malformedResponse(cause ?? error)
  if (malformed !== undefined) return new UpstreamBadResponseError(where, malformed, { cause: error })
  if (TIMEOUT.has(code)) return new UpstreamTimeoutError(where, { cause: error })
  return new UpstreamResetError(where, { cause: error })
}

/** `prefix` + `rest` with exactly one slash between them, and never an empty path. */
function rewrite (prefix: string, rest: string): string {
  if (prefix.endsWith('/') && rest.startsWith('/')) return prefix + rest.slice(1)
  const joined = prefix + rest
  return joined === '' ? '/' : joined
}

/** Host header without port, lowercase; '' when absent. */
function hostOf (host: string | undefined): string {
  if (host === undefined) return ''
  const end = host.charCodeAt(0) === 91 /* [ */ ? host.indexOf(']') + 1 : host.indexOf(':')
  return (end > 0 ? host.slice(0, end) : host).toLowerCase()
}

function limitBody (limit: number, onExceeded: () => void): Transform {
  let seen = 0
  return new Transform({
    transform (chunk: Buffer, _encoding: string, callback: TransformCallback) {
      seen += chunk.length
      if (seen > limit) {
        onExceeded()
        callback(new BodyTooLargeError(limit))
      } else {
        callback(null, chunk)
      }
    }
  })
}

export default fp(proxyPlugin, { name: 'gatehouse-proxy', fastify: '5.x', dependencies: ['gatehouse-route-table'] })
