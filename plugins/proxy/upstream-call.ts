// One client request's way to an upstream: a series of tries, each to a target chosen when it
// starts, with backoff, the retry budget and the targets' breakers deciding. @fastify/reply-from
// sees a single dispatch; it writes the final response (its own retries are off).
import type { FastifyRequest } from 'fastify'
import { errors, type Dispatcher } from 'undici'
import { UpstreamUnavailableError } from '../../src/errors.js'
import { backoffMs, retryable, retryAfterMs, type TryFailure } from '../../src/upstream/retry.js'
import { selectTarget } from '../../src/upstream/select.js'
import { tlsFailure, type Target } from '../../src/upstream/target.js'
import type { CompiledUpstream } from '../route-table/route-table.js'
import { endTry, startTry } from '../tracing/spans.js'
import { CancelSignal } from './cancel-signal.js'

const PRECISE_BELOW_MS = 2000

type Callback = (err: Error | null, data: Dispatcher.ResponseData) => void

// undici error codes by what they mean for a retry. A connect failure never reached the upstream.
export const CONNECT_FAILURE = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'UND_ERR_CONNECT_TIMEOUT'])
const TIMEOUT = new Set(['UND_ERR_HEADERS_TIMEOUT'])
const ABORTED = new Set(['UND_ERR_ABORTED', 'ABORT_ERR'])

function classify (err: Error & { code?: string }): TryFailure | 'aborted' {
  const code = err.code ?? ''
  // A failed TLS handshake carried no request to the upstream's application.
  if (CONNECT_FAILURE.has(code) || tlsFailure(err) !== undefined) return 'connect-failure'
  if (TIMEOUT.has(code)) return 'timeout'
  if (ABORTED.has(code) || err.name === 'AbortError') return 'aborted'
  return 'reset'
}

export interface CallOptions {
  upstream: CompiledUpstream
  /** The target of the first try, already selected (so "none available" is answered before any proxying). */
  first: Target
  /** The client request: its method, its logger; `target` is set to each try's target. */
  request: FastifyRequest
  /** Normalised, rewritten path with the query string. */
  path: string
  /** The request body kept for replay; undefined when there is none or it is streamed. */
  replay: Buffer | undefined
  /** Whether a try may be repeated at all (false for a streamed body). */
  replayable: boolean
  /** Aborted when the client goes away: cancels the try in progress, whatever its phase. */
  signal: CancelSignal
  random?: () => number
}

export class UpstreamCall {
  /** Targets tried so far; made on the first retry (most requests never need it). */
  private tried: Set<Target> | undefined
  private last: Target | undefined
  private readonly startedAt = Date.now()
  private tries = 0
  private done = false

  constructor (private readonly o: CallOptions) {}

  /** Runs the tries; `callback` gets the final response or the last error. */
  run (options: Dispatcher.RequestOptions, callback: Callback): void {
    const { upstream, first, random } = this.o
    upstream.budget.active++
    // After a wait for the body the first choice may have filled up or tripped: choose again.
    const target = first.admits() ? first : selectTarget(upstream.targets, upstream.totalWeight, random)
    if (target === undefined) {
      this.finish(callback, new UpstreamUnavailableError(upstream.name))
      return
    }
    this.attempt(options, callback, target, false)
  }

  private attempt (options: Dispatcher.RequestOptions, callback: Callback, target: Target, isRetry: boolean): void {
    const { upstream, signal, request } = this.o
    const probe = target.breaker.acquire()
    // half-open for a probe (acquire() moves an open breaker whose time is up).
    const sentIn = target.breaker.state
    this.tries++
    if (this.last !== undefined) (this.tried ??= new Set([this.last])).add(target)
    this.last = target
    request.target = target
    target.inFlight++
    // reply-from's headers object, made for this request; undici reads it when the try starts.
    const span = request.span == null ? undefined : startTry(request.span, options.method, target, this.o.path, this.tries - 1, options.headers as Record<string, unknown>)
    if (probe) span?.addEvent('circuit_breaker.probe')
    // A try that moves its target's breaker says so on its span (opened, closed, re-opened).
    const settled = (outcome: number | string): void => {
      if (span === undefined) return
      const state = target.breaker.state
      if (state !== sentIn) span.addEvent('circuit_breaker.transition', { 'circuit_breaker.state.before': sentIn, 'circuit_breaker.state': state })
      endTry(span, outcome)
    }
    const began = performance.now()
    // undici checks its timeouts on a timer that ticks every ~500 ms, so a short request timeout
    // would fire up to a second late: below PRECISE_BELOW_MS the try gets a timer of its own.
    let deadline: NodeJS.Timeout | undefined
    let detach: (() => void) | undefined
    let trySignal = signal
    if (upstream.requestTimeoutMs < PRECISE_BELOW_MS) {
      const timeout = new CancelSignal()
      const cancel = (): void => timeout.abort(signal.reason as Error)
      signal.once('abort', cancel)
      detach = () => signal.removeListener('abort', cancel)
      deadline = setTimeout(() => timeout.abort(new errors.HeadersTimeoutError()), upstream.requestTimeoutMs)
      trySignal = timeout
    }
    target.pool.request({
      method: options.method,
      headers: options.headers,
      path: this.o.path,
      body: this.o.replay ?? options.body,
      signal: trySignal,
      headersTimeout: upstream.requestTimeoutMs,
      bodyTimeout: upstream.idleTimeoutMs
    }, (err, data) => {
      clearTimeout(deadline)
      detach?.()
      const seconds = (performance.now() - began) / 1000
      if (isRetry) upstream.budget.retrying--
      if (err !== null) {
        target.inFlight--
        const why = signal.aborted ? 'aborted' : classify(err)
        target.tries.record(why, undefined, seconds)
        if (why === 'aborted') {
          target.breaker.release(probe)
          settled(why)
          this.finish(callback, err)
          return
        }
        target.breaker.record(probe, false, why)
        settled(why)
        this.next(options, callback, target, why, err, undefined)
        return
      }
      const status = data.statusCode
      const failed = upstream.failureStatuses.has(status)
      target.breaker.record(probe, !failed, failed ? `status ${status}` : '')
      target.tries.record(failed ? 'bad-status' : 'ok', status, seconds)
      settled(status)
      this.next(options, callback, target, status, null, data)
    })
  }

  /** After a try: retry it, or hand the outcome to reply-from. */
  private next (options: Dispatcher.RequestOptions, callback: Callback, target: Target, why: TryFailure | number, err: Error | null, data: Dispatcher.ResponseData | undefined): void {
    const delay = this.retryDelay(why, data)
    if (delay === undefined) {
      if (data === undefined) {
        this.finish(callback, err as Error)
        return
      }
      // The target stays busy until the body is over (or cut); then the call is done.
      data.body.once('close', () => {
        target.inFlight--
        this.settle()
      })
      callback(null, data)
      return
    }
    const { upstream, request, random } = this.o
    // The failed response is not needed: read it out so its connection can be reused.
    if (data !== undefined) {
      data.body.once('close', () => { target.inFlight-- })
      data.body.dump().catch(() => {})
    }
    upstream.budget.retrying++
    upstream.budget.retries[why] = (upstream.budget.retries[why] ?? 0) + 1
    request.log.debug({ upstream: upstream.name, reason: why, retry: this.tries, delayMs: delay }, 'retrying upstream request')
    setTimeout(() => {
      if (this.o.signal.aborted) {
        upstream.budget.retrying--
        this.finish(callback, this.o.signal.reason as Error)
        return
      }
      // Another target where there is one; the same one only when it is the only one left.
      const target = selectTarget(upstream.targets, upstream.totalWeight, random, this.tried ?? new Set([this.last!])) ??
        selectTarget(upstream.targets, upstream.totalWeight, random)
      if (target === undefined) {
        upstream.budget.retrying--
        this.finish(callback, err ?? new UpstreamUnavailableError(upstream.name))
        return
      }
      this.attempt(options, callback, target, true)
    }, delay).unref()
  }

  /** Milliseconds to wait before the next try, or undefined when there is none. */
  private retryDelay (why: TryFailure | number, data: Dispatcher.ResponseData | undefined): number | undefined {
    // Statuses below 500 are never retried (the schema allows 500-599 only): most answers stop here.
    if (typeof why === 'number' && why < 500) return undefined
    const { upstream, request, replayable, signal, random } = this.o
    const retry = upstream.retry
    if (this.tries > retry.attempts || !replayable || signal.aborted) return undefined
    if (!retryable(request.method, why, retry.on)) return undefined
    // A connect failure never reached an upstream: retrying it adds no load there, so it does not
    // spend the budget (and a dead target does not fail requests while its breaker trips).
    if (why !== 'connect-failure' && !upstream.budget.allows()) {
      upstream.budget.denied++
      return undefined
    }
    const delay = backoffMs(this.tries, retry, random)
    if (why !== 503 || data === undefined) return delay
    // Honour the upstream's Retry-After when it fits the time this request has left.
    const after = retryAfterMs(data.headers['retry-after'])
    if (after === undefined) return delay
    return after <= upstream.requestTimeoutMs - (Date.now() - this.startedAt) ? after : undefined
  }

  private finish (callback: Callback, err: Error): void {
    this.settle()
    callback(err, undefined as unknown as Dispatcher.ResponseData)
  }

  private settle (): void {
    if (this.done) return
    this.done = true
    this.o.upstream.budget.active--
  }
}
