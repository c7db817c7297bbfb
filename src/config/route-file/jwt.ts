// A route's auth.jwt block: compiled into a JwtAuthConfig, with its key source checked.
import { createPublicKey, type JsonWebKey } from 'node:crypto'
import { toMs } from '../units.js'
import { JWT_ALGORITHMS, type JwtAuthConfig, type JwtKeySource, type RawRouteFile } from './schema.js'

const ASYMMETRIC = JWT_ALGORITHMS.filter(a => !a.startsWith('HS'))
const HMAC = JWT_ALGORITHMS.filter(a => a.startsWith('HS'))
const list = (value: string | string[]): string[] => typeof value === 'string' ? [value] : value

type RawJwt = NonNullable<RawRouteFile['routes'][number]['auth']>['jwt']

// A key source read from the environment may be missing: it is left empty here and reported by checkJwt.
export function jwtAuth (raw: RawJwt, env: NodeJS.ProcessEnv): JwtAuthConfig {
  const keySource: JwtKeySource = raw.secret !== undefined
    ? { kind: 'secret', env: raw.secret.env, secret: env[raw.secret.env] ?? '' }
    : raw.publicKey !== undefined
      ? { kind: 'publicKey', env: raw.publicKey.env, pem: env[raw.publicKey.env] ?? '' }
      : { kind: 'jwks', url: raw.jwksUrl ?? '' }
  return {
    keySource,
    issuer: list(raw.issuer),
    audience: list(raw.audience),
    algorithms: raw.algorithms ?? (keySource.kind === 'secret' ? HMAC : ASYMMETRIC),
    clockToleranceMs: toMs(raw.clockTolerance),
    requiredScopes: raw.requiredScopes ?? [],
    forwardClaims: Object.entries(raw.forwardClaims ?? {}).map(([claim, header]) => [claim, header.toLowerCase()]),
    forwardToken: raw.forwardToken
  }
}

// Headers a claim must not overwrite: they frame or route the request, or carry the token.
const RESERVED_HEADERS = new Set(['host', 'content-length', 'transfer-encoding', 'connection', 'authorization', 'te', 'upgrade', 'x-request-id'])

/** Problems of one auth.jwt block, as `<pointer below it>: <problem>`. */
export function checkJwt (raw: RawJwt, auth: JwtAuthConfig): string[] {
  const problems: string[] = []
  const sources = [raw.jwksUrl, raw.publicKey, raw.secret].filter(s => s !== undefined).length
  if (sources !== 1) problems.push(': needs exactly one key source: jwksUrl, publicKey or secret')
  const key = auth.keySource
  if (sources === 1 && key.kind === 'jwks') {
    let url: URL | undefined
    try { url = new URL(key.url) } catch {}
    if (url === undefined) problems.push('/jwksUrl: is not a URL')
    else if (url.protocol !== 'https:' && !['localhost', '127.0.0.1', '[::1]'].includes(url.hostname)) problems.push('/jwksUrl: must be https:// (plain http:// only for localhost): keys fetched in the clear can be swapped on the way')
  }
  if (sources === 1 && key.kind !== 'jwks') {
    const pointer = key.kind === 'secret' ? '/secret/env' : '/publicKey/env'
    const value = key.kind === 'secret' ? key.secret : key.pem
    if (value === '') problems.push(`${pointer}: environment variable ${key.env} is not set`)
    else if (key.kind === 'secret' && Buffer.byteLength(key.secret) < 32) problems.push(`${pointer}: the secret in ${key.env} is shorter than 32 bytes (HS256 needs at least 256 bits)`)
    else if (key.kind === 'publicKey') {
      const problem = publicKeyProblem(key.pem)
      if (problem !== undefined) problems.push(`${pointer}: ${key.env} ${problem}`)
    }
  }
  const wrong = auth.algorithms.filter(a => (key.kind === 'secret') !== a.startsWith('HS'))
  if (sources === 1 && wrong.length > 0) {
    problems.push(key.kind === 'secret'
      ? `/algorithms: ${wrong.join(', ')} need a public key or jwksUrl, not a secret`
      : `/algorithms: ${wrong.join(', ')} need a secret; with a public key anyone who has the key could sign tokens`)
  }
  const headers = new Map<string, string>()
  for (const [claim, header] of auth.forwardClaims) {
    if (RESERVED_HEADERS.has(header)) problems.push(`/forwardClaims/${claim}: ${header} cannot carry a claim`)
    const other = headers.get(header)
    if (other !== undefined) problems.push(`/forwardClaims/${claim}: ${header} already carries ${other}`)
    headers.set(header, claim)
  }
  return problems
}

function publicKeyProblem (text: string): string | undefined {
  if (/PRIVATE KEY/.test(text)) return 'holds a private key: give the public key only'
  try {
    if (!text.trimStart().startsWith('{')) return createPublicKey(text).type === 'public' ? undefined : 'is not a public key'
    const jwk = JSON.parse(text) as JsonWebKey
    if (jwk.d !== undefined || jwk.k !== undefined) return 'holds a private or secret key: give the public key only'
    createPublicKey({ key: jwk, format: 'jwk' })
    return undefined
  } catch {
    return 'is not a PEM public key (SPKI) or a public JWK'
  }
}
