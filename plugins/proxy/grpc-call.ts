// A gRPC call's way upstream: an HTTP/2 stream to an h2 or h2c target, opened with undici's
// dispatch so the response trailers (where gRPC puts its status) reach the client; request and
// response messages stream through, nothing is buffered. The client's deadline (grpc-timeout)
// bounds the call together with the route's timeouts.request, and the upstream is told what is
// left of it. Only connect failures are retried (nothing reached the upstream, and the body was
// not read). Everything the gateway answers itself is a gRPC status (src/http/grpc.ts).
import type { Readable } from 'node:stream'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Dispatcher } from 'undici'
import { formatMs } from '../../src/config/units.js'
import { ClientClosedError, GrpcNeedsHttp2Error, UpstreamBadResponseError, UpstreamTimeoutError } from '../../src/errors.js'
import { clientChannel, h2Stream } from '../../src/http/client-stream.js'
import { GrpcStatus, grpcMessage, grpcStatusOf, grpcTimeout, grpcTimeoutMs } from '../../src/http/grpc.js'
import { onSocketClose } from '../../src/http/socket-close.js'
import { selectInPools, type Pool } from '../../src/upstream/select.js'
import type { Target } from '../../src/upstream/target.js'
import type { RouteMatch } from '../route-table/index.js'
import { splitPools } from '../route-table/split.js'
import { clientResponseHeaders, upstreamRequestHeaders, type ForwardRules } from './headers.js'
import { ABORTED, classify } from './upstream-call.js'
import { unavailable, upstreamError } from './upstream-errors.js'

/** The proxy step of a route with grpc: true. */
export function proxyGrpc (request: FastifyRequest, reply: FastifyReply, rules: ForwardRules): void {
  const route = (request.match as RouteMatch).route
  if (h2Stream(request.raw) === undefined) throw new GrpcNeedsHttp2Error()
  const pools = route.split === undefined ? route.pools : splitPools(route.split, request.headers, Math.random)
  const first = selectInPools(pools)
  if (first === undefined) throw unavailable(route.upstream, pools, request, reply)
  new GrpcCall(request, reply, pools, rules).attempt(first)
}

/** What the call is doing with the response. */
const enum Phase { Waiting, Forwarding, TrailersOnly, Answered }

class GrpcCall implements Dispatcher.DispatchHandler {
  private target: Target | undefined
  private tried: Set<Target> | undefined
  private tries = 0
  private probe = false
  private began = 0
  private phase = Phase.Waiting
  private abortTry: ((err: Error) => void) | undefined
  private pending: Error | undefined
  private timer: NodeJS.Timeout | undefined
  private resume: (() => void) | undefined
  /** When the client's deadline passes (performance.now()); undefined: it set none. */
  private readonly deadlineAt: number | undefined
  private readonly body: Readable

  constructor (
    private readonly request: FastifyRequest,
    private readonly reply: FastifyReply,
    private readonly pools: ReadonlyArray<Pool<Target>>,
    private readonly rules: ForwardRules
  ) {
    const header = request.headers['grpc-timeout']
    const timeout = grpcTimeoutMs(typeof header === 'string' ? header : undefined)
    this.deadlineAt = timeout === undefined ? undefined : performance.now() + timeout
    // Content parsing hands the request stream over as the body: messages go up as they come.
    this.body = request.body as Readable
    // The client cancelled (or its deadline passed on its side): the upstream's stream is reset.
    onSocketClose(clientChannel(request.raw), () => {
      if (this.phase !== Phase.Answered) this.abort(new ClientClosedError())
    })
    reply.raw.on('drain', () => this.resume?.())
  }

  attempt (target: Target): void {
    const { request } = this
    const route = (request.match as RouteMatch).route
    const left = this.deadlineAt === undefined ? Infinity : this.deadlineAt - performance.now()
    this.target = target
    this.tries++
    if (this.tries > 1) (this.tried ??= new Set()).add(target)
    request.target = target
    target.inFlight++
    this.probe = target.breaker.acquire()
    this.pending = undefined
    const headers = upstreamRequestHeaders(request, target.host, true, this.rules, route.requestHeaders)
    // The upstream learns what is left of the deadline, not what the client first asked.
    const at = headers.findIndex((h, i) => i % 2 === 0 && h.toLowerCase() === 'grpc-timeout')
    if (at !== -1) headers[at + 1] = grpcTimeout(left)
    const limit = Math.min(route.upstream.requestTimeoutMs, left)
    this.timer = setTimeout(() => this.abort(new UpstreamTimeoutError(`${route.upstream.name} (${target.origin})`, formatMs(limit))), limit)
    this.began = performance.now()
    target.pool.dispatch({ method: 'POST', path: (request.match as RouteMatch).forward, headers, body: this.body, headersTimeout: 0, bodyTimeout: 0 }, this)
  }

  private abort (reason: Error): void {
    if (this.abortTry !== undefined) this.abortTry(reason)
    else this.pending = reason
  }

  onConnect (abort: (err?: Error) => void): void {
    if (this.pending !== undefined) abort(this.pending)
    else this.abortTry = abort
  }

  onHeaders (statusCode: number, rawHeaders: Buffer[], resume: () => void): boolean {
    const target = this.target as Target
    const upstream = (this.request.match as RouteMatch).route.upstream
    target.recordAnswer(this.probe, statusCode, upstream.failureStatuses, (performance.now() - this.began) / 1000)
    const { reply } = this
    if (statusCode !== 200) {
      // Not a gRPC answer (a proxy's 404, an overloaded server's 503): its status, in gRPC's terms.
      this.phase = Phase.Answered
      reply.send(Object.assign(new UpstreamBadResponseError(`${upstream.name} (${target.origin})`, `HTTP ${statusCode} instead of a gRPC answer`), { grpcStatus: grpcStatusOf(statusCode) }))
      return true
    }
    const headers = clientResponseHeaders(rawHeaders, reply, (this.request.match as RouteMatch).route.responseHeaders)
    reply.hijack()
    this.resume = resume
    // grpc-status among the headers: a trailers-only answer, to be passed on as one (headers
    // written now would be followed by an empty end, which clients take for a broken call).
    if (headers.some((h, i) => i % 2 === 0 && h.toLowerCase() === 'grpc-status')) {
      for (let i = 0; i < headers.length; i += 2) reply.raw.setHeader(headers[i] as string, headers[i + 1] as string)
      this.phase = Phase.TrailersOnly
      return true
    }
    reply.raw.writeHead(200, headers)
    this.phase = Phase.Forwarding
    return true
  }

  onData (chunk: Buffer): boolean {
    if (this.phase !== Phase.Forwarding) return true
    return this.reply.raw.write(chunk)
  }

  onComplete (trailers: string[] | null): void {
    this.ended()
    const res = this.reply.raw
    if (this.phase === Phase.Forwarding) {
      // undici's types say a flat list; over HTTP/2 its client-h2 passes Node's trailers object.
      const received = trailers as unknown as Record<string, string | string[] | undefined> | null
      if (received !== null) {
        const copy: Record<string, string | string[]> = {}
        for (const name of Object.keys(received)) {
          const value = received[name]
          if (value !== undefined) copy[name] = value
        }
        res.addTrailers(copy)
      }
      res.end()
    } else if (this.phase === Phase.TrailersOnly) {
      res.end()
    }
    this.phase = Phase.Answered
  }

  onError (err: Error): void {
    const target = this.target as Target
    this.ended()
    const upstream = (this.request.match as RouteMatch).route.upstream
    const where = `upstream ${upstream.name} (${target.origin})`
    if (this.phase === Phase.Forwarding) {
      // Messages went out already: the call ends with a status in the trailers.
      const res = this.reply.raw
      if (err instanceof UpstreamTimeoutError) res.addTrailers({ 'grpc-status': String(GrpcStatus.DEADLINE_EXCEEDED), 'grpc-message': grpcMessage(`${where}: the deadline passed`) })
      else if (!(err instanceof ClientClosedError)) res.addTrailers({ 'grpc-status': String(GrpcStatus.UNAVAILABLE), 'grpc-message': grpcMessage(`${where} broke off the call: ${err.message}`) })
      if (!(err instanceof ClientClosedError)) this.request.failure = { code: 'GATEHOUSE_ERR_UPSTREAM_RESET', message: `${where} broke off the call: ${err.message}` }
      res.end()
      this.phase = Phase.Answered
      return
    }
    if (this.phase === Phase.Answered) return
    const seconds = (performance.now() - this.began) / 1000
    if (err instanceof ClientClosedError || err instanceof UpstreamTimeoutError || ABORTED.has((err as { code?: string }).code ?? '')) {
      target.tries.record(err instanceof UpstreamTimeoutError ? 'timeout' : 'aborted', undefined, seconds)
      if (err instanceof UpstreamTimeoutError) target.breaker.record(this.probe, false, 'timeout')
      else target.breaker.release(this.probe)
      this.phase = Phase.Answered
      this.reply.send(err)
      return
    }
    const why = classify(err)
    target.tries.record(why, undefined, seconds)
    target.breaker.record(this.probe, false, why)
    // Nothing reached the upstream and no message was read from the client: another target can take the call.
    const next = why === 'connect-failure' && !this.body.readableDidRead && this.tries <= upstream.retry.attempts
      ? selectInPools(this.pools, Math.random, this.tried ??= new Set([target]))
      : undefined
    if (next !== undefined) {
      this.attempt(next)
      return
    }
    this.phase = Phase.Answered
    this.reply.send(upstreamError(this.request, this.reply, upstream, target, err, undefined))
  }

  /** The try is over: its slot and timer go. */
  private ended (): void {
    clearTimeout(this.timer)
    this.abortTry = undefined
    ;(this.target as Target).inFlight--
  }
}
