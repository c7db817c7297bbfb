// Edge authentication: on routes with `auth.jwt`, a bearer token is verified here (signature,
// times, issuer, audience, scopes) and the identity it proves is forwarded as headers, so
// upstream services need no session lookup of their own.
import type { FastifyInstance, FastifyReply, FastifyRequest, onRequestHookHandler } from 'fastify'
import fp from 'fastify-plugin'
import type { JWTPayload } from 'jose'
import type { JwtAuthConfig } from '../../src/config/route-file/index.js'
import { AuthForbiddenError, AuthInvalidError, AuthRequiredError, AuthUnavailableError } from '../../src/errors.js'
import { headerSafe } from '../../src/http/header-value.js'
import { JwksCache, NO_KEYS_RETRY_MS, type JwksFetchResult } from './jwks.js'
import { AuthFailure, JwtVerifier, staticKey, type Verified } from './verifier.js'

/** What a verified token proves, and what the upstream is to see of it. */
export interface Identity {
  claims: Readonly<JWTPayload>
  /** Set on the upstream request after the hop-by-hop rules; undefined removes the header. */
  upstreamHeaders: Array<[name: string, value: string | undefined]>
}

/** What /metrics tells about authentication. */
export interface AuthState {
  /** Refusals by route id, then by reason. */
  failures: Map<string, Map<string, number>>
  /** One key-set cache per JWKS URL, shared by routes and kept across reloads. */
  jwks: Map<string, JwksCache>
  jwksFetches: { ok: number, error: number }
}

declare module 'fastify' {
  interface FastifyInstance {
    authState: AuthState
    /** Pipeline hook, after resolveRoute: verifies the token of routes with auth (401/403/503), passes the rest. */
    authenticate: onRequestHookHandler
  }
  interface FastifyRequest {
    /** Set on routes with auth once the token is verified. */
    identity: Identity | null
  }
}

/** The token of `Authorization: Bearer <token>` (scheme in any case), or undefined. jose checks its form. */
function bearerToken (authorization: string | undefined): string | undefined {
  if (authorization === undefined || authorization.length < 8 || authorization.slice(0, 7).toLowerCase() !== 'bearer ') return undefined
  const token = authorization.slice(7).trim()
  return token === '' ? undefined : token
}
export interface AuthOptions {
  /** After a JWKS fetch, no refetch for an unknown kid within this time. */
  jwksCooldownMs: number
}

async function authPlugin (app: FastifyInstance, opts: AuthOptions): Promise<void> {
  const state: AuthState = { failures: new Map(), jwks: new Map(), jwksFetches: { ok: 0, error: 0 } }
  app.decorate('authState', state)
  app.decorateRequest('identity', null)

  const onFetch = (url: string) => (result: JwksFetchResult): void => {
    if (result.ok) {
      state.jwksFetches.ok++
      if (result.changed) app.log.info({ jwksUrl: url, keys: result.keys }, 'JWKS fetched')
    } else {
      state.jwksFetches.error++
      app.log.warn({ jwksUrl: url, err: result.error }, 'JWKS fetch failed; the last good key set stays in use')
    }
  }
  const jwksFor = (url: string): JwksCache => {
    let cache = state.jwks.get(url)
    if (cache === undefined) {
      cache = new JwksCache(url, { cooldownMs: opts.jwksCooldownMs }, onFetch(url))
      state.jwks.set(url, cache)
    }
    return cache
  }
  // A route's verifier lives as long as its compiled config (a reload makes new ones).
  const verifiers = new WeakMap<JwtAuthConfig, JwtVerifier>()
  const verifierFor = (auth: JwtAuthConfig): JwtVerifier => {
    let verifier = verifiers.get(auth)
    if (verifier === undefined) {
      const source = auth.keySource
      if (source.kind === 'jwks') {
        const jwks = jwksFor(source.url)
        verifier = new JwtVerifier(auth, { key: async (header, token) => await jwks.getKey(header, token), version: () => jwks.version })
      } else {
        const key = staticKey(auth)
        verifier = new JwtVerifier(auth, { key, version: () => 0 })
      }
      verifiers.set(auth, verifier)
    }
    return verifier
  }
  const refuse = (request: FastifyRequest, reply: FastifyReply, failure: AuthFailure, done: (err?: Error) => void): void => {
    const route = request.match?.route.id ?? ''
    let byReason = state.failures.get(route)
    if (byReason === undefined) state.failures.set(route, byReason = new Map())
    byReason.set(failure.reason, (byReason.get(failure.reason) ?? 0) + 1)
    if (failure.reason === 'keys_unavailable') {
      reply.header('retry-after', String(NO_KEYS_RETRY_MS / 1000))
      done(new AuthUnavailableError({ cause: failure }))
      return
    }
    // RFC 6750 §3: no error code when the request had no token at all.
    const challenge = failure.reason === 'missing_token'
      ? 'Bearer realm="gatehouse"'
      : failure.reason === 'insufficient_scope'
        ? `Bearer realm="gatehouse", error="insufficient_scope", error_description="${failure.description}", scope="${failure.scope ?? ''}"`
        : `Bearer realm="gatehouse", error="invalid_token", error_description="${failure.description}"`
    reply.header('www-authenticate', challenge)
    done(failure.reason === 'missing_token'
      ? new AuthRequiredError()
      : failure.reason === 'insufficient_scope' ? new AuthForbiddenError(failure.scope ?? '') : new AuthInvalidError(failure.description))
  }

  const admit = (request: FastifyRequest, auth: JwtAuthConfig, verified: Verified): AuthFailure | undefined => {
    const upstreamHeaders: Identity['upstreamHeaders'] = []
    for (const [claim, header] of auth.forwardClaims) {
      const value = verified.claims[claim]
      const text = value === undefined || value === null ? undefined : typeof value === 'string' ? value : JSON.stringify(value)
      if (text !== undefined && !headerSafe(text)) return new AuthFailure('bad_claim')
      upstreamHeaders.push([header, text])
    }
    if (!auth.forwardToken) upstreamHeaders.push(['authorization', undefined])
    request.identity = { claims: verified.claims, upstreamHeaders }
    return undefined
  }

  // After route resolution and before rate limits (claim keys need the identity).
  app.decorate('authenticate', function authenticate (request: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void): void {
    const auth = request.match?.route.auth
    if (auth === undefined) {
      done()
      return
    }
    // The client's own identity headers never reach the upstream, verified or not.
    const headers = request.headers
    for (const [, header] of auth.forwardClaims) if (headers[header] !== undefined) delete headers[header]
    const token = bearerToken(headers.authorization)
    if (token === undefined) {
      refuse(request, reply, new AuthFailure('missing_token'), done)
      return
    }
    const settle = (verified: Verified): void => {
      const failure = admit(request, auth, verified)
      if (failure === undefined) done()
      else refuse(request, reply, failure, done)
    }
    const fail = (err: unknown): void => {
      if (err instanceof AuthFailure) refuse(request, reply, err, done)
      else done(err as Error)
    }
    try {
      const verified = verifierFor(auth).verify(token)
      if (verified instanceof Promise) verified.then(settle, fail)
      else settle(verified)
    } catch (err) {
      fail(err)
    }
  })
}

export default fp(authPlugin, { name: 'gatehouse-auth', fastify: '5.x', dependencies: ['gatehouse-route-table'] })
