// One client request's way to an upstream: a series of tries, each to a target chosen when it
// starts, with backoff, the retry budget and the targets' breakers deciding. The call is its own
// undici dispatch handler: every try is `target.pool.dispatch(options, this)`, so the request's
// state travels with the dispatch (as in undici's own interceptors, lib/interceptor/retry.js),
// and the final response is written to the client as undici reads it, with no stream in between.
import type { ServerResponse } from 'node:http'
import { constants as h2 } from 'node:http2'
import type { Readable } from 'node:stream'
import type { Span } from '@opentelemetry/api'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { errors, type Dispatcher } from 'undici'
import { ClientTooSlowError, UpstreamUnavailableError } from '../../src/errors.js'
import { backoffMs, retryable, retryAfterMs, type TryFailure } from '../../src/upstream/retry.js'
import { selectInPools, type Pool } from '../../src/upstream/select.js'
import { tlsFailure, type Target } from '../../src/upstream/target.js'
import { h2Stream } from '../../src/http/client-stream.js'
import { socketProgress, type BufferMemory, type ClientRate } from '../client-rate/index.js'
import { affinityCookie } from '../route-table/affinity.js'
import type { CompiledRoute, CompiledUpstream } from '../route-table/route-table.js'
import { endTry, startTry } from '../tracing/spans.js'
import { clientResponseHeaders, rewriteLocations, upstreamRequestHeaders, type ForwardRules } from './headers.js'
import { CONNECT_FAILURE } from './upstream-errors.js'

const PRECISE_BELOW_MS = 2000

const TIMEOUT = new Set(['UND_ERR_HEADERS_TIMEOUT'])
/** undici codes of a try aborted by the gateway (the client left, a deadline). */
export const ABORTED = new Set(['UND_ERR_ABORTED', 'ABORT_ERR'])

/** What a try that got no response ran into. */
export function classify (err: Error & { code?: string }): TryFailure {
  const code = err.code ?? ''
  // A failed TLS handshake carried no request to the upstream's application.
  if (CONNECT_FAILURE.has(code) || tlsFailure(err) !== undefined) return 'connect-failure'
  if (TIMEOUT.has(code)) return 'timeout'
  return 'reset'
}

export interface CallOptions {
  request: FastifyRequest
  reply: FastifyReply
  upstream: CompiledUpstream
  /** Where tries choose their target, in order: the route's pools (one group of a split, then its fallbacks). */
  pools: ReadonlyArray<Pool<Target>>
  /** The client's sticky target, when its affinity named one that admitted the request. */
  sticky: Target | undefined
  /** The target of the first try, already selected (so "none available" is answered before any proxying). */
  first: Target
  /** Normalised, rewritten path with the query string. */
  path: string
  rules: ForwardRules
  /** The route matched: its redirect rewrite and header rules apply to each try and to the response. */
  route: CompiledRoute
  clientRate: ClientRate
  /** How far the response may be read ahead of a client that is behind: the route's responseBuffer, within RESPONSE_BUFFER_MEMORY. */
  readAhead: { limit: number, memory: BufferMemory }
  /** The call failed for good, before any response was written: answer the client with it. */
  fail: (error: Error, target: Target | undefined) => void
  /** The call is over, whatever its outcome. */
  done: () => void
  random?: () => number
}

/** What a try is doing with the response it got. */
const enum Phase { Waiting, Forwarding, Discarding }

export class UpstreamCall implements Dispatcher.DispatchHandler {
  private body: Buffer | Readable | undefined
  private replayable = true
  private headers: string[] | undefined
  private hostAt = 0
  /** Targets tried so far; made on the first retry (most requests never need it). */
  private tried: Set<Target> | undefined
  private target: Target | undefined
  private tries = 0
  private readonly startedAt = Date.now()
  private done = false
  /** Set when the client left: every try from now on is aborted. */
  private cancelled: Error | undefined

  // The try in progress.
  private phase = Phase.Waiting
  private probe = false
  private sentIn = ''
  private began = 0
  private abortTry: ((err: Error) => void) | undefined
  private pendingAbort: Error | undefined
  private deadline: NodeJS.Timeout | undefined
  private span: Span | undefined
  /** After a discarded response: the delay before the next try. */
  private retryIn = 0
  private retryReason: TryFailure | number = 0
  private retryError: Error | null = null
  /** The try in progress is a retry: it counts in the upstream's retry budget until it settles. */
  private isRetry = false
  private resumeUpstream: (() => void) | undefined
  /** While the client is behind on the response: stops watching its read rate. */
  private stopWatch: (() => void) | undefined
  /** Response bytes read ahead of the client since it fell behind, taken from readAhead.memory. */
  private readAhead = 0
  /** The upstream waits for the client to drain. */
  private paused = false
  /** Response body bytes written to the client (an HTTP/2 stream's progress is counted from it). */
  private written = 0

  constructor (private readonly o: CallOptions) {
    o.upstream.budget.active++
  }

  /** Runs the tries; the body is a Buffer kept for replay, a stream sent once, or undefined. */
  start (body: Buffer | Readable | undefined, replayable: boolean): void {
    this.body = body
    this.replayable = replayable
    const { upstream, pools, first, random } = this.o
    if (this.cancelled !== undefined) {
      this.fail(this.cancelled)
      return
    }
    // After a wait for the body the first choice may have filled up or tripped: choose again.
    const target = first.admits() ? first : selectInPools(pools, random)
    if (target === undefined) {
      this.fail(new UpstreamUnavailableError(upstream.name))
      return
    }
    this.attempt(target)
  }

  /** The client left: abort the try in progress and send no other. */
  cancel (reason: Error): void {
    if (this.cancelled !== undefined || this.done) return
    this.cancelled = reason
    if (this.abortTry !== undefined) this.abortTry(reason)
    else this.pendingAbort = reason
  }

  private attempt (target: Target): void {
    const { upstream, request } = this.o
    this.probe = target.breaker.acquire()
    // half-open for a probe (acquire() moves an open breaker whose time is up).
    this.sentIn = target.breaker.state
    const isRetry = this.tries > 0
    this.isRetry = isRetry
    this.tries++
    if (isRetry) (this.tried ??= new Set([this.target as Target])).add(target)
    this.target = target
    this.phase = Phase.Waiting
    this.abortTry = undefined
    this.pendingAbort = undefined
    request.target = target
    target.inFlight++
    let headers = this.headers
    if (headers === undefined) {
      headers = this.headers = upstreamRequestHeaders(request, target.host, this.body !== undefined, this.o.rules, this.o.route.requestHeaders)
      this.hostAt = headers.indexOf('host') + 1
    } else {
      headers[this.hostAt] = target.host
    }
    if (request.span != null) {
      const traced = startTry(request.span, request.method, target, this.o.path, this.tries - 1, headers, request.headers.traceparent !== undefined || request.headers.tracestate !== undefined)
      this.span = traced.span
      headers = traced.headers
      if (this.probe) this.span?.addEvent('circuit_breaker.probe')
    }
    this.began = performance.now()
    // undici checks its timeouts on a timer that ticks every ~500 ms, so a short request timeout
    // would fire up to a second late: below PRECISE_BELOW_MS the try gets a timer of its own.
    if (upstream.requestTimeoutMs < PRECISE_BELOW_MS) {
      this.deadline = setTimeout(() => this.abortWith(new errors.HeadersTimeoutError()), upstream.requestTimeoutMs)
    }
    target.pool.dispatch({
      method: request.method as Dispatcher.HttpMethod,
      path: this.o.path,
      headers,
      body: this.body ?? null,
      headersTimeout: upstream.requestTimeoutMs,
      bodyTimeout: upstream.idleTimeoutMs
    }, this)
  }

  private abortWith (reason: Error): void {
    if (this.abortTry !== undefined) this.abortTry(reason)
    else this.pendingAbort = reason
  }

  // ---- undici's dispatch handler ----------------------------------------------------------

  onConnect (abort: (err?: Error) => void): void {
    const pending = this.cancelled ?? this.pendingAbort
    if (pending !== undefined) {
      abort(pending)
      return
    }
    this.abortTry = abort
  }

  onHeaders (statusCode: number, rawHeaders: Buffer[], resume: () => void): boolean {
    // Interim responses (102, 103) are not passed on: the client gets the final one.
    if (statusCode < 200) return true
    clearTimeout(this.deadline)
    const { upstream } = this.o
    const target = this.target as Target
    target.recordAnswer(this.probe, statusCode, upstream.failureStatuses, (performance.now() - this.began) / 1000)
    this.settled(statusCode)
    const delay = this.retryDelay(statusCode, rawHeaders)
    if (delay !== undefined) {
      // The failed response is not needed: read it out so its connection can be reused, then retry.
      this.phase = Phase.Discarding
      this.retryIn = delay
      this.retryReason = statusCode
      this.retryError = null
      return true
    }
    const reply = this.o.reply
    try {
      const headers = clientResponseHeaders(rawHeaders, reply, this.o.route.responseHeaders)
      const redirects = this.o.route.redirects
      if (redirects !== undefined) rewriteLocations(headers, redirects, target.origin)
      // The affinity cookie names the target that answered, when the client's did not (none yet, or moved).
      const affinity = this.o.route.affinity
      if (affinity?.kind === 'cookie' && this.o.sticky !== target) {
        const cookie = affinityCookie(affinity, target)
        if (cookie !== undefined) headers.push('set-cookie', cookie)
      }
      reply.raw.writeHead(statusCode, headers)
    } catch (err) {
      // A header Node will not send (an invalid name or value): read the response out, answer 502.
      this.phase = Phase.Discarding
      this.retryIn = -1
      this.retryError = new errors.HTTPParserError(`a response header the gateway cannot pass on: ${(err as Error).message}`)
      return true
    }
    // From here the response is the call's to write: Fastify no longer sends one.
    reply.hijack()
    this.phase = Phase.Forwarding
    this.resumeUpstream = resume
    return true
  }

  onData (chunk: Buffer): boolean {
    if (this.phase !== Phase.Forwarding) return true
    const res = this.o.reply.raw
    this.written += chunk.length
    if (res.write(chunk)) return true
    if (this.stopWatch === undefined) this.behind(res)
    // Read ahead of the client into memory, so the upstream can finish and free its slot; past
    // the route's responseBuffer or RESPONSE_BUFFER_MEMORY, the upstream waits for the client.
    const { limit, memory } = this.o.readAhead
    if (this.readAhead + chunk.length <= limit && memory.take(chunk.length)) {
      this.readAhead += chunk.length
      return true
    }
    this.paused = true
    return false
  }

  /**
   * The client is not keeping up: until it drains what was written (or the response closes) it
   * must read at the minimum rate, and whatever was read ahead for it stays in memory.
   */
  private behind (res: ServerResponse): void {
    const rate = this.o.clientRate
    const raw = this.o.request.raw
    // HTTP/2: the connection's bytes are every stream's; this stream's are what was written less
    // what it still holds (flow control keeps it there while the client does not read).
    const stream = h2Stream(raw)
    const progress = stream === undefined ? socketProgress(raw.socket, 'response') : () => this.written - stream.writableLength
    this.stopWatch = rate.behind(progress, () => {
      const err = new ClientTooSlowError('read the response', rate.minDataRate)
      this.o.request.failure = { code: err.code, message: err.message }
      // A reset, not a FIN: the kernel would otherwise keep trying to deliver what it holds. On
      // HTTP/2, the stream's reset: the other streams of the connection go on.
      if (stream === undefined) raw.socket.resetAndDestroy()
      else stream.close(h2.NGHTTP2_CANCEL)
    })
    const caughtUp = (): void => {
      res.off('drain', caughtUp)
      res.off('close', caughtUp)
      this.stopWatch?.()
      this.stopWatch = undefined
      this.o.readAhead.memory.give(this.readAhead)
      this.readAhead = 0
      // After 'close' the try is over or being cancelled: nothing to resume.
      if (this.paused && !res.destroyed) {
        this.paused = false
        this.resumeUpstream?.()
      }
    }
    // 'drain' is not emitted once the response has ended; 'close' always is.
    res.on('drain', caughtUp)
    res.on('close', caughtUp)
  }

  onComplete (): void {
    this.abortTry = undefined
    const target = this.target as Target
    target.inFlight--
    if (this.phase === Phase.Discarding) {
      this.afterDiscard()
      return
    }
    this.o.reply.raw.end()
    this.finish()
  }

  onError (err: Error): void {
    this.abortTry = undefined
    clearTimeout(this.deadline)
    const target = this.target as Target
    target.inFlight--
    if (this.phase === Phase.Forwarding) {
      // The upstream broke off mid-body: the client's response cannot be completed either.
      if (this.cancelled === undefined) this.o.request.failure = { code: 'GATEHOUSE_ERR_UPSTREAM_RESET', message: `upstream ${target.upstream} (${target.origin}) broke off the response body: ${err.message}` }
      this.o.reply.raw.destroy()
      this.finish()
      return
    }
    if (this.phase === Phase.Discarding) {
      // Reading out a response already counted failed: go on as if it had ended.
      this.afterDiscard()
      return
    }
    const seconds = (performance.now() - this.began) / 1000
    if (this.cancelled !== undefined || ABORTED.has((err as { code?: string }).code ?? '')) {
      target.tries.record('aborted', undefined, seconds)
      target.breaker.release(this.probe)
      this.settled('aborted')
      this.fail(err)
      return
    }
    const why = classify(err)
    target.tries.record(why, undefined, seconds)
    target.breaker.record(this.probe, false, why)
    this.settled(why)
    const delay = this.retryDelay(why, undefined)
    if (delay === undefined) this.fail(err)
    else this.retryAfter(delay, why, err)
  }

  // ---- between tries ----------------------------------------------------------------------

  /** A response read out (not passed on) is over: retry, or fail with what made it unusable. */
  private afterDiscard (): void {
    if (this.retryIn < 0) this.fail(this.retryError as Error)
    else this.retryAfter(this.retryIn, this.retryReason, this.retryError)
  }

  /** Ends the try's span; a try that moved its target's breaker says so (opened, closed, re-opened). */
  private settled (outcome: number | string): void {
    if (this.isRetry) {
      this.isRetry = false
      this.o.upstream.budget.retrying--
    }
    const span = this.span
    if (span === undefined) return
    this.span = undefined
    const state = (this.target as Target).breaker.state
    if (state !== this.sentIn) span.addEvent('circuit_breaker.transition', { 'circuit_breaker.state.before': this.sentIn, 'circuit_breaker.state': state })
    endTry(span, outcome)
  }

  private retryAfter (delay: number, why: TryFailure | number, err: Error | null): void {
    const { upstream, pools, request, random } = this.o
    upstream.budget.retrying++
    upstream.budget.retries[why] = (upstream.budget.retries[why] ?? 0) + 1
    request.log.debug({ upstream: upstream.name, reason: why, retry: this.tries, delayMs: delay }, 'retrying upstream request')
    setTimeout(() => {
      if (this.cancelled !== undefined) {
        upstream.budget.retrying--
        this.fail(this.cancelled)
        return
      }
      // Another target where there is one (in the request's group first); the same one only when it is the only one left.
      const target = selectInPools(pools, random, this.tried ?? new Set([this.target as Target])) ?? selectInPools(pools, random)
      if (target === undefined) {
        upstream.budget.retrying--
        this.fail(err ?? new UpstreamUnavailableError(upstream.name))
        return
      }
      this.attempt(target)
    }, delay).unref()
  }

  /** Milliseconds to wait before the next try, or undefined when there is none. */
  private retryDelay (why: TryFailure | number, rawHeaders: Buffer[] | undefined): number | undefined {
    // Statuses below 500 are never retried (the schema allows 500-599 only): most answers stop here.
    if (typeof why === 'number' && why < 500) return undefined
    const { upstream, request, random } = this.o
    const retry = upstream.retry
    if (this.tries > retry.attempts || !this.replayable || this.cancelled !== undefined) return undefined
    if (!retryable(request.method, why, retry.on)) return undefined
    // A connect failure never reached an upstream: retrying it adds no load there, so it does not
    // spend the budget (and a dead target does not fail requests while its breaker trips).
    if (why !== 'connect-failure' && !upstream.budget.allows()) {
      upstream.budget.denied++
      return undefined
    }
    const delay = backoffMs(this.tries, retry, random)
    if (why !== 503 || rawHeaders === undefined) return delay
    // Honour the upstream's Retry-After when it fits the time this request has left.
    const after = retryAfterMs(headerValue(rawHeaders, 'retry-after'))
    if (after === undefined) return delay
    return after <= upstream.requestTimeoutMs - (Date.now() - this.startedAt) ? after : undefined
  }

  /** Ends the call with `err`, before any response was written (also when the body could not be read). */
  fail (err: Error): void {
    if (this.done) return
    this.finish()
    this.o.fail(err, this.target)
  }

  private finish (): void {
    if (this.done) return
    this.done = true
    this.o.upstream.budget.active--
    this.o.done()
  }
}

/** The value of a header in undici's raw list, or undefined. */
function headerValue (raw: Buffer[], name: string): string | undefined {
  for (let i = 0; i < raw.length; i += 2) {
    const field = raw[i] as Buffer
    if (field.length === name.length && field.toString('latin1').toLowerCase() === name) return (raw[i + 1] as Buffer).toString('latin1')
  }
  return undefined
}
