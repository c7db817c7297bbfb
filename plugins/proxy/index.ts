// The proxy path: one lookup in the route table, pick a target, stream the request to it.
import { Transform, type TransformCallback } from 'node:stream'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import replyFrom, { type FastifyReplyFromHooks } from '@fastify/reply-from'
import fp from 'fastify-plugin'
import type { TrustProxy } from '../../src/config/env.js'
import { HTTP_METHODS } from '../../src/config/route-file.js'
import {
  BadPathError, BodyTooLargeError, RouteNotFoundError, UpstreamResetError, UpstreamSaturatedError,
  UpstreamTimeoutError, UpstreamUnreachableError
} from '../../src/errors.js'
import { selectTarget } from '../../src/upstream/select.js'
import type { Target } from '../../src/upstream/target.js'
import type { CompiledUpstream } from '../route-table/route-table.js'
import { compileTrust, stripResponseHeaders, upstreamRequestHeaders } from './headers.js'
import { normalizePath } from './normalize-path.js'
import { TargetDispatcher } from './target-dispatcher.js'

export interface ProxyOptions {
  trustProxy: TrustProxy
}

declare module 'fastify' {
  interface FastifyRequest {
    /** The target this request was sent to, once selected. */
    target: Target | null
  }
}

// undici error codes: the connection was never made, or it broke, or it went quiet.
const UNREACHABLE = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'UND_ERR_CONNECT_TIMEOUT'])
const TIMEOUT = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'FST_REPLY_FROM_GATEWAY_TIMEOUT', 'FST_REPLY_FROM_TIMEOUT'])

const RETRY_AFTER_SATURATED = '1'

async function proxyPlugin (app: FastifyInstance, opts: ProxyOptions): Promise<void> {
  const dispatcher = new TargetDispatcher()
  // Retries are off: reply-from would otherwise retry a GET on 503 up to ten times.
  await app.register(replyFrom, { undici: dispatcher as never, disableRequestLogging: true, disableCache: true })
  app.decorateRequest('target', null)

  // Bodies are streamed, never parsed: hand the raw request stream to the proxy.
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('*', (_request, payload, done) => { done(null, payload) })

  const trusted = compileTrust(opts.trustProxy)
  const tooLarge = new WeakMap<FastifyRequest, number>()
  const fromOptions = new WeakMap<CompiledUpstream, FastifyReplyFromHooks & { timeout: number, retryDelay: () => null }>()
  const optionsFor = (upstream: CompiledUpstream) => {
    let options = fromOptions.get(upstream)
    if (options === undefined) {
      options = {
        timeout: upstream.requestTimeoutMs,
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

  function proxy (request: FastifyRequest, reply: FastifyReply): FastifyReply {
    const url = request.raw.url as string
    const q = url.indexOf('?')
    const rawPath = q === -1 ? url : url.slice(0, q)
    if (rawPath.charCodeAt(0) !== 47 /* / */) throw new BadPathError('the request target must be a path starting with /')
    const path = normalizePath(rawPath)
    const route = app.routeTable.table.lookup(request.method, hostOf(request.headers.host), path)
    if (route === null) throw new RouteNotFoundError(request.method, path)

    const declared = request.headers['content-length']
    if (declared !== undefined && Number(declared) > route.bodyLimit) {
      reply.header('connection', 'close')
      throw new BodyTooLargeError(route.bodyLimit)
    }
    if (request.body !== undefined && declared === undefined) {
      // Chunked: the size is known only while streaming.
      request.body = (request.body as NodeJS.ReadableStream).pipe(limitBody(route.bodyLimit, () => tooLarge.set(request, route.bodyLimit)))
    }

    const upstream = route.upstream
    const target = selectTarget(upstream.targets, upstream.totalWeight)
    if (target === undefined) {
      reply.header('retry-after', RETRY_AFTER_SATURATED)
      throw new UpstreamSaturatedError(upstream.name)
    }
    target.inFlight++
    request.target = target
    // 'close' fires once the response is finished or the client has gone, whichever comes first.
    reply.raw.once('close', () => { target.inFlight-- })

    const forward = route.rewritePrefix === undefined ? path : rewrite(route.rewritePrefix, path.slice(route.prefixLength))
    dispatcher.use(target.pool, q === -1 ? forward : forward + url.slice(q))
    return reply.from(target.origin + '/', optionsFor(upstream))
  }

  app.route({ method: HTTP_METHODS as string[], url: '/*', handler: proxy })
  app.route({ method: HTTP_METHODS as string[], url: '/', handler: proxy })
  app.setNotFoundHandler((request, reply) => {
    reply.send(new RouteNotFoundError(request.method, request.url.split('?')[0] ?? ''))
  })
}

function upstreamError (reply: FastifyReply, upstream: CompiledUpstream, error: Error, tooLarge: WeakMap<FastifyRequest, number>): Error {
  const request = reply.request
  const limit = tooLarge.get(request)
  if (limit !== undefined) {
    reply.header('connection', 'close')
    return new BodyTooLargeError(limit, { cause: error })
  }
  const code = (error.cause as { code?: string } | undefined)?.code ?? (error as { code?: string }).code ?? ''
  const where = `${upstream.name} (${request.target?.origin ?? '?'})`
  if (UNREACHABLE.has(code)) return new UpstreamUnreachableError(where, { cause: error })
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
