// A WebSocket handshake's way upstream: a target chosen by its tunnel budget, the handshake sent
// with undici's upgrade dispatch, and the upstream's answer passed on whatever it is. A 101 becomes
// a tunnel; any other answer (401, 404, 503, with its body) is what the client gets. The client
// never gets a 101 the upstream has not sent. Only connect failures are retried, on another target.
import type { Socket } from 'node:net'
import type { Span } from '@opentelemetry/api'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Dispatcher } from 'undici'
import type { WebSocketSettings } from '../../src/config/route-file/index.js'
import { ClientClosedError, NotReadyError, TunnelsFullError, UpgradeRefusedError, UpstreamBadResponseError, UpstreamSaturatedError } from '../../src/errors.js'
import { onSocketClose } from '../../src/http/socket-close.js'
import { selectInPools, type Pool } from '../../src/upstream/select.js'
import type { Target, TunnelSlots } from '../../src/upstream/target.js'
import type { RouteMatch } from '../route-table/index.js'
import { splitPools } from '../route-table/split.js'
import { endTry, startTry } from '../tracing/spans.js'
import { isWebSocketHandshake, type WebSocketState } from '../websocket/index.js'
import { clientResponseHeaders, upstreamRequestHeaders, type ForwardRules } from './headers.js'
import { ABORTED, classify } from './upstream-call.js'
import { unavailable, upstreamError } from './upstream-errors.js'

/**
 * The proxy step of an upgrade request: true when it took the request on (a WebSocket handshake,
 * answered or refused); false for another protocol's offer (curl's `Upgrade: h2c`), which is
 * ignored as RFC 9110 §7.8 allows and served as a plain request.
 */
export function proxyUpgrade (request: FastifyRequest, reply: FastifyReply, rules: ForwardRules, websocket: WebSocketState): boolean {
  const { route, forward } = request.match as RouteMatch
  if (!isWebSocketHandshake(request)) {
    // Node has stopped parsing this connection: a body after the head could not be read.
    if (request.headers['content-length'] !== undefined || request.headers['transfer-encoding'] !== undefined) throw new UpgradeRefusedError('an Upgrade offer other than websocket is ignored only on a request without a body')
    return false
  }
  if (!route.websocket) throw new UpgradeRefusedError(`the route ${route.path} of upstream ${route.upstream.name} does not accept WebSocket upgrades`)
  if (request.method !== 'GET') throw new UpgradeRefusedError('a WebSocket handshake must be a GET')
  // A tunnel opened now would be cut at SHUTDOWN_TIMEOUT: from SIGTERM on, the client is sent elsewhere.
  if (request.server.draining) {
    websocket.settle(request, 'unavailable')
    reply.header('retry-after', '5')
    throw new NotReadyError('draining for shutdown')
  }
  const upstream = route.upstream
  const pools = (route.split === undefined ? route.pools : splitPools(route.split, request.headers, Math.random)).map(tunnelPool)
  const first = selectInPools(pools)
  if (first === undefined) {
    websocket.settle(request, 'unavailable')
    const error = unavailable(upstream, route.pools, request, reply)
    throw error instanceof UpstreamSaturatedError ? new TunnelsFullError(upstream.name, upstream.tunnels?.maxPerTarget ?? 0) : error
  }
  new UpgradeCall(request, reply, pools, forward, rules, websocket).attempt(first)
  return true
}

/** A pool of targets as a pool of their tunnel budgets (only handshakes pay for this). */
function tunnelPool (pool: Pool<Target>): Pool<TunnelSlots> {
  return { targets: pool.targets.map(t => t.tunnels), totalWeight: pool.totalWeight }
}

class UpgradeCall implements Dispatcher.DispatchHandler {
  private slots: TunnelSlots | undefined
  private tried: Set<TunnelSlots> | undefined
  private tries = 0
  private probe = false
  private began = 0
  private span: Span | undefined
  private abortTry: ((err: Error) => void) | undefined
  private cancelled: Error | undefined
  private forwarding = false
  private readonly unwatch: () => void

  constructor (
    private readonly request: FastifyRequest,
    private readonly reply: FastifyReply,
    private readonly pools: ReadonlyArray<Pool<TunnelSlots>>,
    private readonly path: string,
    private readonly rules: ForwardRules,
    private readonly websocket: WebSocketState
  ) {
    // The client left during the handshake: the try is aborted, and no tunnel follows.
    this.unwatch = onSocketClose(request.raw.socket, () => {
      this.cancelled = new ClientClosedError()
      this.abortTry?.(this.cancelled)
    })
  }

  attempt (slots: TunnelSlots): void {
    const { request } = this
    const target = slots.target
    const upstream = (request.match as RouteMatch).route.upstream
    this.slots = slots
    this.tries++
    if (this.tries > 1) (this.tried ??= new Set()).add(slots)
    slots.inFlight++
    target.inFlight++
    request.target = target
    this.probe = target.breaker.acquire()
    let headers = upstreamRequestHeaders(request, target.host, false, this.rules, request.match?.route.requestHeaders)
    if (request.span != null) {
      const traced = startTry(request.span, 'GET', target, this.path, this.tries - 1, headers, request.headers.traceparent !== undefined || request.headers.tracestate !== undefined)
      this.span = traced.span
      headers = traced.headers
    }
    this.began = performance.now()
    target.pool.dispatch({ method: 'GET', path: this.path, headers, upgrade: 'websocket', headersTimeout: upstream.requestTimeoutMs }, this)
  }

  onConnect (abort: (err?: Error) => void): void {
    if (this.cancelled !== undefined) abort(this.cancelled)
    else this.abortTry = abort
  }

  onUpgrade (statusCode: number, rawHeaders: Buffer[] | string[] | null, socket: Socket): void {
    const slots = this.slots as TunnelSlots
    this.answered(statusCode)
    this.unwatch()
    if (this.cancelled !== undefined) {
      socket.destroy()
      slots.inFlight--
      return
    }
    const { request, reply } = this
    const route = (request.match as RouteMatch).route
    try {
      // The 101's Upgrade and Connection are hop-by-hop like any, and are this hop's too.
      const headers = clientResponseHeaders(rawHeaders as Buffer[], reply, route.responseHeaders)
      headers.push('connection', 'Upgrade', 'upgrade', 'websocket')
      reply.raw.writeHead(101, headers)
    } catch (err) {
      // A header Node will not send (an invalid name or value): no tunnel, 502.
      socket.destroy()
      slots.inFlight--
      this.websocket.settle(request, 'failed')
      reply.send(new UpstreamBadResponseError(`${route.upstream.name} (${slots.target.origin})`, `a 101 header the gateway cannot pass on: ${(err as Error).message}`))
      return
    }
    reply.hijack()
    reply.raw.end()
    this.websocket.settle(request, 'upgraded')
    // A route with websocket: true always has its file's settings.
    this.websocket.tunnel(request, socket, slots, route.upstream.tunnels as WebSocketSettings)
  }

  onHeaders (statusCode: number, rawHeaders: Buffer[], resume: () => void): boolean {
    if (statusCode < 200) return true
    const { request, reply } = this
    const route = (request.match as RouteMatch).route
    this.answered(statusCode)
    this.websocket.settle(request, 'refused')
    // A header Node will not send throws here: undici then ends the try with onError (502).
    reply.raw.writeHead(statusCode, clientResponseHeaders(rawHeaders, reply, route.responseHeaders))
    reply.hijack()
    this.forwarding = true
    reply.raw.on('drain', resume)
    return true
  }

  onData (chunk: Buffer): boolean {
    return this.reply.raw.write(chunk)
  }

  onComplete (): void {
    this.ended()
    this.reply.raw.end()
  }

  onError (err: Error): void {
    const slots = this.slots as TunnelSlots
    const target = slots.target
    this.ended()
    if (this.forwarding) {
      this.reply.raw.destroy()
      return
    }
    const { request, reply } = this
    const seconds = (performance.now() - this.began) / 1000
    if (this.cancelled !== undefined || ABORTED.has((err as { code?: string }).code ?? '')) {
      target.tries.record('aborted', undefined, seconds)
      target.breaker.release(this.probe)
      this.endSpan('aborted')
      reply.send(this.cancelled ?? err)
      return
    }
    const why = classify(err)
    target.tries.record(why, undefined, seconds)
    target.breaker.record(this.probe, false, why)
    this.endSpan(why)
    const upstream = (request.match as RouteMatch).route.upstream
    // Nothing reached the upstream: another target can take the handshake.
    const next = why === 'connect-failure' && this.tries <= upstream.retry.attempts ? selectInPools(this.pools, Math.random, this.tried ??= new Set([slots])) : undefined
    if (next !== undefined) {
      this.attempt(next)
      return
    }
    this.websocket.settle(request, 'failed')
    reply.send(upstreamError(request, reply, upstream, target, err, undefined))
  }

  /** The upstream answered the handshake: the try counts for its target's breaker and metrics. */
  private answered (statusCode: number): void {
    const target = (this.slots as TunnelSlots).target
    target.inFlight--
    target.recordAnswer(this.probe, statusCode, (this.request.match as RouteMatch).route.upstream.failureStatuses, (performance.now() - this.began) / 1000)
    this.endSpan(statusCode)
  }

  /** The try is over without a tunnel: its slots are free. */
  private ended (): void {
    const slots = this.slots as TunnelSlots
    if (!this.forwarding) slots.target.inFlight--
    slots.inFlight--
    this.abortTry = undefined
    this.unwatch()
  }

  private endSpan (outcome: number | string): void {
    if (this.span !== undefined) endTry(this.span, outcome)
    this.span = undefined
  }
}
