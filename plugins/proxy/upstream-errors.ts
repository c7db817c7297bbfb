// What the client is told when its request could not be completed upstream: one gateway error
// per cause, each naming the upstream and target.
import type { FastifyReply, FastifyRequest } from 'fastify'
import {
  BodyTooLargeError, ClientClosedError, ClientTooSlowError, RequestBufferFullError, UpstreamBadResponseError, UpstreamResetError, UpstreamSaturatedError, UpstreamTimeoutError,
  UpstreamNoTargetsError, UpstreamTlsError, UpstreamUnavailableError, UpstreamUnhealthyError, UpstreamUnreachableError
} from '../../src/errors.js'
import { formatMs } from '../../src/config/units.js'
import { clientChannel } from '../../src/http/client-stream.js'
import type { Pool } from '../../src/upstream/select.js'
import { malformedResponse, tlsFailure, type Target } from '../../src/upstream/target.js'
import type { CompiledUpstream } from '../route-table/route-table.js'

// undici error codes of a connection that never carried the request.
export const CONNECT_FAILURE = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'UND_ERR_CONNECT_TIMEOUT'])
// undici codes of an upstream that went quiet.
const TIMEOUT = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT'])

export const RETRY_AFTER_SATURATED = '1'

/**
 * 503 when no target of the request's pools admits it: saturated; every breaker open (then
 * Retry-After says until the next probe); every target failing its health checks; or no targets.
 */
export function unavailable (upstream: CompiledUpstream, pools: ReadonlyArray<Pool<Target>>, request: FastifyRequest, reply: FastifyReply): Error {
  let soonest = Infinity
  let targets = 0
  for (const pool of pools) {
    for (const t of pool.targets) {
      targets++
      if (t.ejected) continue
      if (t.breaker.state !== 'open') {
        reply.header('retry-after', RETRY_AFTER_SATURATED)
        return new UpstreamSaturatedError(upstream.name)
      }
      soonest = Math.min(soonest, t.breaker.retryAfterMs())
    }
  }
  if (targets === 0) {
    reply.header('retry-after', RETRY_AFTER_SATURATED)
    return new UpstreamNoTargetsError(upstream.name, noTargetsReason(upstream))
  }
  if (soonest === Infinity) {
    // Every target is ejected: the next probe may bring one back.
    reply.header('retry-after', String(Math.max(1, Math.ceil((upstream.health?.config.intervalMs ?? 1000) / 1000))))
    return new UpstreamUnhealthyError(upstream.name)
  }
  const seconds = Math.max(1, Math.ceil(soonest / 1000))
  request.span?.addEvent('circuit_breaker.rejected', { 'gatehouse.upstream': upstream.name, 'circuit_breaker.retry_after_s': seconds })
  reply.header('retry-after', String(seconds))
  return new UpstreamUnavailableError(upstream.name)
}

/** Why an upstream has no targets: its DNS names, and what each answered. */
function noTargetsReason (upstream: CompiledUpstream): string {
  if (upstream.discovery.length === 0) return 'none of its targets is in the group this request goes to'
  const names = upstream.discovery.map(w => `${w.name} (${w.failure ?? (w.settled ? 'no addresses' : 'no answer yet')})`)
  return `its DNS names have no addresses: ${names.join(', ')}`
}

/** The gateway error for a call that ended in `error` before any response was written. */
export function upstreamError (request: FastifyRequest, reply: FastifyReply, upstream: CompiledUpstream, target: Target | undefined, error: Error, bodyLimitHit: number | undefined): Error {
  if (bodyLimitHit !== undefined) {
    reply.header('connection', 'close')
    return new BodyTooLargeError(bodyLimitHit, { cause: error })
  }
  if (error instanceof ClientClosedError) return error
  // The body was not read to its end: the connection cannot carry another request.
  if (error instanceof ClientTooSlowError || error instanceof RequestBufferFullError) {
    reply.header('connection', 'close')
    if (error instanceof RequestBufferFullError) reply.header('retry-after', RETRY_AFTER_SATURATED)
    return error
  }
  if (clientChannel(request.raw).destroyed) return new ClientClosedError({ cause: error })
  // The call's own errors (no target left to retry on) are already ours.
  if (error instanceof UpstreamUnavailableError || error instanceof UpstreamSaturatedError) {
    reply.header('retry-after', RETRY_AFTER_SATURATED)
    return error
  }
  const code = (error as { code?: string }).code ?? ''
  const where = `${upstream.name} (${target?.origin ?? '?'})`
  if (CONNECT_FAILURE.has(code)) return new UpstreamUnreachableError(where, { cause: error })
  const tls = tlsFailure(error)
  if (tls !== undefined) return new UpstreamTlsError(where, tls, { cause: error })
  const malformed = malformedResponse(error)
  if (malformed !== undefined) return new UpstreamBadResponseError(where, malformed, { cause: error })
  if (TIMEOUT.has(code)) return new UpstreamTimeoutError(where, formatMs(upstream.requestTimeoutMs), { cause: error })
  return new UpstreamResetError(where, { cause: error })
}
