// One route's JWT check: jose verifies signature and claims; a token that passed is remembered
// until it expires, because an RS256 verify costs 110–145 µs of CPU, more than proxying the request.
import { createPublicKey, createSecretKey, type JsonWebKey, type KeyObject } from 'node:crypto'
import { errors, jwtVerify, type JWTPayload, type JWTVerifyGetKey } from 'jose'
import type { JwtAuthConfig } from '../../src/config/route-file/index.js'
import { JwksUnavailableError } from './jwks.js'

/** Why a request was refused: bounded, so it can label a metric. */
export const AUTH_FAILURE_REASONS = [
  'missing_token', 'malformed', 'bad_algorithm', 'bad_signature', 'unknown_key', 'expired', 'not_yet_valid',
  'wrong_issuer', 'wrong_audience', 'missing_claim', 'bad_claim', 'insufficient_scope', 'keys_unavailable'
] as const
export type AuthFailureReason = typeof AUTH_FAILURE_REASONS[number]

// What a client is told (RFC 6750 error_description): fixed texts, never a part of the token.
const DESCRIPTIONS: Record<AuthFailureReason, string> = {
  missing_token: 'no bearer token',
  malformed: 'the token is malformed',
  bad_algorithm: 'the token algorithm is not allowed',
  bad_signature: 'the signature does not verify',
  unknown_key: 'the token is signed by an unknown key',
  expired: 'the token has expired',
  not_yet_valid: 'the token is not valid yet',
  wrong_issuer: 'the token is from another issuer',
  wrong_audience: 'the token is for another audience',
  missing_claim: 'the token lacks a required claim',
  bad_claim: 'a forwarded claim holds characters a header cannot carry',
  insufficient_scope: 'the token lacks a required scope',
  keys_unavailable: 'the issuer keys are unavailable'
}

export class AuthFailure extends Error {
  readonly description: string
  /** insufficient_scope: the scope that is missing. */
  readonly scope: string | undefined
  constructor (readonly reason: AuthFailureReason, options?: ErrorOptions & { scope?: string }) {
    super(DESCRIPTIONS[reason], options)
    this.description = DESCRIPTIONS[reason]
    this.scope = options?.scope
  }
}

/** Where the keys come from: a fixed key, or a key set that may change (its version says when). */
export interface KeySource {
  key: KeyObject | JWTVerifyGetKey
  version: () => number
}

export interface Verified {
  readonly claims: Readonly<JWTPayload>
  readonly scopes: ReadonlySet<string>
}

interface Remembered extends Verified {
  readonly notBeforeMs: number
  readonly expiresMs: number
  readonly keysVersion: number
}

/** Verified tokens kept per route; the oldest goes first when full. */
const MAX_REMEMBERED = 10_000

export class JwtVerifier {
  readonly #config: JwtAuthConfig
  readonly #keys: KeySource
  readonly #remembered = new Map<string, Remembered>()

  constructor (config: JwtAuthConfig, keys: KeySource) {
    this.#config = config
    this.#keys = keys
  }

  /**
   * The token's claims, or an AuthFailure. A token verified before answers at once (no promise),
   * as long as it is still within its times and the key set has not changed since.
   */
  verify (token: string): Verified | Promise<Verified> {
    const known = this.#remembered.get(token)
    if (known !== undefined) {
      const now = Date.now()
      const tolerance = this.#config.clockToleranceMs
      if (known.keysVersion === this.#keys.version() && now >= known.notBeforeMs - tolerance && now <= known.expiresMs + tolerance) return this.#scoped(known)
      this.#remembered.delete(token)
    }
    return this.#verify(token)
  }

  async #verify (token: string): Promise<Verified> {
    const config = this.#config
    const keysVersion = this.#keys.version()
    let payload: JWTPayload
    try {
      ({ payload } = await jwtVerify(token, this.#keys.key as JWTVerifyGetKey, {
        issuer: config.issuer,
        audience: config.audience,
        algorithms: config.algorithms,
        clockTolerance: config.clockToleranceMs / 1000,
        requiredClaims: ['exp']
      }))
    } catch (err) {
      throw new AuthFailure(reasonOf(err), { cause: err })
    }
    const scopes = new Set(typeof payload.scope === 'string' ? payload.scope.split(' ').filter(s => s !== '') : [])
    const scp = payload.scp
    if (Array.isArray(scp)) for (const s of scp) if (typeof s === 'string') scopes.add(s)
    if (typeof scp === 'string') for (const s of scp.split(' ')) if (s !== '') scopes.add(s)
    const verified: Remembered = Object.freeze({
      claims: Object.freeze(payload),
      scopes,
      notBeforeMs: typeof payload.nbf === 'number' ? payload.nbf * 1000 : -Infinity,
      expiresMs: (payload.exp as number) * 1000,
      keysVersion
    })
    if (this.#remembered.size >= MAX_REMEMBERED) this.#remembered.delete(this.#remembered.keys().next().value as string)
    this.#remembered.set(token, verified)
    return this.#scoped(verified)
  }

  #scoped (verified: Verified): Verified {
    for (const scope of this.#config.requiredScopes) {
      if (!verified.scopes.has(scope)) throw new AuthFailure('insufficient_scope', { scope })
    }
    return verified
  }
}

/** The fixed key of a publicKey or secret source (already checked when the route file loaded). */
export function staticKey (config: JwtAuthConfig): KeyObject {
  const source = config.keySource
  if (source.kind === 'secret') return createSecretKey(Buffer.from(source.secret))
  if (source.kind === 'publicKey') {
    const text = source.pem.trimStart()
    return text.startsWith('{') ? createPublicKey({ key: JSON.parse(text) as JsonWebKey, format: 'jwk' }) : createPublicKey(text)
  }
  throw new TypeError('a JWKS source has no static key')
}

function reasonOf (err: unknown): AuthFailureReason {
  if (err instanceof JwksUnavailableError) return 'keys_unavailable'
  if (err instanceof errors.JWTExpired) return 'expired'
  if (err instanceof errors.JWTClaimValidationFailed) {
    if (err.claim === 'nbf') return 'not_yet_valid'
    if (err.claim === 'iss') return 'wrong_issuer'
    if (err.claim === 'aud') return 'wrong_audience'
    return err.reason === 'missing' ? 'missing_claim' : 'malformed'
  }
  if (err instanceof errors.JWSSignatureVerificationFailed) return 'bad_signature'
  if (err instanceof errors.JOSEAlgNotAllowed || err instanceof errors.JOSENotSupported) return 'bad_algorithm'
  if (err instanceof errors.JWKSNoMatchingKey || err instanceof errors.JWKSMultipleMatchingKeys) return 'unknown_key'
  return 'malformed'
}
