// The last step of the pipeline: the proxied routes. A request that got here has a route
// (request.match); it gets a first target, its body checked against the route's limit, and an
// UpstreamCall that runs the tries and writes the response. Encapsulated: the catch-all routes,
// the raw-body parser and the not-found handler belong to the proxied scope only.
import type { Readable } from 'node:stream'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { TrustProxy } from '../../src/config/env.js'
import { HTTP_METHODS } from '../../src/config/route-file/index.js'
import { BodyTooLargeError, ClientClosedError, ClientTooSlowError, RouteNotFoundError } from '../../src/errors.js'
import { clientChannel, h2Stream, responseDelivered } from '../../src/http/client-stream.js'
import { onSocketClose } from '../../src/http/socket-close.js'
import { socketProgress } from '../client-rate/index.js'
import { selectInPools, type Pool } from '../../src/upstream/select.js'
import type { Target } from '../../src/upstream/target.js'
import type { RouteMatch } from '../route-table/index.js'
import { stickyTarget } from '../route-table/affinity.js'
import { splitPools } from '../route-table/split.js'
import { compileForwardRules } from './headers.js'
import { limitBody, receiveBody, type ReceivingBody } from './request-body.js'
import { UpstreamCall } from './upstream-call.js'
import { proxyUpgrade } from './upgrade-call.js'
import { proxyGrpc } from './grpc-call.js'
import { answerGrpc, grpcStatusOf, isGrpcRequest } from '../../src/http/grpc.js'
import { isWebSocketHandshake, upgradeHead } from '../websocket/index.js'
import { unavailable, upstreamError } from './upstream-errors.js'

export interface ProxyOptions {
  trustProxy: TrustProxy
  /** ALLOW_UNDERSCORE_HEADERS. */
  allowUnderscoreHeaders: boolean
}

declare module 'fastify' {
  interface FastifyRequest {
    /** The target of this request's latest try, once selected. */
    target: Target | null
  }
}

export default async function proxyRoutes (app: FastifyInstance, opts: ProxyOptions): Promise<void> {
  app.decorateRequest('target', null)
  // Bodies are streamed, never parsed: hand the raw request stream to the proxy.
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('*', (_request, payload, done) => { done(null, payload) })

  const rules = compileForwardRules(opts.trustProxy, opts.allowUnderscoreHeaders)
  const memory = app.clientRate.memory

  function proxy (request: FastifyRequest, reply: FastifyReply): void {
    if (upgradeHead(request.raw) !== undefined && proxyUpgrade(request, reply, rules, app.websocket)) return
    const { route, forward } = request.match as RouteMatch
    if (route.grpc) {
      proxyGrpc(request, reply, rules)
      return
    }
    // The client may be gone already (a parse error later in the same packet destroyed the
    // socket): nothing to send, and a body that will never end must not hold a target.
    // For HTTP/2 the channel is the request's stream, not the connection every stream shares.
    const channel = clientChannel(request.raw)
    const stream = h2Stream(request.raw)
    if (channel.destroyed) throw new ClientClosedError()
    const declared = request.headers['content-length']
    if (declared !== undefined && Number(declared) > route.bodyLimit) {
      // The unread body would be taken for the next request; an HTTP/2 stream is simply reset.
      if (stream === undefined) reply.header('connection', 'close')
      throw new BodyTooLargeError(route.bodyLimit)
    }
    const upstream = route.upstream
    const pools = route.split === undefined ? route.pools : splitPools(route.split, request.headers, Math.random)
    const sticky = route.affinity === undefined ? undefined : stickyTarget(route.affinity, pools[0] as Pool<Target>, request.headers, () => request.ip)
    const first = sticky ?? selectInPools(pools)
    if (first === undefined) throw unavailable(upstream, pools, request, reply)

    let body = request.body as Readable | undefined
    let bodyLimitHit: number | undefined
    let receiving: ReceivingBody | undefined
    // Chunked: the size is known only while streaming.
    if (body !== undefined && declared === undefined) body = body.pipe(limitBody(route.bodyLimit, () => { bodyLimitHit = route.bodyLimit }))

    // The client left before the response finished: the call cancels whatever try is running.
    // Watched on the socket, because a response queued behind a pipelined one never emits 'close'.
    const call = new UpstreamCall({
      request,
      reply,
      upstream,
      pools,
      sticky,
      first,
      path: forward,
      rules,
      route,
      clientRate: app.clientRate,
      readAhead: { limit: route.responseBuffer, memory: memory.response },
      fail: (error, target) => {
        if (!reply.sent) reply.send(upstreamError(request, reply, upstream, target, error, bodyLimitHit))
      },
      done: () => {
        unwatch()
        if (receiving !== undefined) memory.request.give(receiving.held())
      }
    })
    const unwatch = onSocketClose(channel, () => { if (!responseDelivered(request.raw, reply.raw)) call.cancel(new ClientClosedError()) })

    if (body === undefined) {
      call.start(undefined, true)
    } else if (route.requestBuffer > 0 && (declared === undefined || Number(declared) <= route.requestBuffer)) {
      // Received whole before a target is asked: the upload holds memory, not an upstream slot,
      // and a retry can send it again. A client that sends it too slowly is answered 408.
      receiving = receiveBody(body, route.requestBuffer, memory.request, declared === undefined ? undefined : Number(declared))
      const { stop } = receiving
      const rate = app.clientRate
      // An HTTP/2 stream's bytes are its own only as counted here; the socket's are every stream's.
      let received = 0
      const count = (chunk: Buffer): void => { received += chunk.length }
      if (stream !== undefined) request.raw.on('data', count)
      const watch = rate.receiving(stream === undefined ? socketProgress(request.raw.socket, 'request') : () => received, () => { stop(new ClientTooSlowError('sent its body', rate.minDataRate)) })
      const stopWatch = (): void => {
        watch()
        request.raw.off('data', count)
      }
      receiving.body.then(whole => {
        stopWatch()
        // A chunked body that grew past the buffer comes back as a stream: sent once, never retried.
        call.start(whole, Buffer.isBuffer(whole))
      }, (err: Error) => { stopWatch(); call.fail(err) })
    } else {
      // Streamed: it cannot be sent twice, so it is never retried.
      call.start(body, false)
    }
  }

  // One route per method: fastify-metrics matches a request against `METHOD:url` slugs, and a
  // route registered with a list of methods would never match.
  for (const method of HTTP_METHODS) {
    for (const url of ['/*', '/']) app.route({ method, url, exposeHeadRoute: false, handler: proxy })
  }
  // Errors of the proxied scope. A gRPC client reads only gRPC statuses: the gateway's own answers (401, 429, 503, 404...)
  // are given in its terms. Everything else goes to Fastify's handler.
  app.setErrorHandler((error: Error & { statusCode?: number, code?: string, grpcStatus?: number }, request, reply) => {
    // A WebSocket handshake answered with an error the proxy did not settle: the gateway refused it (auth, limit, route).
    if (isWebSocketHandshake(request)) app.websocket.settle(request, 'rejected')
    // Over HTTP/1.x no gRPC client is listening: JSON, as for any request.
    if (!isGrpcRequest(request) || h2Stream(request.raw) === undefined || reply.raw.headersSent) {
      reply.send(error)
      return
    }
    const statusCode = error.statusCode ?? 500
    request.failure = { code: error.code, message: error.message }
    if (statusCode >= 500 && error.code?.startsWith('GATEHOUSE_ERR_') !== true) request.log.error({ err: error }, 'unexpected error')
    answerGrpc(reply, error.grpcStatus ?? grpcStatusOf(statusCode), error.message)
  })
  app.setNotFoundHandler((request, reply) => {
    reply.send(new RouteNotFoundError(request.method, request.url.split('?')[0] ?? ''))
  })
}
